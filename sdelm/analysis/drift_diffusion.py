"""Drift and diffusion along the trajectories, against temperature, entropy and source.

Everything is evaluated on a held-out split, with the model fitted on the training prompts.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf
import torch
from scipy import stats

from sdelm.data import SDEData
from sdelm.describe import state_labels
from sdelm.models import SDEModel

__all__ = ["cluster_spearman", "field_along_steps", "temperature_slope"]


@torch.no_grad()
def field_along_steps(model: SDEModel, data: SDEData) -> pd.DataFrame:
    """Drift and diffusion of a model at every valid state of a split.

    Args:
        model: A fitted SDE of ``data.dim``.
        data: A split (usually ``test``).

    Returns:
        One row per valid step: ``sequence, prompt_id, source, temperature, group, step``,
        ``drift_norm`` (``|μ|``), ``diffusion_trace`` (tr σσᵀ = Σ σ_i²), ``determinism``
        (``|μ|² Δt / tr σσᵀ``: the squared drift displacement of one step over the noise variance
        of that step), ``increment_sq`` (``|ΔX|²`` to the next step, NaN at the last) and
        ``entropy`` (the next-token entropy recorded at extraction, NaN if unknown).

    """
    seq, step, labels = state_labels(data)
    x = data.states[seq, step]
    t = data.times[step]
    mu = model.drift(x, t)
    variance = model.diffusion(x, t).pow(2).sum(dim=1)
    drift_norm = mu.norm(dim=1)
    has_next = torch.zeros_like(data.mask)
    has_next[:, :-1] = data.mask[:, :-1] & data.mask[:, 1:]
    next_step = (step + 1).clamp(max=data.states.shape[1] - 1)
    increment = (data.states[seq, next_step] - x).pow(2).sum(dim=1)
    increment[~has_next[seq, step]] = torch.nan
    entropy = (
        data.entropies[seq, step]
        if data.entropies is not None
        else torch.full((len(seq),), torch.nan)
    )
    return labels.assign(
        **{
            "drift_norm": drift_norm.numpy(),
            "diffusion_trace": variance.numpy(),
            "determinism": (drift_norm.pow(2) * data.dt / variance).numpy(),
            "increment_sq": increment.numpy(),
            "entropy": entropy.numpy(),
        }
    )


def temperature_slope(field: pd.DataFrame, column: str, *, log: bool = True) -> dict[str, float]:
    """Slope of a per-sequence statistic against sampling temperature, with a 95% interval.

    Per-sequence means (of ``log column`` when ``log``) are regressed on temperature by least
    squares (statsmodels OLS) with standard errors clustered by prompt, since samples of one
    prompt are not independent.

    Args:
        field: A table from :func:`field_along_steps` (generated rows with temperatures).
        column: E.g. ``"diffusion_trace"``.
        log: Regress the logarithm (a slope is then a relative change per unit temperature).

    Returns:
        ``slope``, ``low``, ``high``, ``p_value``, ``n_sequences``, ``n_prompts``.

    Raises:
        ValueError: With fewer than two temperatures.

    """
    generated = field.dropna(subset=["temperature"])
    if generated["temperature"].nunique() < 2:
        raise ValueError("A temperature slope needs sequences at two or more temperatures.")
    values = np.log(generated[column]) if log else generated[column]
    per_sequence = (
        generated.assign(y=values)
        .groupby("sequence")
        .agg(y=("y", "mean"), temperature=("temperature", "first"), prompt=("prompt_id", "first"))
    )
    groups = pd.factorize(per_sequence["prompt"])[0]
    result = smf.ols("y ~ temperature", data=per_sequence).fit(
        cov_type="cluster", cov_kwds={"groups": groups}
    )
    low, high = result.conf_int().loc["temperature"]
    return {
        "slope": float(result.params["temperature"]),
        "low": float(low),
        "high": float(high),
        "p_value": float(result.pvalues["temperature"]),
        "n_sequences": len(per_sequence),
        "n_prompts": int(per_sequence["prompt"].nunique()),
    }


def cluster_spearman(
    frame: pd.DataFrame,
    x: str,
    y: str,
    *,
    cluster: str = "prompt_id",
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """Spearman correlation of two columns with a cluster-bootstrap 95% interval.

    Args:
        frame: Rows with columns ``x``, ``y`` and ``cluster``.
        x: First column.
        y: Second column.
        cluster: Column whose groups are resampled together (e.g. prompts).
        n_boot: Bootstrap resamples.
        seed: Seed of the bootstrap.

    Returns:
        ``rho``, ``low``, ``high``.

    """
    frame = frame.dropna(subset=[x, y])
    rho = float(stats.spearmanr(frame[x], frame[y]).statistic)
    groups = [g[[x, y]].to_numpy() for _, g in frame.groupby(cluster)]
    rng = np.random.default_rng(seed)
    draws = []
    with warnings.catch_warnings():  # a resample with a constant column gives NaN, dropped below
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        for _ in range(n_boot):
            picks = rng.integers(len(groups), size=len(groups))
            sample = np.concatenate([groups[i] for i in picks])
            draws.append(stats.spearmanr(sample[:, 0], sample[:, 1]).statistic)
    low, high = np.nanpercentile(draws, [2.5, 97.5])
    return {"rho": rho, "low": float(low), "high": float(high)}
