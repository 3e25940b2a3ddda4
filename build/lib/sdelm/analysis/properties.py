"""Is it a diffusion? Tests of the properties an Itô diffusion must have (chapter 5).

Each function returns a tidy table. The tests use statsmodels (Ljung–Box, ADF, KPSS) and scipy
(Kolmogorov–Smirnov, Anderson–Darling, χ²) rather than hand-written statistics.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from scipy import stats
from statsmodels.stats.diagnostic import acorr_ljungbox
from statsmodels.tools.sm_exceptions import InterpolationWarning
from statsmodels.tsa.stattools import adfuller, kpss

from sdelm.data import PreparedData, SDEData
from sdelm.models import SDEModel

__all__ = [
    "coverage",
    "gaussian_ll",
    "gaussianity",
    "lagged_design",
    "markov_order",
    "mean_squared_displacement",
    "msd_exponent",
    "quadratic_variation",
    "scorecard",
    "standardised_residuals",
    "stationarity",
    "whiteness",
]


def _check_length(mask: torch.Tensor, needed: int, what: str) -> None:
    if int(mask.sum(dim=1).max()) < needed:
        raise ValueError(
            f"{what} needs sequences of at least {needed} steps; the longest has "
            f"{int(mask.sum(dim=1).max())}. Use longer trajectories or a smaller lag."
        )


@torch.no_grad()
def standardised_residuals(model: SDEModel, data: SDEData) -> tuple[torch.Tensor, torch.Tensor]:
    """Residuals (ΔX − μΔt) / (σ√Δt) of every transition, kept in sequence order.

    Args:
        model: A fitted SDE.
        data: A split.

    Returns:
        Residuals of size (n_sequences, n_steps − 1, dim) (zero where invalid) and their mask
        of size (n_sequences, n_steps − 1).

    """
    x = data.states[:, :-1]
    both = data.mask[:, :-1] & data.mask[:, 1:]
    n, steps, dim = x.shape
    flat = x.reshape(-1, dim)
    t = data.times[:-1].repeat(n)
    mu = model.drift(flat, t).reshape(n, steps, dim)
    sigma = model.diffusion(flat, t).reshape(n, steps, dim)
    z = (data.states[:, 1:] - x - mu * data.dt) / (sigma * data.dt**0.5)
    return torch.where(both[..., None], z, torch.zeros(())), both


def gaussianity(residuals: torch.Tensor, mask: torch.Tensor) -> pd.DataFrame:
    """Test per component whether the standardised residuals are standard normal.

    Args:
        residuals: Float tensor of size (n_sequences, n_steps, dim).
        mask: Bool tensor of size (n_sequences, n_steps).

    Returns:
        One row per component: ``mean``, ``sd``, ``skew``, ``excess_kurtosis``, ``ks`` and
        ``ks_p`` (Kolmogorov–Smirnov against N(0, 1)), ``anderson`` and ``anderson_p``
        (Anderson–Darling test of normality, p-value interpolated from tables, 0.01 to 0.15).

    """
    values = residuals[mask].double().numpy()
    rows = []
    for component in range(values.shape[1]):
        z = values[:, component]
        ks = stats.kstest(z, "norm")
        anderson = stats.anderson(z, "norm", method="interpolate")
        rows.append(
            {
                "component": component + 1,
                "mean": z.mean(),
                "sd": z.std(),
                "skew": stats.skew(z),
                "excess_kurtosis": stats.kurtosis(z),
                "ks": ks.statistic,
                "ks_p": ks.pvalue,
                "anderson": anderson.statistic,
                "anderson_p": anderson.pvalue,
            }
        )
    return pd.DataFrame(rows)


def whiteness(series: torch.Tensor, mask: torch.Tensor, *, lags: int = 5) -> pd.DataFrame:
    """Per component: lag-1 autocorrelation and Ljung–Box tests within each sequence.

    A Ljung–Box test (statsmodels) is run on every sequence's series of each component; under
    whiteness about 5% of them reject at the 5% level, and a binomial test says whether the
    observed share is compatible with that.

    Args:
        series: Float tensor of size (n_sequences, n_steps, dim) (e.g. residuals, increments).
        mask: Bool tensor of size (n_sequences, n_steps); valid steps form a prefix.
        lags: Largest lag of the Ljung–Box statistic.

    Returns:
        One row per component: ``acf1`` (pooled lag-1 autocorrelation), ``reject_share``
        (share of sequences whose Ljung–Box test rejects at 5%), ``binomial_p`` (p-value of
        that share against 5%), ``sequences`` (sequences long enough to test).

    Raises:
        ValueError: If no sequence is longer than ``lags + 2`` steps.

    """
    _check_length(mask, lags + 3, f"A Ljung–Box test with {lags} lags")
    lengths = mask.sum(dim=1)
    values = series.double().numpy()
    rows = []
    for component in range(values.shape[2]):
        rejections, tested, products, squares = 0, 0, 0.0, 0.0
        for row, length in enumerate(lengths.tolist()):
            if length < lags + 3:
                continue
            z = values[row, :length, component]
            centred = z - z.mean()
            products += float((centred[1:] * centred[:-1]).sum())
            squares += float((centred**2).sum())
            p_value = acorr_ljungbox(z, lags=[lags])["lb_pvalue"].iloc[0]
            rejections += int(p_value < 0.05)
            tested += 1
        rows.append(
            {
                "component": component + 1,
                "acf1": products / squares,
                "reject_share": rejections / tested,
                "binomial_p": stats.binomtest(rejections, tested, 0.05).pvalue,
                "sequences": tested,
            }
        )
    return pd.DataFrame(rows)


def lagged_design(data: SDEData, order: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Design [X_t, ..., X_{t−order+1}, 1], increments and sequence of transitions t ≥ 1."""
    valid = data.mask[:, 1:-1] & data.mask[:, 2:]  # steps t = 1.. with X_{t-1}, X_t, X_{t+1}
    seq, step = valid.nonzero(as_tuple=True)
    step = step + 1
    columns = [data.states[seq, step - lag] for lag in range(order)]
    design = torch.cat([*columns, torch.ones(len(seq), 1)], dim=1).double()
    return design, (data.states[seq, step + 1] - data.states[seq, step]).double(), seq


