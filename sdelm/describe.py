"""Descriptive statistics of trajectories (chapter 1): tidy tables, held-out PCA, intervals.

Everything returns a :class:`pandas.DataFrame` with one row per observation, ready for seaborn.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from scipy import stats

from sdelm.data import SDEData
from sdelm.simulate import energy_distance
from sdelm.trajectories import Trajectories

__all__ = [
    "direction",
    "energy_test",
    "explained_variance",
    "group_labels",
    "increments_against_shuffled",
    "mean_difference",
    "mean_interval",
    "sequence_statistics",
    "split_prompts",
    "state_labels",
    "step_statistics",
    "temperature_contrast",
]


def group_labels(trajs: Trajectories | pd.DataFrame) -> pd.Series:
    """One label per row (of trajectories or a row table): ``"human"``, ``"generated, T=0.7"``."""
    rows = trajs if isinstance(trajs, pd.DataFrame) else trajs.rows
    return pd.Series(
        [
            "human" if source == "human" else f"{source}, T={temperature:g}"
            for source, temperature in zip(rows["source"], rows["temperature"], strict=True)
        ],
        name="group",
    )


def step_statistics(trajs: Trajectories, layer: int) -> pd.DataFrame:
    """One row per valid step of every sequence, for one layer.

    Args:
        trajs: Trajectories.
        layer: A recorded layer.

    Returns:
        Columns ``sequence, prompt_id, group, step, norm, increment, relative_increment,
        entropy, logprob``: ``norm`` is ``|X_k|``, ``increment`` is ``|X_k − X_{k−1}|`` (NaN at
        the first step), ``relative_increment`` is increment / ``|X_{k−1}|``.

    """
    states = trajs.layer(layer)  # (n, T, D)
    norm = states.norm(dim=-1)
    increment = torch.full_like(norm, torch.nan)
    increment[:, 1:] = (states[:, 1:] - states[:, :-1]).norm(dim=-1)
    increment[:, 1:][~trajs.mask[:, 1:]] = torch.nan
    relative = torch.full_like(norm, torch.nan)
    relative[:, 1:] = increment[:, 1:] / norm[:, :-1]
    seq, step = trajs.mask.nonzero(as_tuple=True)
    labels = group_labels(trajs).to_numpy()
    return pd.DataFrame(
        {
            "sequence": seq.numpy(),
            "prompt_id": trajs.rows["prompt_id"].to_numpy()[seq.numpy()],
            "group": labels[seq.numpy()],
            "step": step.numpy(),
            "norm": norm[seq, step].numpy(),
            "increment": increment[seq, step].numpy(),
            "relative_increment": relative[seq, step].numpy(),
            "entropy": trajs.entropies[seq, step].numpy(),
            "logprob": trajs.logprobs[seq, step].numpy(),
        }
    )


def sequence_statistics(trajs: Trajectories, layer: int) -> pd.DataFrame:
    """Per-sequence means of :func:`step_statistics`, with the row attributes.

    Returns:
        One row per sequence: ``sequence, prompt_id, group, source, temperature, length`` and
        the means of ``norm, increment, relative_increment, entropy, logprob``.

    """
    steps = step_statistics(trajs, layer)
    means = steps.groupby("sequence")[
        ["norm", "increment", "relative_increment", "entropy", "logprob"]
    ].mean()
    frame = pd.DataFrame(
        {
            "sequence": np.arange(trajs.n_sequences),
            "prompt_id": trajs.rows["prompt_id"],
            "group": group_labels(trajs),
            "source": trajs.rows["source"],
            "temperature": trajs.rows["temperature"],
            "length": trajs.lengths.numpy(),
        }
    )
    return frame.join(means, on="sequence")


def increments_against_shuffled(trajs: Trajectories, layer: int, seed: int = 0) -> pd.DataFrame:
    """Compare each step's increment with the distance to a state of another sequence.

    If consecutive states were independent draws, ``|X_k − X_{k−1}|`` would be as large as the
    distance between two states of different sequences at the same position. The ratio of the
    two, per sequence, measures how much a trajectory remembers where it was.

    Args:
        trajs: Trajectories with at least two sequences.
        layer: A recorded layer.
        seed: Seed of the choice of partner sequences.

    Returns:
        One row per sequence: ``sequence, prompt_id, group, increment`` (mean
        ``|X_k − X_{k−1}|``), ``shuffled`` (mean ``|X_k − X'_{k−1}|`` with ``X'`` a random other
        sequence that has step ``k − 1``) and ``ratio`` = increment / shuffled.

    """
    states = trajs.layer(layer)
    mask = trajs.mask
    rng = np.random.default_rng(seed)
    n = trajs.n_sequences
    partner = (np.arange(n) + rng.integers(1, n, size=n)) % n  # never the sequence itself
    both = mask[:, 1:] & mask[:, :-1] & mask[partner, :-1]
    own = (states[:, 1:] - states[:, :-1]).norm(dim=-1)
    other = (states[:, 1:] - states[partner, :-1]).norm(dim=-1)
    count = both.sum(dim=1).clamp(min=1)
    increment = (own * both).sum(dim=1) / count
    shuffled = (other * both).sum(dim=1) / count
    return pd.DataFrame(
        {
            "sequence": np.arange(n),
            "prompt_id": trajs.rows["prompt_id"],
            "group": group_labels(trajs),
            "increment": increment.numpy(),
            "shuffled": shuffled.numpy(),
            "ratio": (increment / shuffled).numpy(),
        }
    )


def split_prompts(
    trajs: Trajectories, fraction: float = 0.5, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Split rows into two sets by prompt (or passage): no prompt is in both.

    Args:
        trajs: Trajectories.
        fraction: Fraction of prompts in the first set.
        seed: Seed of the shuffle.

    Returns:
        Two bool arrays of size (n_sequences,): first set, second set.

    Raises:
        ValueError: If either set would be empty.

    """
    ids = np.array(sorted(trajs.rows["prompt_id"].unique()))
    n_first = round(fraction * len(ids))
    if not 0 < n_first < len(ids):
        raise ValueError(
            f"Splitting {len(ids)} prompts with fraction={fraction} leaves a set empty; use "
            "more prompts or another fraction."
        )
    first_ids = np.random.default_rng(seed).permutation(ids)[:n_first]
    first = trajs.rows["prompt_id"].isin(first_ids).to_numpy()
    return first, ~first


