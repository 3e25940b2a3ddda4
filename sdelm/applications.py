"""Putting a fitted SDE to work on single sequences: scores, temperature, detection, repetition.

Every function works per sequence, because the questions are about texts: which temperature
produced this one, was it written by a person, is it looping? :func:`sequence_scores` turns a
fitted SDE and a split into per-sequence statistics; :func:`token_scores` gives the baseline
statistics from the language model's token probabilities; the other functions evaluate a score
on held-out sequences with an interval.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import statsmodels.api as sm
import torch
from scipy import stats

from sdelm.data import SDEData
from sdelm.describe import mean_interval
from sdelm.models import SDEModel
from sdelm.trajectories import Trajectories

__all__ = [
    "auc",
    "predict_temperature",
    "repetition",
    "sequence_mean",
    "sequence_scores",
    "token_scores",
]

KEYS = ["prompt_id", "source", "temperature", "sample"]


@torch.no_grad()
def sequence_scores(model: SDEModel, data: SDEData) -> pd.DataFrame:
    """Per-sequence statistics of a split under a fitted SDE.

    Args:
        model: A fitted SDE of ``data.dim``.
        data: A split.

    Returns:
        One row per sequence with ``prompt_id, source, temperature, sample`` and the means over
        its transitions of ``nll`` (Euler–Maruyama NLL, nats per dimension), ``log_diffusion``
        (log tr σσᵀ), ``residual_scale`` (``|ΔX − μΔt|² / (tr σσᵀ Δt)``, 1 when the noise is as
        the model expects) and ``step_size`` (``|ΔX|²``); and ``mean_distance``, the length of
        the sequence's mean state (in prepared coordinates: its distance from the centre of
        the training states).

    Raises:
        ValueError: If a sequence has no transition.

    """
    both = data.mask[:, :-1] & data.mask[:, 1:]
    if not both.any(dim=1).all():
        raise ValueError("Every sequence needs at least two valid steps to be scored.")
    seq, step = both.nonzero(as_tuple=True)
    x = data.states[seq, step]
    dx = data.states[seq, step + 1] - x
    t = data.times[step]
    variance = model.diffusion(x, t).pow(2) * data.dt
    residual = dx - model.drift(x, t) * data.dt
    per_step = {
        "nll": (0.5 * (residual.pow(2) / variance + variance.log() + np.log(2 * np.pi))).mean(1),
        "log_diffusion": (variance.sum(1) / data.dt).log(),
        "residual_scale": residual.pow(2).sum(1) / variance.sum(1),
        "step_size": dx.pow(2).sum(1),
    }
    frame = pd.DataFrame({k: v.numpy() for k, v in per_step.items()}).assign(sequence=seq.numpy())
    means = frame.groupby("sequence").mean()
    weights = data.mask.float().unsqueeze(-1)
    centres = (data.states * weights).sum(1) / weights.sum(1).clamp_min(1)
    means["mean_distance"] = centres.norm(dim=1).numpy()[means.index]
    rows = data.rows[KEYS].reset_index(drop=True)
    return rows.join(means).reset_index(names="sequence")


def token_scores(trajs: Trajectories) -> pd.DataFrame:
    """Per-sequence token statistics, the baselines that need no SDE.

    Returns:
        One row per sequence with ``prompt_id, source, temperature, sample``, ``logprob`` (mean
        log-probability of its tokens, nats), ``entropy`` (mean next-token entropy) and
        ``length``.

    """
    return (
        trajs.rows[KEYS]
        .reset_index(drop=True)
        .assign(
            logprob=sequence_mean(trajs.logprobs, trajs.mask),
            entropy=sequence_mean(trajs.entropies, trajs.mask),
            length=trajs.mask.sum(1).numpy(),
        )
    )


def sequence_mean(values: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """Mean of each sequence's valid steps.

    Args:
        values: Float tensor of size (n_sequences, n_steps) (NaN allowed where masked out).
        mask: Bool tensor of size (n_sequences, n_steps).

    Returns:
        Array of size (n_sequences,); 0 for a sequence without valid steps.

    """
    total = torch.where(mask, values, torch.zeros(())).sum(1)
    return (total / mask.sum(1).clamp_min(1)).numpy()


def repetition(tokens: torch.Tensor, mask: torch.Tensor, *, n: int = 3) -> np.ndarray:
    """Share of each sequence's token n-grams that repeat an earlier n-gram of the sequence.

    Args:
        tokens: Long tensor of size (n_sequences, n_steps).
        mask: Bool tensor of size (n_sequences, n_steps).
        n: n-gram length.

    Returns:
        Array of size (n_sequences,): 0 for no repeated n-gram, near 1 for a loop; NaN when a
        sequence is shorter than ``n``.

    """
    shares = []
    for row, keep in zip(tokens.tolist(), mask.tolist(), strict=True):
        ids = [token for token, valid in zip(row, keep, strict=True) if valid]
        grams = [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]
        shares.append(1 - len(set(grams)) / len(grams) if grams else np.nan)
    return np.asarray(shares)


def auc(
    positive: Sequence[float] | np.ndarray,
    negative: Sequence[float] | np.ndarray,
    *,
    seed: int = 0,
) -> dict[str, float]:
    """ROC AUC of a score (higher means positive) with a bootstrap 95% interval.

    Args:
        positive: Scores of the positive class (e.g. human texts).
        negative: Scores of the negative class.
        seed: Seed of the bootstrap.

    Returns:
        ``auc`` (the Mann–Whitney probability that a positive outscores a negative), ``low``,
        ``high``.

    """
    positive, negative = np.asarray(positive, float), np.asarray(negative, float)

    def statistic(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
        return stats.mannwhitneyu(a, b, axis=axis).statistic / (a.shape[axis] * b.shape[axis])

    result = stats.bootstrap(
        (positive, negative),
        statistic,
        confidence_level=0.95,
        n_resamples=2000,
        method="percentile",
        random_state=np.random.default_rng(seed),
    )
    value = float(statistic(positive, negative))
    interval = result.confidence_interval
    return {"auc": value, "low": float(interval.low), "high": float(interval.high)}


def predict_temperature(
    train: pd.DataFrame, test: pd.DataFrame, features: Sequence[str], *, seed: int = 0
) -> dict[str, float]:
    """Predict each sequence's sampling temperature by least squares on features.

    Args:
        train: Sequences to fit on (with ``temperature`` and the features).
        test: Held-out sequences (other prompts).
        features: Columns used; an empty list predicts the training mean (the null baseline).
        seed: Seed of the bootstrap over test prompts.

    Returns:
        ``mae`` (mean absolute error in temperature units, averaged per test prompt, then over
        prompts) with ``low``/``high`` (BCa bootstrap over test prompts) and ``r_squared`` (of
        the training fit).

    """
    design = sm.add_constant(train[list(features)], has_constant="add")
    result = sm.OLS(train["temperature"], design).fit()
    predicted = result.predict(sm.add_constant(test[list(features)], has_constant="add"))
    errors = (predicted - test["temperature"]).abs().groupby(test["prompt_id"]).mean()
    interval = mean_interval(errors.to_numpy(), seed=seed)
    return {
        "mae": interval["mean"],
        "low": interval["low"],
        "high": interval["high"],
        "r_squared": float(result.rsquared),
    }
