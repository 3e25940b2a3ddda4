"""The book's headline findings, measured the same way on any language model.

Each finding is an effect: an estimate, a cluster-bootstrap interval (:mod:`sdelm.stats`) that
resamples prompts (pieces of human text for layer time), a null value and the direction found
on SmolLM2 in the chapters that introduce it. :func:`findings` measures all of them from one
model's data, so that two models are compared by the same code on the same prompts.

The data of one model: generated trajectories of several temperatures
(:func:`sdelm.collect_trajectories`), layer-time trajectories of human text
(:func:`sdelm.collect_layer_trajectories`) and branches (:func:`sdelm.collect_branches`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import stats as scipy_stats

from sdelm.analysis.branching import measured
from sdelm.analysis.layer_time import growth_rate, residual_frame
from sdelm.branches import Branches
from sdelm.data import PreparedData, SDEData, prepare, project
from sdelm.energy import energy_score
from sdelm.fit import fit, sequence_nll
from sdelm.models import NeuralSDE, SDEModel
from sdelm.models.linear import OrnsteinUhlenbeck, VectorAutoregression
from sdelm.simulate import simulate
from sdelm.stats import cluster_bootstrap, log_ratios
from sdelm.trajectories import Trajectories

__all__ = [
    "FINDINGS",
    "displacement_frame",
    "findings",
    "fit_drawn",
    "held_out_scores",
    "map_radius_frame",
    "step_frame",
]

#: Each finding: what is measured (and the chapter that introduces it), the side of the null
#: expected before the second model was run (the paper's SDE reading where it predicts one,
#: else what SmolLM2 showed in that chapter), and the null.
FINDINGS: dict[str, tuple[str, str, float]] = {
    "nll-neural-minus-ou": (
        "held-out NLL of the neural SDE minus OU / VAR(1), nats/dim (fitting)",
        "less",
        0.0,
    ),
    "energy-neural-minus-ou": (
        "energy score of 16 simulated paths per held-out sequence, neural SDE minus OU "
        "(simulation)",
        "less",
        0.0,
    ),
    "nll-neural-minus-var": (
        "held-out NLL of the neural SDE minus the VAR(1) with a full noise covariance, "
        "nats/dim (fitting)",
        "less",
        0.0,
    ),
    "nll-correlated-minus-var": (
        "held-out NLL of the neural SDE with correlated noise minus the VAR(1) with a full "
        "noise covariance, nats/dim (fitting)",
        "less",
        0.0,
    ),
    "energy-neural-minus-var": (
        "energy score of 16 simulated paths per held-out sequence, neural SDE minus the "
        "VAR(1) with a full noise covariance (simulation)",
        "less",
        0.0,
    ),
    "map-spectral-radius": (
        "largest |eigenvalue| of the fitted VAR(1) map I + A (phase space)",
        "less",
        1.0,
    ),
    "increment-vs-temperature": (
        "median over prompts of the log ratio of mean |ΔZ|² at the highest and the lowest "
        "temperature (trajectories)",
        "greater",
        0.0,
    ),
    "increment-vs-entropy": (
        "Spearman ρ of |ΔZ_k|² and the entropy of the token drawn at k + 1 (drift and diffusion)",
        "greater",
        0.0,
    ),
    "msd-exponent": (
        "exponent of the mean squared displacement over lags 1–8 (properties)",
        "less",
        1.0,
    ),
    "noise-vs-depth": (
        "λ of the held-out layer-time residual variance α e^{λt}, per layer (layer time)",
        "greater",
        0.0,
    ),
    "branch-noise-vs-temperature": (
        "median over prompts of the log ratio of the branching noise at the highest and the "
        "lowest temperature (branching)",
        "greater",
        0.0,
    ),
    "branch-noise-vs-entropy": (
        "Spearman ρ of the branching noise and the entropy, middle temperature (branching)",
        "greater",
        0.0,
    ),
}
#: Lags of the mean squared displacement.
MSD_LAGS = tuple(range(1, 9))


def _fit_model(model: SDEModel, data: PreparedData, **fit_args: Any) -> SDEModel:
    """Fit ``model`` to ``data`` (:func:`sdelm.fit`) and return it."""
    return fit(model, data, **fit_args).model


def held_out_scores(
    trajs: Trajectories,
    *,
    dim: int,
    n_folds: int,
    n_paths: int = 16,
    fits: int = 1,
    seed: int = 0,
    device: str = "auto",
    fit_model: Callable[..., SDEModel] = _fit_model,
) -> pd.DataFrame:
    """Score every sequence by the neural SDEs and the linear baselines fitted without its prompt.

    K-fold cross-validation by prompt: the prompts are shuffled (by ``seed``) into
    ``n_folds`` folds; for each fold the models are fitted on the other prompts (about 80%
    train, 10% validation for early stopping and 10% left unused, at least one prompt each; the
    projection is fitted on the training prompts) and score the fold's sequences: one step at
    a time (the NLL) and simulated from the sequence's first state (the energy score). The
    models: the neural SDE (diagonal noise), fitted ``fits`` times per fold from seeds
    ``seed``, ``seed + 1``, ... (its scores are the mean over its fits, and each fit's are kept
    for an interval that holds the randomness of fitting: :func:`fit_drawn`); the neural SDE
    with correlated noise (one fit, from ``seed``); OU / VAR(1) and the VAR(1) with a full
    noise covariance (closed form).

    Args:
        trajs: Trajectories of several prompts.
        dim: PCA dimension.
        n_folds: Number of folds (at least 2).
        n_paths: Simulated paths per held-out sequence.
        fits: Fits of the neural SDE per fold (at least 1).
        seed: Seed of the folds, the fits and the simulations.
        device: Where the neural SDEs are fitted.
        fit_model: Called as ``fit_model(model, data, seed=, device=, progress=)`` to fit each
            neural SDE; returns the fitted model. :func:`sdelm.cached_fit` keeps the fits on
            disk; the default fits afresh.

    Returns:
        One row per sequence with transitions: ``fold``, ``prompt_id``; for each score
        (``nll``: mean NLL per transition, nats/dim; ``energy``: :func:`energy_score`) and
        model (``neural``, ``correlated``, ``ou``, ``var``) a column ``{score}_{model}``;
        ``{score}_neural_{k}`` for each fit k; and ``{score}_difference``, neural minus OU.

    Raises:
        ValueError: If ``n_folds`` is not an integer in 2..number of prompts, or ``fits`` is
            below 1.

    """
    ids = np.random.default_rng(seed).permutation(np.sort(trajs.rows["prompt_id"].unique()))
    if isinstance(n_folds, bool) or not isinstance(n_folds, int) or not 2 <= n_folds <= len(ids):
        raise ValueError(f"n_folds must be an integer in 2..{len(ids)}, got {n_folds!r}.")
    if fits < 1:
        raise ValueError(f"fits must be at least 1, got {fits}.")
    frames = []
    for fold, test_ids in enumerate(np.array_split(ids, n_folds)):
        rest = [i for i in ids.tolist() if i not in set(test_ids.tolist())]
        small = max(0.1, 1.5 / len(rest))  # at least one validation prompt
        fractions = (1 - 2 * small, small, small)
        data = prepare(trajs.where(prompt_id=rest), dim=dim, split=fractions, seed=seed)
        test = project(trajs.where(prompt_id=test_ids.tolist()), data.projection)
        scale = float(data.train.states.shape[1])
        neural = {
            f"neural_{k}": NeuralSDE(dim, time_scale=scale, seed=seed + k) for k in range(fits)
        }
        neural["correlated"] = NeuralSDE(dim, time_scale=scale, correlated=True, seed=seed)
        models = {
            name: fit_model(model, data, seed=model.config["seed"], device=device, progress=False)
            for name, model in neural.items()
        }
        models["ou"] = OrnsteinUhlenbeck(dim).fit_least_squares(data.train)
        models["var"] = VectorAutoregression(dim).fit_least_squares(data.train)
        frame = pd.DataFrame({"fold": fold, "prompt_id": test.rows["prompt_id"].to_numpy()})
        steps = test.states.shape[1] - 1
        for name, model in models.items():
            frame[f"nll_{name}"] = sequence_nll(model, test).numpy()
            paths = simulate(model, test.states[:, 0], steps, n_paths, dt=test.dt, seed=seed)
            paths = paths.view(len(test), n_paths, steps + 1, dim)
            frame[f"energy_{name}"] = energy_score(paths, test.states, test.mask).numpy()
        frames.append(frame.dropna())
    table = pd.concat(frames, ignore_index=True)
    for score in ("nll", "energy"):
        table[f"{score}_neural"] = table[[f"{score}_neural_{k}" for k in range(fits)]].mean(1)
        table[f"{score}_difference"] = table[f"{score}_neural"] - table[f"{score}_ou"]
    return table


def fit_drawn(
    scores: pd.DataFrame, score: str, baseline: str = "ou", *, seed: int = 0
) -> Callable[[pd.DataFrame], float]:
    """Return the mean of the neural SDE's score minus a baseline's, fits drawn in resamples.

    For :func:`sdelm.stats.cluster_bootstrap` of :func:`held_out_scores`: on ``scores``
    itself, the mean over sequences of the mean over fits; on a resample of prompts, each fold
    takes one of its fits, drawn at random, so that the interval holds which fit a fold got as
    well as which prompts it held.

    Args:
        scores: :func:`held_out_scores`' table (the frame the bootstrap resamples).
        score: ``"nll"`` or ``"energy"``.
        baseline: ``"ou"`` or ``"var"``.
        seed: Seed of the draws of fits.

    Returns:
        The statistic.

    """
    columns = sorted(c for c in scores if c.startswith(f"{score}_neural_"))
    rng = np.random.default_rng(seed)
    n_folds = int(scores["fold"].max()) + 1

    def statistic(frame: pd.DataFrame) -> float:
        if frame is scores:
            return float((frame[f"{score}_neural"] - frame[f"{score}_{baseline}"]).mean())
        chosen = rng.integers(len(columns), size=n_folds)[frame["fold"].to_numpy()]
        each = frame[columns].to_numpy() - frame[[f"{score}_{baseline}"]].to_numpy()
        return float(each[np.arange(len(frame)), chosen].mean())

    return statistic


def step_frame(data: SDEData) -> pd.DataFrame:
    """One row per valid step k → k + 1: its squared size and the entropy of its token.

    Args:
        data: Projected trajectories with recorded entropies (generated text).

    Returns:
        ``prompt_id``, ``temperature``, ``step`` (k), ``increment_sq`` (the squared norm of
        Z_{k+1} − Z_k) and ``next_entropy`` (the entropy of the distribution token y_{k+1} was
        drawn from, which the step reads).

    Raises:
        ValueError: If the data carry no entropies.

    """
    if data.entropies is None:
        raise ValueError("step_frame needs recorded entropies (generated trajectories).")
    valid = data.mask[:, :-1] & data.mask[:, 1:]
    sequence, step = valid.nonzero(as_tuple=True)
    increments = (data.states[:, 1:] - data.states[:, :-1]).pow(2).sum(-1)
    rows = data.rows.iloc[sequence.numpy()]
    return pd.DataFrame(
        {
            "prompt_id": rows["prompt_id"].to_numpy(),
            "temperature": rows["temperature"].to_numpy(),
            "step": step.numpy(),
            "increment_sq": increments[sequence, step].numpy(),
            "next_entropy": data.entropies[:, 1:][sequence, step].numpy(),
        }
    )


def displacement_frame(data: SDEData, lags: Sequence[int] = MSD_LAGS) -> pd.DataFrame:
    """Mean squared displacement of each sequence at each lag.

    Args:
        data: Projected trajectories.
        lags: Lags in steps.

    Returns:
        One row per (sequence, lag) with at least one valid pair: ``prompt_id``, ``lag``,
        ``msd`` (the mean squared norm of Z_{k+lag} − Z_k over the sequence's valid k).

    """
    frames = []
    for lag in lags:
        valid = data.mask[:, :-lag] & data.mask[:, lag:]
        squared = (data.states[:, lag:] - data.states[:, :-lag]).pow(2).sum(-1)
        count = valid.sum(1)
        keep = count > 0
        msd = (squared * valid).sum(1)[keep] / count[keep]
        frames.append(
            pd.DataFrame(
                {
                    "prompt_id": data.rows["prompt_id"].to_numpy()[keep.numpy()],
                    "lag": lag,
                    "msd": msd.numpy(),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def _msd_exponent(frame: pd.DataFrame) -> float:
    means = frame.groupby("lag")["msd"].mean()
    return float(np.polyfit(np.log(means.index.to_numpy(float)), np.log(means.to_numpy()), 1)[0])


def map_radius_frame(data: SDEData) -> pd.DataFrame:
    """Return one row per sequence: the data of the VAR(1) map's radius, for resampling.

    Args:
        data: Projected trajectories.

    Returns:
        ``prompt_id`` and ``sequence`` (the row of ``data``); the statistic refits the map on
        the sequences of a resample (:func:`_map_radius`).

    """
    return pd.DataFrame(
        {"prompt_id": data.rows["prompt_id"].to_numpy(), "sequence": np.arange(len(data))}
    )


def _map_radius(data: SDEData) -> Callable[[pd.DataFrame], float]:
    def radius(frame: pd.DataFrame) -> float:
        index = torch.from_numpy(frame["sequence"].to_numpy().copy())
        part = SDEData(data.states[index], data.mask[index], data.dt, data.rows.iloc[index])
        ou = OrnsteinUhlenbeck(data.dim).fit_least_squares(part)
        step_map = torch.eye(data.dim) + ou.matrix.detach().double() * data.dt
        return float(torch.linalg.eigvals(step_map).abs().max())

    return radius


def _spearman(x: str, y: str) -> Callable[[pd.DataFrame], float]:
    return lambda frame: float(scipy_stats.spearmanr(frame[x], frame[y]).statistic)


def _mean_difference(x: str, y: str) -> Callable[[pd.DataFrame], float]:
    return lambda frame: float((frame[x] - frame[y]).mean())


def _median_ratio(frame: pd.DataFrame) -> float:
    return float(frame["log_ratio"].median())


def findings(
    trajs: Trajectories,
    layer_trajs: Trajectories,
    branches: Branches,
    *,
    dim: int = 16,
    n_folds: int = 4,
    fits: int = 2,
    seed: int = 0,
    device: str = "auto",
    fit_model: Callable[..., SDEModel] = _fit_model,
) -> pd.DataFrame:
    """Measure every finding of :data:`FINDINGS` on one model's data.

    Args:
        trajs: Generated trajectories at two or more temperatures (no human rows needed).
        layer_trajs: Layer-time trajectories of human text.
        branches: Branches of prefixes of unseen prompts at three or more temperatures.
        dim: PCA dimension.
        n_folds: Folds of the cross-validation by prompt (:func:`neural_and_ou_scores`) and of
            the cross-fitting by piece of the layer-time maps.
        fits: Fits of the neural SDE per fold; both comparisons with OU average over them,
            and the simulated one holds the randomness of fitting in its interval
            (:func:`fit_drawn`). The one-step NLL does not: where one fit extrapolates badly
            on one prompt (Gemma 3), its resamples split into two far-apart groups, by the
            fit drawn, which :func:`sdelm.stats.cluster_bootstrap`'s centring on the median
            misplaces.
        seed: Seed of splits, fits and bootstraps.
        device: Where the neural SDE is fitted.
        fit_model: How each neural SDE is fitted (:func:`held_out_scores`).

    Returns:
        One row per finding (indexed by name): ``what``, ``expected``, ``null``,
        ``estimate``, ``low``, ``high``, ``p_value``, ``n_clusters`` and ``unit``.

    """
    generated = trajs.where(source="generated")
    prepared = prepare(generated, dim=dim, split=(0.6, 0.15, 0.25), seed=seed)
    everything = SDEData.concat([prepared.train, prepared.val, prepared.test], name="all")
    steps = step_frame(everything)
    middle = np.sort(branches.temperatures)[len(branches.temperatures) // 2]
    seen = measured(branches, prepared.projection, seed=seed)
    scores = held_out_scores(
        generated,
        dim=dim,
        n_folds=n_folds,
        fits=fits,
        seed=seed,
        device=device,
        fit_model=fit_model,
    )
    tests = {
        "nll-neural-minus-ou": (scores, lambda f: float(f["nll_difference"].mean())),
        "energy-neural-minus-ou": (scores, fit_drawn(scores, "energy", seed=seed)),
        "nll-neural-minus-var": (scores, _mean_difference("nll_neural", "nll_var")),
        "nll-correlated-minus-var": (scores, _mean_difference("nll_correlated", "nll_var")),
        "energy-neural-minus-var": (scores, fit_drawn(scores, "energy", "var", seed=seed)),
        "map-spectral-radius": (map_radius_frame(everything), _map_radius(everything)),
        "increment-vs-temperature": (log_ratios(steps, "increment_sq"), _median_ratio),
        "increment-vs-entropy": (steps, _spearman("increment_sq", "next_entropy")),
        "msd-exponent": (displacement_frame(everything), _msd_exponent),
        "noise-vs-depth": (
            residual_frame(layer_trajs, dim=dim, seed=seed, folds=n_folds),
            growth_rate,
        ),
        "branch-noise-vs-temperature": (log_ratios(seen, "noise"), _median_ratio),
        "branch-noise-vs-entropy": (
            seen[seen["temperature"] == middle],
            _spearman("noise", "entropy"),
        ),
    }
    rows = {}
    for name, (frame, statistic) in tests.items():
        what, expected, null = FINDINGS[name]
        result = cluster_bootstrap(frame, statistic, null=null, seed=seed)
        unit = "pieces" if name == "noise-vs-depth" else "prompts"
        rows[name] = {"what": what, "expected": expected, "null": null, **result, "unit": unit}
    return pd.DataFrame.from_dict(rows, orient="index")
