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
from sdelm.stats import cluster_bootstrap
from sdelm.trajectories import Trajectories

__all__ = [
    "cluster_auc",
    "detection_scores",
    "predict_temperature",
    "repetition",
    "sequence_mean",
    "sequence_scores",
    "temperature_errors",
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
        log-probability of its tokens under the distribution they were drawn from, nats),
        ``untempered_logprob`` (the same under the model at temperature 1: the yardstick that
        does not know the temperature), ``entropy`` (mean next-token entropy) and ``length``.

    """
    return (
        trajs.rows[KEYS]
        .reset_index(drop=True)
        .assign(
            logprob=sequence_mean(trajs.logprobs, trajs.mask),
            untempered_logprob=sequence_mean(trajs.untempered_logprobs, trajs.mask),
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


def _auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Mann–Whitney probability that a positive outscores a negative (ties count half).

    From the rank sum of the positives (mid-ranks for ties), without the test's p-value.
    """
    ranks = stats.rankdata(np.concatenate([positive, negative]))
    n_pos, n_neg = len(positive), len(negative)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def detection_scores(
    model: SDEModel,
    generated: SDEData,
    generated_trajs: Trajectories,
    human: SDEData,
    human_trajs: Trajectories,
) -> pd.DataFrame:
    """Per-sequence detector scores of generated and human text under one fitted SDE.

    Args:
        model: A fitted SDE.
        generated: Held-out generated sequences, projected.
        generated_trajs: Trajectories that hold those sequences (matched on :data:`KEYS`).
        human: Human passages projected with the same projection.
        human_trajs: Their trajectories (as read: alone, or after a prompt).

    Returns:
        One row per sequence: :data:`KEYS`, ``human`` (bool), the :func:`sequence_scores`
        columns and ``perplexity`` (minus the mean untempered log-probability of its tokens).
        ``prompt_id`` is the unit to resample: a prompt for generated text, a passage for
        human text.

    """
    frames = []
    for data, trajs in ((generated, generated_trajs), (human, human_trajs)):
        tokens = token_scores(trajs)[[*KEYS, "untempered_logprob"]]
        frames.append(sequence_scores(model, data).merge(tokens, on=KEYS, validate="1:1"))
    scores = pd.concat(frames, ignore_index=True)
    scores["perplexity"] = -scores.pop("untempered_logprob")
    scores["human"] = scores["source"] == "human"
    return scores


def cluster_auc(
    scores: pd.DataFrame,
    column: str,
    *,
    label: str = "human",
    minus: str | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """ROC AUC of a score for telling two kinds of sequence apart, resampling whole prompts.

    Args:
        scores: One row per sequence with a ``prompt_id`` (the unit resampled: a prompt, or a
            passage for human text), a boolean ``label`` column and the score columns, e.g.
            from :func:`detection_scores`.
        column: The score; higher is read as more likely ``label``.
        label: Boolean column that marks the positive class.
        minus: Another score column: the effect is then AUC(column) − AUC(minus) on the same
            resamples (a paired difference, null 0).
        seed: Seed of the bootstrap.

    Returns:
        :func:`sdelm.stats.cluster_bootstrap`'s fields against chance (0.5), or against no
        difference. The AUC is the Mann–Whitney probability that a positive outscores a
        negative (ties count half).

    """

    def area(frame: pd.DataFrame, name: str) -> float:
        positive = frame[label].to_numpy(bool)
        values = frame[name].to_numpy(float)
        return float(_auc(values[positive], values[~positive]))

    if minus is None:
        return cluster_bootstrap(scores, lambda f: area(f, column), null=0.5, seed=seed)
    return cluster_bootstrap(scores, lambda f: area(f, column) - area(f, minus), seed=seed)


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
        prompts) with ``low``/``high`` (a bootstrap over test prompts) and ``r_squared`` (of the
        training fit).

    """
    errors, r_squared = temperature_errors(train, test, features)
    interval = mean_interval(errors.to_numpy(), seed=seed)
    return {
        "mae": interval["mean"],
        "low": interval["low"],
        "high": interval["high"],
        "r_squared": r_squared,
    }


def temperature_errors(
    train: pd.DataFrame, test: pd.DataFrame, features: Sequence[str]
) -> tuple[pd.Series, float]:
    """Fit the temperature by least squares on features; return the held-out errors.

    Args:
        train: Sequences to fit on (with ``temperature`` and the features).
        test: Held-out sequences (other prompts).
        features: Columns used; an empty list predicts the training mean.

    Returns:
        The mean absolute error of each test prompt's sequences (indexed by ``prompt_id``),
        and the R² of the training fit.

    """
    design = sm.add_constant(train[list(features)], has_constant="add")
    result = sm.OLS(train["temperature"], design).fit()
    predicted = result.predict(sm.add_constant(test[list(features)], has_constant="add"))
    errors = (predicted - test["temperature"]).abs().groupby(test["prompt_id"]).mean()
    return errors, float(result.rsquared)
