"""Is it a diffusion? The properties of chapter 6 as measured effects, against surrogates.

Each property is an effect: an estimate on held-out prompts, a cluster-bootstrap interval that
resamples those prompts (:mod:`sdelm.stats`) and a null value. The properties that any
stationary mean-reverting process would show (whitening by a drift, no memory beyond one step,
a flattening mean squared displacement) are also measured as *data minus surrogate*, on the
three surrogates of :mod:`sdelm.analysis.surrogates` (a Gaussian VAR(1) fitted to the
training split and simulated, states shuffled in time, states drawn i.i.d.). A surrogate's
linear drift and lagged regressions are refitted on its own training split, as the data's are,
and a surrogate sequence keeps its prompt, so a resample of prompts draws both together.

Every statistic is a ratio of sums over sequences, so each sequence is reduced once to its
sums (:class:`SequenceSums`) and a bootstrap resample only adds rows: 2,000 resamples of a
dozen effects take seconds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy import stats as scipy_stats

from sdelm.analysis.properties import gaussian_ll, lagged_design, standardised_residuals
from sdelm.analysis.surrogates import KINDS, surrogate_series
from sdelm.data import SDEData
from sdelm.models import SDEModel
from sdelm.models.linear import OrnsteinUhlenbeck
from sdelm.stats import cluster_bootstrap

__all__ = ["EFFECTS", "LAGS", "SequenceSums", "effects", "sequence_sums"]

#: Lags (steps) of the mean squared displacement.
LAGS = (1, 2, 4, 8, 16, 32)
#: The nominal coverage of the one-step interval checked, and the tolerance called calibrated:
#: each component's miss rate within a factor 1.25 of the nominal 10%, on average (a relative
#: tolerance: an absolute 0.05 would accept 90% coverage for a nominal 95%).
COVERAGE, TOLERANCE = 0.9, float(np.log(1.25))
_SURROGATE_EXPECTED = {"var1": "less", "shuffled": "greater", "iid": "greater"}

#: Each effect: what is measured, the side of the null expected before looking (the reading of
#: an Itô diffusion fitted to LLM states: heavy-tailed token steps, a drift that explains the
#: increments' correlation, memory beyond the projection, bounded motion; and for the surrogate
#: differences, that these are more than what a VAR(1) or no dynamics would show), and the null.
EFFECTS: dict[str, tuple[str, str, float]] = {
    "residual-excess-kurtosis": (
        "mean over components of the excess kurtosis of the neural SDE's standardised residuals",
        "greater",
        0.0,
    ),
    "whitening-by-neural-drift": (
        "mean |lag-1 autocorrelation| of the raw increments minus of the neural SDE's residuals",
        "greater",
        0.0,
    ),
    **{
        f"whitening-by-var1-drift-data-minus-{kind}": (
            f"whitening by a refitted VAR(1) drift (the same |ACF1| drop), data minus {kind}",
            "greater",
            0.0,
        )
        for kind in KINDS
    },
    "order-2-gain": (
        "held-out NLL of a VAR(1) minus a VAR(2) (least squares), nats/dim/step",
        "greater",
        0.0,
    ),
    **{
        f"order-2-gain-data-minus-{kind}": (
            f"the VAR(2) gain in held-out NLL, data minus {kind}",
            "greater",
            0.0,
        )
        for kind in KINDS
    },
    "msd-exponent": (
        f"slope of log mean squared displacement on log lag, lags {LAGS[0]}–{LAGS[-1]}",
        "less",
        1.0,
    ),
    **{
        f"msd-exponent-data-minus-{kind}": (
            f"the mean-squared-displacement exponent, data minus {kind}",
            _SURROGATE_EXPECTED[kind],
            0.0,
        )
        for kind in KINDS
    },
    "coverage-miss-log-ratio": (
        f"mean over components of |log(miss rate / {1 - COVERAGE:.0%})| of the neural SDE's "
        f"one-step {COVERAGE:.0%} intervals (calibrated: below log 1.25)",
        "less",
        TOLERANCE,
    ),
}


@dataclass(frozen=True)
class SequenceSums:
    """Per-sequence sums that the statistics add up (n = number of held-out sequences).

    Attributes:
        acf_raw: Float array (n, dim, 2): Σ of lag-1 products and of squares of each
            sequence's centred raw increments, per component.
        acf_linear: The same for the residuals of the series' least-squares VAR(1) drift.
        order_gain: Float array (n, 2): Σ over the sequence's transitions (t ≥ 1) of the VAR(1)
            minus the VAR(2) NLL per dimension, and the number of those transitions.
        msd: Float array (n, len(LAGS), 2): Σ|X_{k+τ} − X_k|² and the number of pairs.
        acf_neural: For the data only, ``acf_raw``'s sums for the neural SDE's residuals.
        moments: For the data only, float array (n, dim, 5): the count and Σz, Σz², Σz³, Σz⁴
            of the neural SDE's standardised residuals.
        inside: For the data only, float array (n, dim, 2): per component, the residuals
            inside the central :data:`COVERAGE` interval and all residuals.

    """

    acf_raw: np.ndarray
    acf_linear: np.ndarray
    order_gain: np.ndarray
    msd: np.ndarray
    acf_neural: np.ndarray | None = None
    moments: np.ndarray | None = None
    inside: np.ndarray | None = None

    @classmethod
    def concat(cls, parts: Sequence[SequenceSums]) -> SequenceSums:
        """Stack the sequences of several held-out splits (e.g. cross-validation folds)."""
        fields = {}
        for name in cls.__dataclass_fields__:
            values = [getattr(part, name) for part in parts]
            fields[name] = None if values[0] is None else np.concatenate(values)
        return cls(**fields)


def _acf_sums(series: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """Lag-1 products and squares of each sequence's centred series: (n, dim, 2)."""
    m = mask[..., None].double()
    z = series.double() * m
    centred = (z - z.sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp_min(1)) * m
    products = (centred[:, 1:] * centred[:, :-1]).sum(1)
    return torch.stack([products, centred.pow(2).sum(1)], dim=-1).numpy()