def gaussian_ll(residuals: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
    """Elementwise log-density of N(0, variance) at ``residuals`` (broadcast)."""
    return -0.5 * (torch.log(2 * torch.pi * variance) + residuals**2 / variance)


def markov_order(data: PreparedData, *, test: SDEData | None = None) -> pd.DataFrame:
    """Test whether the previous state helps: a linear VAR(1) against a VAR(2).

    Both are fitted by least squares on the training split (the exact maximum likelihood for a
    Gaussian transition with diagonal noise) and scored on held-out test transitions (the same
    transitions, t ≥ 1, for both). A likelihood-ratio test on the training split gives a
    p-value (χ² with dim² degrees of freedom).

    Args:
        data: Prepared splits.
        test: The held-out split scored; default ``data.test``.

    Returns:
        One row per order (1, 2): ``train_ll`` and ``test_nll`` (nats per dimension per step),
        and for order 2 ``lr_statistic`` and ``lr_p``.

    Raises:
        ValueError: If sequences are shorter than three steps.

    """
    _check_length(data.train.mask, 3, "A second-order model")
    rows = []
    for order in (1, 2):
        design, target, _ = lagged_design(data.train, order)
        solution = torch.linalg.lstsq(design, target).solution
        variance = (target - design @ solution).pow(2).mean(dim=0)
        train_ll = float(gaussian_ll(target - design @ solution, variance).sum())
        test_design, test_target, _ = lagged_design(data.test if test is None else test, order)
        test_nll = float(-gaussian_ll(test_target - test_design @ solution, variance).mean())
        rows.append({"order": order, "train_ll": train_ll, "test_nll": test_nll})
    table = pd.DataFrame(rows).set_index("order")
    statistic = 2 * (table.loc[2, "train_ll"] - table.loc[1, "train_ll"])
    table["lr_statistic"] = [np.nan, statistic]
    table["lr_p"] = [np.nan, stats.chi2.sf(statistic, df=data.dim**2)]
    table["train_ll"] /= len(lagged_design(data.train, 1)[0]) * data.dim
    return table


def stationarity(data: SDEData, *, components: int = 4) -> pd.DataFrame:
    """Share of sequences where ADF rejects a unit root, and where KPSS rejects stationarity.

    Sequences are short (tens of tokens), so both tests have little power; their shares across
    sequences are what the chapter reads.

    Args:
        data: A split.
        components: How many leading components to test.

    Returns:
        One row per component: ``adf_rejects_unit_root`` and ``kpss_rejects_stationarity``
        (shares of sequences at the 5% level), ``sequences``.

    Raises:
        ValueError: If sequences are shorter than 12 steps.

    """
    _check_length(data.mask, 12, "ADF and KPSS tests")
    lengths = data.mask.sum(dim=1).tolist()
    values = data.states.double().numpy()
    rows = []
    for component in range(min(components, data.dim)):
        adf, kpss_rejects, tested = 0, 0, 0
        for row, length in enumerate(lengths):
            if length < 12:
                continue
            x = values[row, :length, component]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", InterpolationWarning)
                adf += int(adfuller(x, maxlag=1, autolag=None, result_object=True).pvalue < 0.05)
                kpss_rejects += int(
                    kpss(x, regression="c", nlags="auto", result_object=True).pvalue < 0.05
                )
            tested += 1
        rows.append(
            {
                "component": component + 1,
                "adf_rejects_unit_root": adf / tested,
                "kpss_rejects_stationarity": kpss_rejects / tested,
                "sequences": tested,
            }
        )
    return pd.DataFrame(rows)


def mean_squared_displacement(data: SDEData, lags: Sequence[int]) -> pd.DataFrame:
    """Mean squared displacement ``E|X_{t+τ} − X_t|²`` over all valid pairs, per lag τ.

    Args:
        data: A split (or trajectories prepared as one).
        lags: Positive lags in steps.

    Returns:
        One row per lag: ``lag`` (steps), ``time`` (lag · dt), ``msd``, ``pairs``.

    Raises:
        ValueError: On a non-positive lag or a lag as long as the sequences.

    """
    if min(lags) <= 0:
        raise ValueError(f"lags must be positive, got {list(lags)}.")
    _check_length(data.mask, max(lags) + 1, f"A displacement at lag {max(lags)}")
    rows = []
    for lag in lags:
        both = data.mask[:, lag:] & data.mask[:, :-lag]
        squared = (data.states[:, lag:] - data.states[:, :-lag]).pow(2).sum(dim=-1)
        rows.append(
            {
                "lag": lag,
                "time": lag * data.dt,
                "msd": float(squared[both].mean()),
                "pairs": int(both.sum()),
            }
        )
    return pd.DataFrame(rows)


def msd_exponent(msd: pd.DataFrame) -> float:
    """Slope of log MSD against log time: 1 for diffusion, 2 for ballistic motion, 0 if bounded."""
    return float(np.polyfit(np.log(msd["time"]), np.log(msd["msd"]), 1)[0])


@torch.no_grad()
def quadratic_variation(model: SDEModel, data: SDEData) -> pd.DataFrame:
    """Realised quadratic variation ``Σ|ΔX|²`` of each sequence against ``Σ tr σσᵀ Δt``.

    Args:
        model: A fitted SDE.
        data: A split.

    Returns:
        One row per sequence with at least one transition: ``sequence``, ``realised``,
        ``model`` and ``ratio`` (realised / model; 1 when the noise accounts for the roughness).

    """
    tr_mask = data.mask[:, :-1] & data.mask[:, 1:]
    seq, step = tr_mask.nonzero(as_tuple=True)
    x = data.states[seq, step]
    realised = torch.zeros(len(data)).index_add_(
        0, seq, (data.states[seq, step + 1] - x).pow(2).sum(dim=1)
    )
    predicted = torch.zeros(len(data)).index_add_(
        0, seq, model.diffusion(x, data.times[step]).pow(2).sum(dim=1) * data.dt
    )
    keep = tr_mask.any(dim=1)
    return pd.DataFrame(
        {
            "sequence": torch.arange(len(data))[keep].numpy(),
            "realised": realised[keep].numpy(),
            "model": predicted[keep].numpy(),
            "ratio": (realised[keep] / predicted[keep]).numpy(),
        }
    )


def coverage(
    residuals: torch.Tensor, mask: torch.Tensor, levels: Sequence[float] = (0.5, 0.9, 0.95)
) -> pd.DataFrame:
    """Share of held-out increments inside the model's central one-step predictive intervals.

    Args:
        residuals: Standardised residuals (n_sequences, n_steps, dim).
        mask: Their mask.
        levels: Nominal coverages.

    Returns:
        One row per level: ``nominal`` and ``observed`` (over all components and steps).

    """
    z = residuals[mask].abs().double().numpy()
    return pd.DataFrame(
        {
            "nominal": list(levels),
            "observed": [float((z <= stats.norm.ppf(0.5 + level / 2)).mean()) for level in levels],
        }
    )


@torch.no_grad()
def scorecard(model: SDEModel, data: SDEData, *, lags: int = 5) -> dict[str, float]:
    """Summarise in four numbers how well a fitted SDE describes a split as a diffusion.

    Args:
        model: A fitted SDE.
        data: A held-out split.
        lags: Largest Ljung–Box lag (see :func:`whiteness`).

    Returns:
        ``drift_share``: share of the increments' variance the drift explains,
        ``1 − Σ|ΔX − μΔt|² / Σ|ΔX − mean ΔX|²`` (1: deterministic steps; 0: pure noise);
        ``excess_kurtosis``: median over components of the standardised residuals' excess
        kurtosis (0 for Gaussian noise); ``gaussian_components``: share of components whose
        residuals pass a Kolmogorov–Smirnov test against N(0, 1) at 5%; ``acf1``: median
        lag-1 autocorrelation of the residuals (0 for white noise).

    """
    tr = data.transitions()
    predicted = model.drift(tr.x, tr.t) * tr.dt
    total = (tr.dx - tr.dx.mean(dim=0)).pow(2).sum()
    residuals, mask = standardised_residuals(model, data)
    normal = gaussianity(residuals, mask)
    white = whiteness(residuals, mask, lags=lags)
    return {
        "drift_share": float(1 - (tr.dx - predicted).pow(2).sum() / total),
        "excess_kurtosis": float(normal["excess_kurtosis"].median()),
        "gaussian_components": float((normal["ks_p"] >= 0.05).mean()),
        "acf1": float(white["acf1"].median()),
    }