def explained_variance(
    trajs: Trajectories, layer: int, train: np.ndarray, test: np.ndarray
) -> pd.DataFrame:
    """PCA fitted on the training rows' states; variance explained on training and held-out rows.

    Args:
        trajs: Trajectories.
        layer: A recorded layer.
        train: Bool array (n_sequences,) of the rows the PCA is fitted on.
        test: Bool array (n_sequences,) of the held-out rows.

    Returns:
        One row per component and split: ``component`` (1-based), ``split`` ("train" or
        "held-out"), ``fraction`` (variance along that component / total variance) and
        ``cumulative``.

    """
    states = trajs.layer(layer).double()
    mask = trajs.mask
    train = torch.tensor(np.asarray(train, dtype=bool))
    test = torch.tensor(np.asarray(test, dtype=bool))
    fit = states[train][mask[train]]
    mean = fit.mean(dim=0)
    _, _, vh = torch.linalg.svd(fit - mean, full_matrices=False)
    frames = []
    for split, rows in (("train", train), ("held-out", test)):
        x = states[rows][mask[rows]] - mean
        along = ((x @ vh.T) ** 2).sum(dim=0)
        fraction = (along / (x**2).sum()).numpy()
        frames.append(
            pd.DataFrame(
                {
                    "component": np.arange(1, len(fraction) + 1),
                    "split": split,
                    "fraction": fraction,
                    "cumulative": np.cumsum(fraction),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def mean_interval(
    values: Sequence[float] | np.ndarray, *, confidence: float = 0.95, seed: int = 0
) -> dict[str, float]:
    """Mean with a BCa bootstrap confidence interval.

    Args:
        values: One value per independent unit (e.g. per prompt).
        confidence: Confidence level of the interval.
        seed: Seed of the bootstrap.

    Returns:
        ``mean``, ``low``, ``high``.

    """
    values = np.asarray(values, dtype=float)
    result = stats.bootstrap(
        (values,), np.mean, confidence_level=confidence, random_state=np.random.default_rng(seed)
    )
    interval = result.confidence_interval
    return {"mean": float(values.mean()), "low": float(interval.low), "high": float(interval.high)}


def mean_difference(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    paired: bool = False,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """Difference of means ``mean(a) − mean(b)`` with a bootstrap confidence interval.

    Args:
        a: Values of the first group (one per independent unit, e.g. prompt).
        b: Values of the second group (paired with ``a`` when ``paired``).
        paired: Resample pairs (a_i, b_i) together.
        confidence: Confidence level of the interval.
        seed: Seed of the bootstrap.

    Returns:
        ``difference``, ``low``, ``high`` (BCa bootstrap interval, 9,999 resamples).

    """
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    rng = np.random.default_rng(seed)
    if paired:
        result = stats.bootstrap((a - b,), np.mean, confidence_level=confidence, random_state=rng)
    else:
        result = stats.bootstrap(
            (a, b),
            lambda x, y, axis=-1: x.mean(axis=axis) - y.mean(axis=axis),
            confidence_level=confidence,
            random_state=rng,
        )
    interval = result.confidence_interval
    return {
        "difference": float(a.mean() - b.mean()),
        "low": float(interval.low),
        "high": float(interval.high),
    }


def energy_test(
    a: np.ndarray | torch.Tensor,
    b: np.ndarray | torch.Tensor,
    *,
    n_resamples: int = 999,
    seed: int = 0,
) -> dict[str, float]:
    """Two-sample permutation test of equal distributions by the energy distance.

    Args:
        a: Array of size (n, dim): one point per independent unit (e.g. a sequence's mean
            state).
        b: Array of size (m, dim).
        n_resamples: Random relabellings (``scipy.stats.permutation_test``).
        seed: Seed of the relabellings.

    Returns:
        ``energy_distance`` (observed) and ``p_value`` (one-sided: large distances are
        evidence of different distributions).

    Raises:
        ValueError: If either sample has fewer than two points or the dimensions differ.

    """
    a = torch.tensor(np.asarray(a, dtype=np.float64))
    b = torch.tensor(np.asarray(b, dtype=np.float64))
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(
            "energy_test needs two samples of size (n, dim) and (m, dim) with n, m >= 2, got "
            f"{tuple(a.shape)} and {tuple(b.shape)}."
        )
    pooled = torch.cat([a, b])

    def statistic(i: np.ndarray, j: np.ndarray) -> float:
        return energy_distance(pooled[i], pooled[j])

    result = stats.permutation_test(
        (np.arange(len(a)), np.arange(len(a), len(pooled))),
        statistic,
        permutation_type="independent",
        vectorized=False,
        n_resamples=n_resamples,
        alternative="greater",
        random_state=np.random.default_rng(seed),
    )
    return {"energy_distance": float(result.statistic), "p_value": float(result.pvalue)}


def temperature_contrast(sequences: pd.DataFrame, column: str) -> dict[str, float] | None:
    """Paired contrast of a per-sequence statistic between the highest and lowest temperature.

    Sequences are averaged per prompt and temperature first; the prompts are the independent
    units of the bootstrap.

    Args:
        sequences: A table from :func:`sequence_statistics`.
        column: The statistic, e.g. ``"entropy"``.

    Returns:
        ``t_low``, ``t_high``, ``difference`` (high − low), ``low``, ``high`` (95% interval);
        ``None`` when fewer than two temperatures or two prompts were generated.

    """
    generated = sequences[sequences["source"] == "generated"]
    per_prompt = generated.groupby(["prompt_id", "temperature"])[column].mean().unstack()
    if per_prompt.shape[1] < 2 or per_prompt.shape[0] < 2:
        return None
    t_low, t_high = per_prompt.columns.min(), per_prompt.columns.max()
    contrast = mean_difference(per_prompt[t_high], per_prompt[t_low], paired=True)
    return {"t_low": float(t_low), "t_high": float(t_high), **contrast}


def direction(low: float, high: float) -> str:
    """Read an interval of a slope or difference as a direction.

    Args:
        low: Lower end of the interval.
        high: Upper end.

    Returns:
        ``"rises"`` when the interval is above 0, ``"falls"`` when below, else
        ``"shows no clear change"``.

    """
    if low > 0:
        return "rises"
    if high < 0:
        return "falls"
    return "shows no clear change"


def state_labels(data: SDEData) -> tuple[torch.Tensor, torch.Tensor, pd.DataFrame]:
    """Every valid state of a split, with its sequence's labels.

    Args:
        data: A split.

    Returns:
        ``seq`` and ``step`` (long tensors of size (n_states,): where each valid state is) and a
        table with one row per state: ``sequence, prompt_id, source, temperature, group, step``.

    """
    seq, step = data.mask.nonzero(as_tuple=True)
    rows = data.rows.iloc[seq.numpy()].reset_index(drop=True)
    table = pd.DataFrame(
        {
            "sequence": seq.numpy(),
            "prompt_id": rows["prompt_id"],
            "source": rows["source"],
            "temperature": rows["temperature"],
            "group": group_labels(data.rows).to_numpy()[seq.numpy()],
            "step": step.numpy(),
        }
    )
    return seq, step, table
