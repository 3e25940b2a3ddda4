"""What the branching experiment measures, and how fitted SDEs compare with it.

For prefix ``p`` at temperature ``T`` the branches give the conditional law of the next state
in the fitted coordinates, ``Z_{k+1} | prefix``: its mean step ``m = E[Z_{k+1}] − Z_k`` and its
covariance ``C``. A fitted SDE predicts ``μ(Z_k, t_k) Δt`` and ``diag σ²(Z_k, t_k) Δt``.
For every model, the mean squared residual of the branches splits exactly into branching noise
and drift error,

    ``mean_b ‖Z^b_{k+1} − Z_k − μΔt‖² = tr C + ‖m − μΔt‖²``        (C with divisor B),

which says how much of what a one-path likelihood fit calls noise is the token draw.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
from scipy import stats

from sdelm.branches import Branches
from sdelm.data import Projection, Transitions
from sdelm.fit import nll
from sdelm.models import SDEModel
from sdelm.stats import cluster_bootstrap, holm, log_ratios

__all__ = ["against_models", "effects", "gaussian_surrogate", "measured", "moments", "project"]


def project(branches: Branches, projection: Projection) -> tuple[torch.Tensor, torch.Tensor]:
    """Map prefix and branch states into a fit's coordinates.

    Returns:
        ``z0`` of size (P, dim) and ``z1`` of size (P, T, B, dim).

    """
    z0, z1 = branches.layer(projection.layer)
    return projection.forward(z0), projection.forward(z1)


def moments(z0: torch.Tensor, z1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean step and covariance of the branches (divisor B).

    Args:
        z0: Float tensor of size (P, dim): prefix states.
        z1: Float tensor of size (P, T, B, dim): branch states.

    Returns:
        ``m`` of size (P, T, dim) and ``C`` of size (P, T, dim, dim).

    """
    centre = z1.mean(dim=2)
    deviation = z1 - centre[:, :, None]
    cov = deviation.transpose(-1, -2) @ deviation / z1.shape[2]
    return centre - z0[:, None], cov


def _excess_kurtosis(z1: torch.Tensor) -> np.ndarray:
    """Excess kurtosis along each branch cloud's main axis: (P, T, B, dim) -> (P, T).

    NaN where a cloud has no spread (every branch drew the same token): its shape is undefined.
    """
    deviation = (z1 - z1.mean(dim=2, keepdim=True)).double()
    _, _, vh = torch.linalg.svd(deviation, full_matrices=False)
    along = (deviation @ vh[..., 0, :, None]).squeeze(-1)
    m2 = along.pow(2).mean(-1)
    m4 = along.pow(4).mean(-1)
    spread = m2 > 1e-12 * deviation.pow(2).sum((-1, -2)).amax().clamp_min(1e-30)
    return torch.where(spread, m4 / m2.clamp_min(1e-300).pow(2) - 3, torch.nan).numpy()


