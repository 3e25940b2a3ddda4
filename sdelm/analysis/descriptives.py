"""Descriptive statistics of trajectories (chapter 1): tidy tables, held-out PCA, effects.

Tables are :class:`pandas.DataFrame` with one row per observation, ready for seaborn. Effects
are measured with :func:`sdelm.stats.cluster_bootstrap` (the one bootstrap of the package):
intervals resample prompts, and passages for human text, never the sequences or steps of one
prompt.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from sdelm.data import SDEData
from sdelm.stats import cluster_bootstrap
from sdelm.trajectories import Trajectories

__all__ = [
    "equivalence_effect",
    "explained_variance",
    "group_labels",
    "held_out_projection",
    "human_contrast",
    "increments_against_shuffled",
    "layer_scales",
    "memory_effect",
    "projection_effect",
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


def increments_against_shuffled(trajs: Trajectories, layer: int) -> pd.DataFrame:
    """Compare each step's increment with the distance to other prompts' states.

    If consecutive states were independent draws, ``|X_k − X_{k−1}|`` would be as large as the
    distance from ``X_k`` to the state at step ``k − 1`` of a sequence that shares nothing with
    it. The partners of a sequence are every sequence of the **same source** (generated with
    generated, human with human) and of **another prompt** (passage): a partner of the same
    prompt shares the context, and one of the other source differs in more than memory. The
    shuffled distance averages over all partners, the expectation of a random partner draw, so
    it needs no seed. The ratio of the two, per sequence, measures how much a trajectory
    remembers where it was: 1 for independent draws, below 1 with memory.

    Args:
        trajs: Trajectories with ``prompt_id`` and ``source`` row attributes.
        layer: A recorded layer.

    Returns:
        One row per sequence: ``sequence, prompt_id, source, group, increment`` (mean
        ``|X_k − X_{k−1}|`` over the steps with a partner), ``shuffled`` (mean over the same
        steps of the mean ``|X_k − X'_{k−1}|`` over the partners ``X'`` that have step
        ``k − 1``), ``n_partners`` and ``ratio`` = increment / shuffled (NaN for a sequence
        without partners).

    """
    states = trajs.layer(layer).double()  # (n, T, D)
    mask = trajs.mask
    ids = trajs.rows["prompt_id"].to_numpy()
    sources = trajs.rows["source"].to_numpy()
    eligible = torch.from_numpy((sources[:, None] == sources[None, :]) & (ids[:, None] != ids))
    own_sum = torch.zeros(trajs.n_sequences, dtype=torch.float64)
    other_sum = torch.zeros_like(own_sum)
    count = torch.zeros_like(own_sum)
    for k in range(1, trajs.n_steps):
        partners = eligible & mask[None, :, k - 1]  # (n, n): partner j has step k − 1
        has = mask[:, k] & mask[:, k - 1] & partners.any(dim=1)
        distances = torch.cdist(states[:, k], states[:, k - 1])  # (n, n)
        mean_other = (distances * partners).sum(dim=1) / partners.sum(dim=1).clamp(min=1)
        own_sum += torch.where(has, distances.diagonal(), 0.0)
        other_sum += torch.where(has, mean_other, 0.0)
        count += has
    increment = own_sum / count  # NaN (0/0) without a single step with a partner
    shuffled = other_sum / count
    return pd.DataFrame(
        {
            "sequence": np.arange(trajs.n_sequences),
            "prompt_id": ids,
            "source": sources,
            "group": group_labels(trajs).to_numpy(),
            "increment": increment.numpy(),
            "shuffled": shuffled.numpy(),
            "n_partners": eligible.sum(dim=1).numpy(),
            "ratio": (increment / shuffled).numpy(),
        }
    )


def memory_effect(memory: pd.DataFrame, *, seed: int = 0) -> dict[str, float]:
    """Mean memory ratio with an interval that resamples prompts and passages.

    Args:
        memory: A table from :func:`increments_against_shuffled` (sequences without partners,
            ratio NaN, are left out).
        seed: Seed of the bootstrap.

    Returns:
        :func:`sdelm.stats.cluster_bootstrap`'s result for the mean ratio against 1.

    """
    frame = memory.dropna(subset=["ratio"])
    return cluster_bootstrap(frame, _mean_ratio, cluster="prompt_id", null=1.0, seed=seed)


def _mean_ratio(frame: pd.DataFrame) -> float:
    return float(frame["ratio"].mean())


def equivalence_effect(memory: pd.DataFrame, margin: float, *, seed: int = 0) -> dict[str, float]:
    """Distance of the mean memory ratio from 1, tested against an equivalence margin.

    "No memory" is a ratio of 1; it is shown, not assumed, by an interval of ``|ratio − 1|``
    that lies below ``margin`` (an equivalence test: a small p-value against ``null = margin``
    with the estimate below it). An interval that reaches the margin is inconclusive.

    Args:
        memory: A table from :func:`increments_against_shuffled`.
        margin: The largest departure from 1 still called "no memory", e.g. 0.1.
        seed: Seed of the bootstrap.

    Returns:
        :func:`sdelm.stats.cluster_bootstrap`'s result for ``|mean ratio − 1|`` against
        ``margin``, resampling prompts and passages.

    Raises:
        ValueError: If ``margin`` is not positive.

    """
    if not margin > 0:
        raise ValueError(f"The equivalence margin must be positive, got {margin}.")
    frame = memory.dropna(subset=["ratio"])
    return cluster_bootstrap(
        frame, lambda f: abs(_mean_ratio(f) - 1.0), cluster="prompt_id", null=margin, seed=seed
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
    states, mask, train, test, mean, vh = _pca(trajs, layer, train, test)
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


def _pca(
    trajs: Trajectories, layer: int, train: np.ndarray, test: np.ndarray
) -> tuple[torch.Tensor, ...]:
    """States, mask, train and test rows (bool tensors), and the training PCA (mean, Vᵀ)."""
    states = trajs.layer(layer).double()
    mask = trajs.mask
    train = torch.tensor(np.asarray(train, dtype=bool))
    test = torch.tensor(np.asarray(test, dtype=bool))
    fit = states[train][mask[train]]
    mean = fit.mean(dim=0)
    _, _, vh = torch.linalg.svd(fit - mean, full_matrices=False)
    return states, mask, train, test, mean, vh


def held_out_projection(
    trajs: Trajectories, layer: int, train: np.ndarray, test: np.ndarray, n_components: int
) -> pd.DataFrame:
    """Per held-out sequence, its variance along the leading components fitted on training rows.

    Args:
        trajs: Trajectories.
        layer: A recorded layer.
        train: Bool array (n_sequences,) of the rows the PCA is fitted on.
        test: Bool array (n_sequences,) of the held-out rows.
        n_components: Leading components kept.

    Returns:
        One row per held-out sequence: ``sequence, prompt_id, along`` (sum over its steps of
        the squared projection on the ``n_components`` leading components, centred by the
        training mean) and ``total`` (sum of the squared centred norms). The share of held-out
        variance the components explain is ``along.sum() / total.sum()``.

    Raises:
        ValueError: If ``n_components`` is not between 1 and the state dimension.

    """
    if not 1 <= n_components <= trajs.dim:
        raise ValueError(f"n_components must be in [1, {trajs.dim}], got {n_components}.")
    states, mask, _, test, mean, vh = _pca(trajs, layer, train, test)
    x = (states[test] - mean) * mask[test, :, None]  # masked steps count zero
    along = ((x @ vh[:n_components].T) ** 2).sum(dim=(1, 2))
    total = (x**2).sum(dim=(1, 2))
    rows = np.flatnonzero(test.numpy())
    return pd.DataFrame(
        {
            "sequence": rows,
            "prompt_id": trajs.rows["prompt_id"].to_numpy()[rows],
            "along": along.numpy(),
            "total": total.numpy(),
        }
    )


def projection_effect(projection: pd.DataFrame, null: float, *, seed: int = 0) -> dict[str, float]:
    """Share of held-out variance along the training components, resampling held-out prompts.

    The components are fixed (fitted once on the training prompts); the interval covers the
    choice of held-out prompts and passages, not the fit.

    Args:
        projection: A table from :func:`held_out_projection`.
        null: The share expected without preferred directions, e.g. ``n_components / dim``
            for an isotropic cloud.
        seed: Seed of the bootstrap.

    Returns:
        :func:`sdelm.stats.cluster_bootstrap`'s result for the share against ``null``.

    """
    return cluster_bootstrap(
        projection,
        lambda f: float(f["along"].sum() / f["total"].sum()),
        cluster="prompt_id",
        null=null,
        seed=seed,
    )


def layer_scales(steps: pd.DataFrame) -> pd.DataFrame:
    """Median size of the states and of their steps, per layer.

    Args:
        steps: :func:`step_statistics` tables of several layers, with a ``layer`` column.

    Returns:
        One row per layer (the index): ``median |X|``, ``median |ΔX|`` and
        ``median |ΔX|/|X|`` (the increment over the previous state's norm).

    """
    return (
        steps.groupby("layer")[["norm", "increment", "relative_increment"]]
        .median()
        .set_axis(["median |X|", "median |ΔX|", "median |ΔX|/|X|"], axis=1)
    )


def temperature_contrast(
    sequences: pd.DataFrame, column: str, *, seed: int = 0
) -> dict[str, float] | None:
    """Contrast of a per-sequence statistic between the highest and lowest temperature.

    The difference of the means over sequences at the two temperatures; every prompt is
    sampled at both, so resampling prompts keeps the pairs together.

    Args:
        sequences: A table from :func:`sequence_statistics`.
        column: The statistic, e.g. ``"entropy"``.
        seed: Seed of the bootstrap.

    Returns:
        :func:`sdelm.stats.cluster_bootstrap`'s result (high − low, against 0, resampling
        prompts) with ``t_low`` and ``t_high``; ``None`` when fewer than two temperatures or
        two prompts were generated.

    """
    generated = sequences[sequences["source"] == "generated"]
    temperatures = sorted(generated["temperature"].unique())
    if len(temperatures) < 2 or generated["prompt_id"].nunique() < 2:
        return None
    t_low, t_high = temperatures[0], temperatures[-1]
    frame = generated[generated["temperature"].isin([t_low, t_high])]

    def difference(f: pd.DataFrame) -> float:
        means = f.groupby("temperature")[column].mean()
        return float(means.get(t_high, np.nan) - means.get(t_low, np.nan))

    result = cluster_bootstrap(frame, difference, cluster="prompt_id", seed=seed)
    return {"t_low": float(t_low), "t_high": float(t_high), **result}


def human_contrast(
    sequences: pd.DataFrame, column: str, *, seed: int = 0
) -> dict[str, float] | None:
    """Human passages against the samples at the lowest temperature, for one statistic.

    Args:
        sequences: A table from :func:`sequence_statistics` (with ``column``).
        column: The per-sequence statistic, e.g. ``"logprob_t1"``.
        seed: Seed of the bootstrap.

    Returns:
        :func:`sdelm.stats.cluster_bootstrap`'s result for mean(human) − mean(generated at the
        lowest temperature), against 0, resampling passages and prompts, with ``temperature``;
        ``None`` when either side has fewer than two prompts (passages).

    """
    generated = sequences[sequences["source"] == "generated"]
    human = sequences[sequences["source"] == "human"]
    if generated.empty:
        return None
    coolest = generated[generated["temperature"] == generated["temperature"].min()]
    if human["prompt_id"].nunique() < 2 or coolest["prompt_id"].nunique() < 2:
        return None
    frame = pd.concat([human, coolest])

    def difference(f: pd.DataFrame) -> float:
        means = f.groupby("source")[column].mean()
        return float(means.get("human", np.nan) - means.get("generated", np.nan))

    result = cluster_bootstrap(frame, difference, cluster="prompt_id", seed=seed)
    return {"temperature": float(coolest["temperature"].iloc[0]), **result}


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
