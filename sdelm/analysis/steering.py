"""Scoring steered generation: what each sampling run's text is worth, per prompt.

:func:`score_arms` measures quality (the model's own untempered log-probability), diversity
(distinct n-grams across the samples of a prompt) and repetition (within a sample) of each run;
:func:`frontier_gain` asks whether a control of :mod:`sdelm.control` reaches a better
quality–diversity trade-off than plain sampling at any constant temperature; :func:`kicks`
pairs what the diffusion control expected at each step with the step that came.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from sdelm.analysis.scoring import repetition, sequence_mean
from sdelm.control import DiffusionTemperature
from sdelm.stats import cluster_bootstrap
from sdelm.trajectories import Trajectories

__all__ = ["distinct", "frontier_gain", "kicks", "score_arms"]


def distinct(
    tokens: torch.Tensor, mask: torch.Tensor, groups: Sequence[Any], *, n: int = 2
) -> pd.Series:
    """Return the share of distinct token n-grams of each group of sequences, pooled.

    With several samples per prompt, grouping by prompt measures how differently the model
    continues the same prompt (1: no n-gram is ever repeated, within or across samples).

    Args:
        tokens: Long tensor of size (n_sequences, n_steps).
        mask: Bool tensor of size (n_sequences, n_steps).
        groups: One label per sequence.
        n: n-gram length.

    Returns:
        ``pandas.Series`` indexed by group label.

    Raises:
        ValueError: If ``groups`` has another length than ``tokens``.

    """
    if len(groups) != tokens.shape[0]:
        raise ValueError(f"{len(groups)} group labels for {tokens.shape[0]} sequences.")
    grams: dict[Any, list[tuple[int, ...]]] = {}
    for row, keep, group in zip(tokens.tolist(), mask.tolist(), groups, strict=True):
        ids = [token for token, valid in zip(row, keep, strict=True) if valid]
        grams.setdefault(group, []).extend(tuple(ids[i : i + n]) for i in range(len(ids) - n + 1))
    return pd.Series(
        {group: len(set(g)) / len(g) if g else np.nan for group, g in grams.items()},
        name=f"distinct_{n}",
    )


def kicks(law: DiffusionTemperature, trajs: Trajectories) -> pd.DataFrame:
    """Pair what the diffusion control sees at each step with the step that followed.

    Args:
        law: A diffusion control.
        trajs: Generated trajectories recording ``law.layer``.

    Returns:
        One row per transition ``k − 1 → k`` with ``prompt_id``, ``sample``, ``step`` (k),
        ``predicted`` (tr σσᵀ at the state before token k: the kick the SDE expects),
        ``realized`` (``|Z_k − Z_{k−1}|²`` in the fitted coordinates: the kick that came) and
        ``entropy`` (of the distribution token k was drawn from, nats).

    """
    both = trajs.mask[:, 1:] & trajs.mask[:, :-1]
    seq, before = both.nonzero(as_tuple=True)
    states = trajs.layer(law.layer)
    z = law.projection.forward(states.to(law.projection.mean.dtype)).float()
    rows = trajs.rows.iloc[seq.numpy()].reset_index(drop=True)
    return pd.DataFrame(
        {
            "prompt_id": rows["prompt_id"],
            "sample": rows["sample"],
            "step": (before + 1).numpy(),
            "predicted": law.trace(states[seq, before], before).numpy(),
            "realized": (z[seq, before + 1] - z[seq, before]).pow(2).sum(-1).numpy(),
            "entropy": trajs.entropies[seq, before + 1].numpy(),
        }
    )


def score_arms(arms: dict[str, Trajectories]) -> pd.DataFrame:
    """Measure quality, diversity and repetition of several sampling runs, per prompt.

    Args:
        arms: Name → generated trajectories with their untempered log-probabilities (recorded
            by :func:`sdelm.extract`); every run has the same prompts.

    Returns:
        One row per (arm, prompt_id): ``logprob`` (mean untempered log-probability per token,
        nats, averaged over the prompt's samples), ``distinct``
        (share of distinct token bigrams pooled over the samples), ``repetition`` (share of
        repeated trigrams within a sample), ``temperature`` (mean temperature the tokens were
        drawn at) and ``length`` (tokens), each averaged over samples.

    Raises:
        ValueError: If a run lacks the untempered log-probability of a token (trajectories
            saved before sdelm recorded it).

    """
    frames = []
    for name, trajs in arms.items():
        if torch.isnan(trajs.untempered_logprobs[trajs.mask]).any():
            raise ValueError(
                f"Run {name!r} lacks the untempered log-probabilities of some tokens (saved "
                "before sdelm recorded them); read them first: dataclasses.replace(trajs, "
                "untempered_logprobs=sdelm.untempered(lm, trajs))."
            )
        per_sequence = pd.DataFrame(
            {
                "prompt_id": trajs.rows["prompt_id"],
                "logprob": sequence_mean(trajs.untempered_logprobs, trajs.mask),
                "repetition": repetition(trajs.tokens, trajs.mask),
                "temperature": sequence_mean(trajs.temperatures, trajs.mask),
                "length": trajs.mask.sum(1).numpy(),
            }
        )
        per_prompt = per_sequence.groupby("prompt_id", sort=False).mean()
        per_prompt["distinct"] = distinct(trajs.tokens, trajs.mask, list(trajs.rows["prompt_id"]))
        frames.append(per_prompt.reset_index().assign(arm=name))
    columns = ["arm", "prompt_id", "logprob", "distinct", "repetition", "temperature", "length"]
    return pd.concat(frames, ignore_index=True)[columns]


def frontier_gain(
    per_prompt: pd.DataFrame,
    arm: str,
    constant: Sequence[str],
    *,
    quality: str = "logprob",
    diversity: str = "distinct",
    seed: int = 0,
) -> dict[str, float]:
    """Return the diversity an arm gains over constant temperature at the same quality.

    The constant-temperature arms trace a frontier of (mean quality, mean diversity) over
    prompts; linear interpolation gives the diversity plain sampling reaches at the arm's
    quality (the end segments extend it beyond the constant runs' range). Prompts are
    resampled jointly for all arms (a paired bootstrap).

    Args:
        per_prompt: One row per (arm, prompt_id) with the ``quality`` and ``diversity``
            columns; every arm has the same prompts.
        arm: The arm to evaluate.
        constant: Constant-temperature arms, at least two.
        quality: Column where higher is better (e.g. mean log-probability at temperature 1).
        diversity: Column where higher is more diverse.
        seed: Seed of the bootstrap.

    Returns:
        :func:`sdelm.stats.cluster_bootstrap`'s fields for the gain (arm diversity − frontier
        diversity at the arm's quality; null 0), and ``inside``: 1.0 where the arm's mean
        quality lies within the constant runs' range (no extrapolation), else 0.0.

    Raises:
        ValueError: If fewer than two constant arms are given or the arms' prompts differ.

    """
    if len(constant) < 2:
        raise ValueError("frontier_gain needs at least two constant-temperature arms.")
    arms = [arm, *constant]
    quality_table = per_prompt.pivot(index="prompt_id", columns="arm", values=quality)[arms]
    diversity_table = per_prompt.pivot(index="prompt_id", columns="arm", values=diversity)[arms]
    if quality_table.isna().any().any():
        raise ValueError("Every arm needs a value for every prompt; the arms' prompts differ.")
    columns = [f"q{i}" for i in range(len(arms))], [f"d{i}" for i in range(len(arms))]
    wide = pd.DataFrame(
        np.hstack([quality_table.to_numpy(), diversity_table.to_numpy()]),
        columns=[*columns[0], *columns[1]],
    ).assign(prompt_id=quality_table.index)

    def frontier(frame: pd.DataFrame) -> tuple[float, bool]:
        mean_q = frame[columns[0]].to_numpy().mean(0)
        mean_d = frame[columns[1]].to_numpy().mean(0)
        order = np.argsort(mean_q[1:])
        xs, ys = mean_q[1:][order], mean_d[1:][order]
        inside = bool(xs[0] <= mean_q[0] <= xs[-1])
        # np.interp clamps outside the range; extrapolate with the end segments instead.
        i = int(np.clip(np.searchsorted(xs, mean_q[0]) - 1, 0, len(xs) - 2))
        slope = (ys[i + 1] - ys[i]) / (xs[i + 1] - xs[i])
        return float(mean_d[0] - (ys[i] + slope * (mean_q[0] - xs[i]))), inside

    measured = cluster_bootstrap(wide, lambda frame: frontier(frame)[0], seed=seed)
    return {**measured, "inside": float(frontier(wide)[1])}
