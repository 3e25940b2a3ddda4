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

from sdelm.data import PreparedData, SDEData, project
from sdelm.fit import transition_nll
from sdelm.models import SDEModel
from sdelm.stats import cluster_bootstrap, mean_interval
from sdelm.trajectories import Trajectories

__all__ = [
    "cluster_auc",
    "detection_scores",
    "held_out_scores",
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
    if model.correlation is None:
        nll = 0.5 * (residual.pow(2) / variance + variance.log() + np.log(2 * np.pi))
    else:  # the correlated density; its marginal variances serve the other columns
        _, residual_part, noise_part = transition_nll(model, x, t, dx, data.dt)
        nll = residual_part + noise_part
    per_step = {
        "nll": nll.mean(1),
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


def held_out_scores(
    models: Sequence[SDEModel],
    folds: Sequence[PreparedData],
    trajs: Trajectories | None = None,
) -> pd.DataFrame:
    """Per-sequence statistics of held-out sequences, each under the model fitted without it.

    Args:
        models: One fitted SDE per fold, fold ``i``'s fitted on ``folds[i].train``.
        folds: Prepared folds that hold out every prompt once (e.g.
            :func:`sdelm.book.setup.standard_folds`).
        trajs: Other trajectories of the same prompts (greedy runs of them, say), each row
            scored by the fold that holds its prompt out, in that fold's projection; default
            each fold's own test split.

    Returns:
        :func:`sequence_scores` of every held-out sequence, with ``fold``: no model scores
        a sequence of a prompt it was fitted on.

    Raises:
        ValueError: If ``models`` and ``folds`` differ in length, or no row of ``trajs`` is a
            prompt that a fold holds out.

    """
    if len(models) != len(folds):
        raise ValueError(f"{len(models)} models for {len(folds)} folds: fit one per fold.")
    frames = []
    for i, (model, fold) in enumerate(zip(models, folds, strict=True)):
        data = fold.test
        if trajs is not None:
            held = trajs.rows["prompt_id"].isin(fold.test.rows["prompt_id"]).to_numpy()
            if not held.any():
                continue
            data = project(trajs[held], fold.projection)
        frames.append(sequence_scores(model, data).assign(fold=i))
    if not frames:
        raise ValueError(
            "No prompt of the trajectories is held out by a fold: score runs of "
            "the folds' own prompts."
        )
    return pd.concat(frames, ignore_index=True)


def predict_temperature(
    scores: pd.DataFrame, features: Sequence[str], *, seed: int = 0
) -> dict[str, float]:
    """Predict each sequence's sampling temperature by least squares on features.

    Cross-validated over the folds of :func:`temperature_errors`.

    Args:
        scores: Held-out sequences with ``fold``, ``prompt_id``, ``temperature`` and the
            features (e.g. :func:`held_out_scores`).
        features: Columns used; an empty list predicts the training mean (the null baseline).
        seed: Seed of the bootstrap over prompts.

    Returns:
        ``mae`` (mean absolute error in temperature units, averaged per prompt, then over
        prompts) with ``low``/``high`` (a bootstrap over prompts) and ``r_squared`` (of the
        training fits, averaged over folds).

    """
    errors, r_squared = temperature_errors(scores, features)
    interval = mean_interval(errors.to_numpy(), seed=seed)
    return {
        "mae": interval["mean"],
        "low": interval["low"],
        "high": interval["high"],
        "r_squared": r_squared,
    }


def temperature_errors(scores: pd.DataFrame, features: Sequence[str]) -> tuple[pd.Series, float]:
    """Fit the temperature by least squares on features, fold by fold; the held-out errors.

    For each fold, the least-squares fit is made on the sequences of the other folds and
    read on the fold's own: every prompt's error comes from a fit that never saw it.

    Args:
        scores: Sequences with ``fold``, ``prompt_id``, ``temperature`` and the features
            (at least two folds).
        features: Columns used; an empty list predicts the training mean.

    Returns:
        The mean absolute error of each prompt's sequences (indexed by ``prompt_id``), and
        the R² of the training fits, averaged over folds.

    Raises:
        ValueError: If ``scores`` holds fewer than two folds.

    """
    names = sorted(scores["fold"].unique())
    if len(names) < 2:
        raise ValueError("Cross-validation needs sequences of at least two folds.")
    errors, r_squared = [], []
    for name in names:
        train, test = scores[scores["fold"] != name], scores[scores["fold"] == name]
        design = sm.add_constant(train[list(features)], has_constant="add")
        result = sm.OLS(train["temperature"], design).fit()
        predicted = result.predict(sm.add_constant(test[list(features)], has_constant="add"))
        errors.append((predicted - test["temperature"]).abs().groupby(test["prompt_id"]).mean())
        r_squared.append(float(result.rsquared))
    return pd.concat(errors), float(np.mean(r_squared))