def _increments(data: SDEData) -> tuple[torch.Tensor, torch.Tensor]:
    both = data.mask[:, :-1] & data.mask[:, 1:]
    return (data.states[:, 1:] - data.states[:, :-1]) * both[..., None], both


def _order_gain(train: SDEData, held: SDEData) -> np.ndarray:
    """Per held-out sequence: Σ (VAR(1) − VAR(2) NLL per dimension) and the transitions."""
    nll = []
    for order in (1, 2):
        design, target, _ = lagged_design(train, order)
        solution = torch.linalg.lstsq(design, target).solution
        variance = (target - design @ solution).pow(2).mean(dim=0)
        design, target, seq = lagged_design(held, order)
        nll.append(-gaussian_ll(target - design @ solution, variance).mean(1))
    sums = np.zeros((held.states.shape[0], 2))
    np.add.at(sums[:, 0], seq.numpy(), (nll[0] - nll[1]).numpy())
    np.add.at(sums[:, 1], seq.numpy(), 1.0)
    return sums


def _msd_sums(data: SDEData) -> np.ndarray:
    out = np.zeros((data.states.shape[0], len(LAGS), 2))
    for i, lag in enumerate(LAGS):
        both = data.mask[:, lag:] & data.mask[:, :-lag]
        squared = (data.states[:, lag:] - data.states[:, :-lag]).pow(2).sum(-1) * both
        out[:, i] = torch.stack([squared.sum(1), both.sum(1)], dim=-1).double().numpy()
    return out


def sequence_sums(train: SDEData, held: SDEData, model: SDEModel | None = None) -> SequenceSums:
    """Reduce each held-out sequence to the sums every effect of :data:`EFFECTS` needs.

    Args:
        train: The series' training split: its VAR(1) drift and lagged regressions are fitted
            there.
        held: The held-out split the sums are read on.
        model: The fitted neural SDE, for the data (not for surrogates).

    Returns:
        The sums; the neural SDE's fields are None without ``model``.

    Raises:
        ValueError: If a held-out sequence is shorter than the longest lag plus one.

    """
    if int(held.mask.sum(1).max()) <= LAGS[-1]:
        raise ValueError(f"Held-out sequences must be longer than {LAGS[-1]} steps.")
    increments, both = _increments(held)
    linear = OrnsteinUhlenbeck(held.dim).fit_least_squares(train)
    sums = {
        "acf_raw": _acf_sums(increments, both),
        "acf_linear": _acf_sums(*standardised_residuals(linear, held)),
        "order_gain": _order_gain(train, held),
        "msd": _msd_sums(held),
    }
    if model is not None:
        with torch.no_grad():
            z, mask = standardised_residuals(model, held)
        sums["acf_neural"] = _acf_sums(z, mask)
        z = z.double() * mask[..., None]
        count = mask.sum(1, keepdim=True).double().expand(-1, held.dim)
        sums["moments"] = torch.stack([count, *(z.pow(p).sum(1) for p in range(1, 5))], -1)
        sums["moments"] = sums["moments"].numpy()
        bound = scipy_stats.norm.ppf(0.5 + COVERAGE / 2)
        inside = ((z.abs() <= bound) & mask[..., None]).sum(1)
        sums["inside"] = torch.stack([inside.double(), count], -1).numpy()
    return SequenceSums(**sums)