def gaussian_surrogate(z0: torch.Tensor, z1: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
    """Branch clouds drawn from Gaussians with each cloud's own mean and covariance.

    The null for every shape statistic: the same number of branches, means and covariances as
    the data, but Gaussian.

    Returns:
        Float tensor of size (P, T, B, dim).

    """
    m, cov = moments(z0, z1)
    values, vectors = torch.linalg.eigh(cov.double())
    root = vectors * values.clamp_min(0).sqrt()[..., None, :]
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(*z1.shape, generator=generator, dtype=torch.float64)
    return (z0[:, None, None] + m[:, :, None] + noise @ root.transpose(-1, -2)).float()


def measured(branches: Branches, projection: Projection, *, seed: int = 0) -> pd.DataFrame:
    """Summarise what the branches show at each prefix and temperature, model-free.

    Returns:
        One row per (prefix, temperature): ``prefix``, ``prompt_id``, ``step``,
        ``temperature``, ``entropy`` (nats), ``top_mass`` (tokens carrying 90% of the mass),
        ``distinct`` (distinct tokens among the branches), ``noise`` (tr C),
        ``mean_step`` (‖m‖²), ``kurtosis`` and ``surrogate_kurtosis`` (excess kurtosis along
        the cloud's main axis, for the data and for its Gaussian surrogate; NaN where every
        branch drew the same token).

    """
    z0, z1 = project(branches, projection)
    m, cov = moments(z0, z1)
    n, n_temps = branches.tokens.shape[:2]
    distinct = [[len(set(row.tolist())) for row in prefix] for prefix in branches.tokens]
    surrogate = gaussian_surrogate(z0, z1, seed=seed)
    return pd.DataFrame(
        {
            "prefix": np.repeat(np.arange(n), n_temps),
            "prompt_id": np.repeat(branches.prefixes["prompt_id"].to_numpy(), n_temps),
            "step": np.repeat(branches.prefixes["step"].to_numpy(), n_temps),
            "temperature": np.tile(branches.temperatures, n),
            "entropy": branches.entropies.flatten().numpy(),
            "top_mass": branches.top_mass.flatten().numpy(),
            "distinct": np.asarray(distinct).flatten(),
            "noise": cov.diagonal(dim1=-2, dim2=-1).sum(-1).flatten().numpy(),
            "mean_step": m.pow(2).sum(-1).flatten().numpy(),
            "kurtosis": _excess_kurtosis(z1).flatten(),
            "surrogate_kurtosis": _excess_kurtosis(surrogate).flatten(),
        }
    )


@torch.no_grad()
def against_models(
    branches: Branches,
    projection: Projection,
    models: dict[str, SDEModel],
    *,
    dt: float = 1.0,
) -> pd.DataFrame:
    """Compare each model's one-step prediction with the branches, prefix by prefix.

    Args:
        branches: From :func:`sdelm.generation.branch`.
        projection: The projection the models were fitted in.
        models: Fitted SDEs by name (evaluated on the CPU).
        dt: The models' time step; a prefix at step ``k`` is at time ``k·dt``.

    Returns:
        One row per (prefix, temperature, model): ``prefix``, ``prompt_id``, ``temperature``,
        ``model``, ``predicted_noise`` (tr σσᵀΔt), ``noise`` (tr C), ``drift_error``
        (‖m − μΔt‖²), ``mean_dot`` (m·μΔt), ``predicted_mean`` (‖μΔt‖²), ``mean_step`` (‖m‖²)
        and ``nll`` (the branches' Euler–Maruyama NLL, nats per dimension).

    """
    z0, z1 = project(branches, projection)
    m, cov = moments(z0, z1)
    n, n_temps, n_branches, dim = z1.shape
    times = torch.tensor(branches.prefixes["step"].to_numpy(dtype=np.float32)) * dt
    rows = []
    for name, model in models.items():
        model = model.cpu().eval()
        step = model.drift(z0, times) * dt  # (P, dim)
        variance = model.diffusion(z0, times).pow(2).sum(-1) * dt  # (P,)
        for p in range(n):
            for t in range(n_temps):
                branch_steps = Transitions(
                    x=z0[p].expand(n_branches, dim),
                    t=times[p].expand(n_branches),
                    dx=z1[p, t] - z0[p],
                    dt=dt,
                )
                rows.append(
                    {
                        "prefix": p,
                        "prompt_id": branches.prefixes["prompt_id"].iloc[p],
                        "temperature": branches.temperatures[t],
                        "model": name,
                        "predicted_noise": float(variance[p]),
                        "noise": float(cov[p, t].trace()),
                        "drift_error": float((m[p, t] - step[p]).pow(2).sum()),
                        "mean_dot": float(m[p, t] @ step[p]),
                        "predicted_mean": float(step[p].pow(2).sum()),
                        "mean_step": float(m[p, t].pow(2).sum()),
                        "nll": nll(model, branch_steps),
                    }
                )
    return pd.DataFrame(rows)


def _spearman(x: str, y: str) -> Callable[[pd.DataFrame], float]:
    return lambda frame: float(stats.spearmanr(frame[x], frame[y]).statistic)


def effects(
    seen: pd.DataFrame,
    compared: pd.DataFrame,
    *,
    temperature: float,
    model: str,
    baseline: str,
    seed: int = 0,
) -> pd.DataFrame:
    """Measure the chapter's findings: effects with prompt-bootstrap intervals, Holm-adjusted.

    Args:
        seen: From :func:`measured`.
        compared: From :func:`against_models`.
        temperature: The branching temperature that matches the recorded generations (the one
            the fitted model saw); the lowest and highest temperatures give the contrast.
        model: The fitted SDE under test (a name in ``compared``).
        baseline: The model it is compared with.
        seed: Seed of the bootstraps.

    Returns:
        One row per effect (indexed by name): ``estimate``, ``low``, ``high``, ``null``,
        ``expected`` (``"greater"`` or ``"less"`` than the null, fixed before looking),
        ``p_value``, ``p_holm`` and ``verdict``: ``"as expected"`` or ``"opposite"`` when the
        Holm-adjusted p is below 0.05 (by the side of the null the interval lies on), else
        ``"inconclusive"``.

    """
    at_t = seen[seen["temperature"] == temperature]
    fitted = compared[(compared["temperature"] == temperature) & (compared["model"] == model)]
    paired = fitted.merge(
        compared[(compared["temperature"] == temperature) & (compared["model"] == baseline)][
            ["prefix", "nll"]
        ],
        on="prefix",
        suffixes=("", "_baseline"),
    )

    tests = {
        "branch-noise-vs-temperature": (
            log_ratios(seen, "noise"),
            lambda f: float(f["log_ratio"].median()),
            0.0,
            "greater",
        ),
        "branch-noise-vs-entropy": (at_t, _spearman("noise", "entropy"), 0.0, "greater"),
        "fitted-vs-branch-noise": (fitted, _spearman("predicted_noise", "noise"), 0.0, "greater"),
        "branch-share-of-fitted-noise": (
            fitted,
            lambda f: float(f["noise"].sum() / f["predicted_noise"].sum()),
            1.0,
            "less",
        ),
        "fitted-drift-vs-branch-mean": (
            fitted,
            lambda f: float(
                f["mean_dot"].sum() / np.sqrt(f["predicted_mean"].sum() * f["mean_step"].sum())
            ),
            0.0,
            "greater",
        ),
        "branch-nll-vs-baseline": (
            paired,
            lambda f: float((f["nll"] - f["nll_baseline"]).mean()),
            0.0,
            "less",
        ),
        "branch-kurtosis-vs-gaussian": (
            at_t,
            lambda f: float((f["kurtosis"] - f["surrogate_kurtosis"]).mean()),
            0.0,
            "greater",
        ),
    }
    rows = {
        name: {
            **cluster_bootstrap(frame, statistic, null=null, seed=seed),
            "null": null,
            "expected": expected,
        }
        for name, (frame, statistic, null, expected) in tests.items()
    }
    table = pd.DataFrame.from_dict(rows, orient="index")
    table["p_holm"] = holm(table["p_value"])
    greater = table["low"] > table["null"]
    less = table["high"] < table["null"]
    expected_side = np.where(table["expected"] == "greater", greater, less)
    other_side = np.where(table["expected"] == "greater", less, greater)
    table["verdict"] = np.select(
        [(table["p_holm"] < 0.05) & expected_side, (table["p_holm"] < 0.05) & other_side],
        ["as expected", "opposite"],
        "inconclusive",
    )
    return table
