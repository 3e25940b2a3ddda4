"""Effects with intervals that resample the right unit, and multiplicity control.

One bootstrap API: :func:`cluster_bootstrap` resamples whole clusters (prompts, passages) with
replacement, gives a percentile interval (of the resamples centred on the estimate) and a
two-sided bootstrap p-value against a null value, both widened for few clusters by the ratio
of the t(G − 1) and normal critical values;
:func:`holm` adjusts a chapter's p-values together.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch

__all__ = [
    "N_RESAMPLES",
    "cluster_bootstrap",
    "holm",
    "log_ratios",
    "mean_difference",
    "mean_interval",
    "pair_weights",
]

#: Bootstrap resamples used throughout.
N_RESAMPLES = 2000


def cluster_bootstrap(
    frame: pd.DataFrame,
    statistic: Callable[[pd.DataFrame], float],
    *,
    cluster: str = "prompt_id",
    null: float = 0.0,
    confidence: float = 0.95,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> dict[str, float]:
    """Estimate a statistic with an interval from resampling whole clusters.

    Args:
        frame: One row per observation, with a ``cluster`` column.
        statistic: Maps a frame (the data, or a resample of its clusters) to a number.
        cluster: Column whose groups are resampled together.
        null: The value the effect is tested against.
        confidence: Confidence level of the percentile interval.
        n_resamples: Bootstrap resamples.
        seed: Seed of the resampling.

    The resampled values are centred on the estimate: their median is moved onto it. A
    resample repeats some clusters and leaves others out, which shifts a statistic that is not
    a plain mean of the clusters (a correlation across cells of cell means is attenuated,
    each cell holding fewer distinct observations; a mean of absolute values rises), and a
    percentile interval would then miss its own estimate. Centring keeps the resamples'
    spread and shape; where they are centred already (a mean, a slope) it changes nothing.

    With few clusters the resamples spread less than the statistic varies between samples:
    G clusters resampled give a bootstrap distribution of G − 1 effective degrees of freedom
    at most. So the centred values are stretched about the estimate by
    t_{G−1}/z at the interval's level (Cameron, Gelbach and Miller's t(G − 1) critical values
    for clustered data): 1.62 for 4 clusters, 1.09 for 16, 1.04 for 32, tending to 1. The
    interval and the p-value are both read off the centred, stretched values.

    Returns:
        ``estimate``, ``low``, ``high``, ``p_value`` (two-sided, the share of centred
        resamples on the far side of ``null``, doubled, with the +1 correction) and
        ``n_clusters``.

    Raises:
        ValueError: With fewer than two clusters.

    """
    from scipy.stats import norm as normal
    from scipy.stats import t as t_distribution

    # Row positions of each cluster: a resample is one positional take of the frame, the
    # clusters' rows in the order drawn.
    indices = frame.groupby(cluster, sort=True).indices
    groups = [indices[key] for key in sorted(indices)]
    if len(groups) < 2:
        raise ValueError(f"A cluster bootstrap needs at least two {cluster} groups.")
    rng = np.random.default_rng(seed)
    draws = np.array(
        [
            statistic(
                frame.take(
                    np.concatenate(
                        [groups[i] for i in rng.integers(len(groups), size=len(groups))]
                    )
                )
            )
            for _ in range(n_resamples)
        ]
    )
    draws = draws[np.isfinite(draws)]
    estimate = float(statistic(frame))
    tail = (1 - confidence) / 2
    stretch = t_distribution.ppf(1 - tail, len(groups) - 1) / normal.ppf(1 - tail)
    draws = estimate + stretch * (draws - np.median(draws))
    low, high = np.quantile(draws, [tail, 1 - tail])
    below = (1 + np.sum(draws <= null)) / (1 + len(draws))
    above = (1 + np.sum(draws >= null)) / (1 + len(draws))
    return {
        "estimate": estimate,
        "low": float(low),
        "high": float(high),
        "p_value": float(min(1.0, 2 * min(below, above))),
        "n_clusters": len(groups),
    }


def log_ratios(
    frame: pd.DataFrame, column: str, *, by: str = "temperature", cluster: str = "prompt_id"
) -> pd.DataFrame:
    """Each cluster's log ratio of the mean of ``column`` at the highest and lowest ``by``.

    One row per cluster, so that a statistic of the ratios (their median: no single sequence
    decides it) is resampled by :func:`cluster_bootstrap` with the right weights: a cluster
    drawn twice counts twice. A log ratio of means pooled over the clusters is not robust: one
    sequence with five times the median squared step swung it across its threshold.

    Args:
        frame: One row per observation, with ``column``, ``by`` and ``cluster`` columns.
        column: The positive quantity compared (e.g. ``increment_sq``, ``noise``).
        by: The condition whose extreme levels are compared.
        cluster: The unit each ratio belongs to.

    Returns:
        Columns ``cluster`` and ``log_ratio``, for the clusters observed at both levels.

    Raises:
        ValueError: With fewer than two levels of ``by``.

    """
    levels = np.sort(frame[by].unique())
    if len(levels) < 2:
        raise ValueError(f"log_ratios needs at least two levels of {by!r}, got {len(levels)}.")
    means = frame[frame[by].isin(levels[[0, -1]])].groupby([cluster, by])[column].mean()
    table = means.unstack(by).dropna()
    ratios = np.log(table[levels[-1]] / table[levels[0]])
    return ratios.rename("log_ratio").reset_index()


def pair_weights(left: torch.Tensor, right: torch.Tensor, diagonal: torch.Tensor) -> torch.Tensor:
    """Weights of the pairs of units that a resample draws, for a pairwise (U- or V-) statistic.

    A unit drawn ``c_i`` times pairs ``left_i · right_j`` times with another unit ``j``; with
    itself, ``diagonal_i`` times: a pair of a unit with its own copy never occurs in the data,
    so a resample keeps only what the data have, each copy with itself (``diagonal = counts``
    for a V-statistic) or nothing (zeros, for a U-statistic).

    Args:
        left: Float tensor of size (..., n): the first member's weights (e.g. counts, or counts
            times a validity mask).
        right: Float tensor of size (..., n): the second member's.
        diagonal: Float tensor of size (..., n): the weight of each unit paired with itself.

    Returns:
        Float tensor of size (..., n, n).

    """
    pairs = left[..., :, None] * right[..., None, :]
    return pairs - torch.diag_embed(pairs.diagonal(dim1=-2, dim2=-1) - diagonal)


def minimum_detectable(measured: dict[str, float], *, power: float = 0.8) -> float:
    """Smallest effect the data could have detected: (z_{0.975} + z_power) standard errors.

    The standard error is read off a 95% interval (its width over 2 · 1.96), so a null result
    can say how large an effect it rules out rather than only that it found none.

    Args:
        measured: ``low`` and ``high`` of a 95% interval, e.g. from :func:`cluster_bootstrap`.
        power: Power of the two-sided 5% test.

    Returns:
        The minimum detectable effect, in the effect's units (2.80 standard errors at 80%).

    """
    from scipy.stats import norm

    standard_error = (measured["high"] - measured["low"]) / (2 * norm.ppf(0.975))
    return float((norm.ppf(0.975) + norm.ppf(power)) * standard_error)


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm-adjusted p-values (family-wise error control) of one family of tests."""
    from statsmodels.stats.multitest import multipletests  # slow to import; rarely needed

    return multipletests(np.asarray(p_values, dtype=float), method="holm")[1]