def _mean_abs_acf(acf: np.ndarray) -> float:
    total = acf.sum(0)  # (dim, 2)
    return float(np.abs(total[:, 0] / total[:, 1]).mean())


def _excess_kurtosis(moments: np.ndarray) -> float:
    n, s1, s2, s3, s4 = np.moveaxis(moments.sum(0), -1, 0)  # each (dim,)
    mean = s1 / n
    m2 = s2 / n - mean**2
    m4 = s4 / n - 4 * mean * s3 / n + 6 * mean**2 * s2 / n - 3 * mean**4
    return float((m4 / m2**2 - 3).mean())


def _miss_log_ratio(inside: np.ndarray) -> float:
    total = inside.sum(0)  # (dim, 2)
    miss = 1 - total[:, 0] / total[:, 1]
    return float(np.abs(np.log(miss / (1 - COVERAGE))).mean())


def _msd_exponent(msd: np.ndarray) -> float:
    total = msd.sum(0)
    return float(np.polyfit(np.log(LAGS), np.log(total[:, 0] / total[:, 1]), 1)[0])


#: Each effect's statistic of one series' sums (the rows drawn by a resample).
_OF_SUMS: dict[str, Callable[[SequenceSums, np.ndarray], float]] = {
    "whitening-by-var1-drift": lambda s, r: (
        _mean_abs_acf(s.acf_raw[r]) - _mean_abs_acf(s.acf_linear[r])
    ),
    "order-2-gain": lambda s, r: float(s.order_gain[r, 0].sum() / s.order_gain[r, 1].sum()),
    "msd-exponent": lambda s, r: _msd_exponent(s.msd[r]),
}


def effects(
    folds: Sequence[tuple[SDEData, SDEData, SDEModel]], *, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Measure every effect of :data:`EFFECTS` on held-out prompts, pooled over folds.

    Each fold's held-out sequences are read with that fold's training split and model (and
    surrogates of its own splits); the folds' sums are stacked, so that with K-fold
    cross-validation by prompt every prompt is held out once and a resample of prompts draws
    from all folds.

    Args:
        folds: ``(train, held, model)`` per fold: the training split (the surrogates' VAR(1)
            and every linear fit use it), the held-out split, and the neural SDE fitted on
            ``train``. One fold is a single split.
        seed: Seed of the surrogates (fold i uses ``seed + 100 i``) and of the bootstrap.

    Returns:
        :func:`sdelm.stats.cluster_bootstrap`'s result (estimate, interval, p-value against
        the effect's null, clusters) for each effect, in the order of :data:`EFFECTS`.

    Raises:
        ValueError: Without folds, or if a prompt is held out by two folds.

    """
    if not folds:
        raise ValueError("effects needs at least one (train, held, model) fold.")
    parts: dict[str, list[SequenceSums]] = {name: [] for name in ("data", *KINDS)}
    for index, (train, held, model) in enumerate(folds):
        series = surrogate_series(train, held, seed=seed + 100 * index)
        for name, (tr, ho) in series.items():
            parts[name].append(sequence_sums(tr, ho, model if name == "data" else None))
    prompts = np.concatenate([held.rows["prompt_id"].to_numpy() for _, held, _ in folds])
    by_fold = [set(held.rows["prompt_id"]) for _, held, _ in folds]
    if sum(map(len, by_fold)) != len(set().union(*by_fold)):
        raise ValueError("Each prompt must be held out by one fold only.")
    sums = {name: SequenceSums.concat(found) for name, found in parts.items()}
    frame = pd.DataFrame({"prompt_id": prompts, "row": np.arange(len(prompts))})
    data = sums["data"]
    statistics: dict[str, Callable[[np.ndarray], float]] = {
        "residual-excess-kurtosis": lambda r: _excess_kurtosis(data.moments[r]),
        "whitening-by-neural-drift": lambda r: (
            _mean_abs_acf(data.acf_raw[r]) - _mean_abs_acf(data.acf_neural[r])
        ),
        "coverage-miss-log-ratio": lambda r: _miss_log_ratio(data.inside[r]),
        "order-2-gain": lambda r: _OF_SUMS["order-2-gain"](data, r),
        "msd-exponent": lambda r: _OF_SUMS["msd-exponent"](data, r),
    }
    for base, of_sums in _OF_SUMS.items():
        for kind in KINDS:
            statistics[f"{base}-data-minus-{kind}"] = lambda r, of_sums=of_sums, kind=kind: (
                of_sums(data, r) - of_sums(sums[kind], r)
            )
    out = {}
    for name, (_, _, null) in EFFECTS.items():
        statistic = statistics[name]
        out[name] = cluster_bootstrap(
            frame, lambda rows, s=statistic: s(rows["row"].to_numpy()), null=null, seed=seed
        )
    return out