def mean_interval(
    values: Sequence[float] | np.ndarray, *, confidence: float = 0.95, seed: int = 0
) -> dict[str, float]:
    """Mean with a percentile bootstrap interval (:func:`sdelm.stats.cluster_bootstrap`).

    Args:
        values: One value per independent unit (e.g. per prompt): each is its own cluster.
        confidence: Confidence level of the interval.
        seed: Seed of the bootstrap.

    Returns:
        ``mean``, ``low``, ``high``.

    """
    frame = pd.DataFrame({"value": np.asarray(values, dtype=float)})
    frame["unit"] = np.arange(len(frame))
    result = cluster_bootstrap(
        frame, lambda f: float(f["value"].mean()), cluster="unit", confidence=confidence, seed=seed
    )
    return {"mean": result["estimate"], "low": result["low"], "high": result["high"]}


def mean_difference(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    paired: bool = False,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """Difference of means ``mean(a) − mean(b)`` with a percentile bootstrap interval.

    Args:
        a: Values of the first group (one per independent unit, e.g. prompt).
        b: Values of the second group (paired with ``a`` when ``paired``).
        paired: Resample pairs (a_i, b_i) together.
        confidence: Confidence level of the interval.
        seed: Seed of the bootstrap.

    Returns:
        ``difference``, ``low``, ``high``, from :func:`sdelm.stats.cluster_bootstrap` with
        each unit (each pair when ``paired``) its own cluster.

    """
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if paired:
        frame = pd.DataFrame({"value": a - b, "group": "a"})
    else:
        frame = pd.DataFrame(
            {"value": np.concatenate([a, b]), "group": ["a"] * len(a) + ["b"] * len(b)}
        )
    frame["unit"] = np.arange(len(frame))

    def difference(f: pd.DataFrame) -> float:
        first = f.loc[f["group"] == "a", "value"].mean()
        return float(first if paired else first - f.loc[f["group"] == "b", "value"].mean())

    result = cluster_bootstrap(frame, difference, cluster="unit", confidence=confidence, seed=seed)
    return {"difference": result["estimate"], "low": result["low"], "high": result["high"]}
