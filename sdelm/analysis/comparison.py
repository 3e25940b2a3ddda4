"""Comparing every model on held-out prompts, over seeds (chapter 3).

:func:`compare_models` prepares the data once per seed (the seed moves the prompt split, the
weight initialisation and the minibatch order), fits every model of :func:`standard_models`, and
returns one row per model and seed with its held-out test NLL. :func:`summarise` turns that into
the book's results table (mean ± sd over seeds, and the gap to the best baseline).
:func:`cross_validate` tests every prompt once (K-fold by prompt) and returns each prompt's
held-out NLL under every model, for paired comparisons resampled over prompts
(:func:`paired_gaps`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd

from sdelm.data import PreparedData, prepare
from sdelm.fit import fit, nll, sequence_nll
from sdelm.models import SDEModel
from sdelm.models.zoo import NEURAL, ZOO, Entry
from sdelm.stats import cluster_bootstrap
from sdelm.trajectories import Trajectories

__all__ = [
    "STANDARD",
    "ModelSpec",
    "compare_models",
    "cross_validate",
    "paired_gaps",
    "standard_models",
    "summarise",
]

#: (name, build(dim, seed, time_scale) -> model, fit arguments; ``"least_squares"`` fits the
#: linear models in closed form). ``time_scale`` is the number of steps per trajectory.
ModelSpec = tuple[str, Callable[[int, int, float], SDEModel], dict[str, Any]]
#: The models of :func:`standard_models`, by their names in :data:`sdelm.models.zoo.ZOO`.
STANDARD = (
    "random-walk",
    "brownian-drift",
    "ou",
    "var",
    "lines-of-thought-one-map",
    "neural-drift",
    "neural",
    "neural-correlated",
)


def standard_models(
    *, hidden: int = 128, depth: int = 2, paper_loss: bool = True, per_step_maps: bool = False
) -> list[ModelSpec]:
    """Return the book's model zoo: six baselines, two neural SDEs, a paper-loss variant.

    Args:
        hidden: Width of the neural networks.
        depth: Hidden layers of the neural networks.
        paper_loss: Include the neural SDE trained with the paper's loss.
        per_step_maps: Include the Lines-of-Thought model with one linear map per step
            (:class:`~sdelm.models.lines_of_thought.LayerLinear`).

    Returns:
        A list of (name, builder, fit overrides), named by :data:`sdelm.models.zoo.ZOO`'s
        labels.

    """
    keys = [*STANDARD, *["neural-paper-loss"] * paper_loss, *["lines-of-thought"] * per_step_maps]

    def spec(entry: Entry) -> ModelSpec:
        def build(dim: int, seed: int, time_scale: float) -> SDEModel:
            return entry.build(dim, seed, time_scale, hidden, depth)

        return entry.label, build, dict(entry.fit)

    return [spec(ZOO[key]) for key in keys]


def _fit_one(
    spec: ModelSpec, data: PreparedData, seed: int, time_scale: float, fit_kwargs: dict[str, Any]
) -> tuple[SDEModel, dict[str, Any]]:
    _, build, overrides = spec
    model = build(data.dim, seed, time_scale)
    overrides = dict(overrides)
    if overrides.pop("least_squares", False):
        model.fit_least_squares(data.train)
        return model, {"best_epoch": 0, "seconds": 0.0, "val_nll": nll(model, data.val)}
    result = fit(model, data, seed=seed, progress=False, **{**fit_kwargs, **overrides})
    return result.model, {
        "best_epoch": result.best_epoch,
        "seconds": result.seconds,
        "val_nll": result.best_val_nll,
    }


def compare_models(
    trajs: Trajectories,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    models: list[ModelSpec] | None = None,
    layer: int | None = None,
    dim: int | None = 16,
    split: Sequence[float] = (0.7, 0.15, 0.15),
    **fit_kwargs: Any,
) -> pd.DataFrame:
    """Fit every model for every seed and evaluate it on the held-out test prompts.

    Args:
        trajs: Trajectories.
        seeds: Seeds; each moves the split, the initialisation and the minibatch order.
        models: Model specifications; default :func:`standard_models`.
        layer: Layer to model; default the last recorded one.
        dim: PCA dimension.
        split: Fractions of prompts in train/validation/test.
        **fit_kwargs: Passed to :func:`sdelm.fit` (e.g. ``epochs``, ``device``).

    Returns:
        One row per model and seed: ``model, seed, test_nll, val_nll, best_epoch, seconds``.

    """
    models = standard_models() if models is None else models
    rows = []
    for seed in seeds:
        data = prepare(trajs, layer=layer, dim=dim, split=split, seed=seed)
        time_scale = float(data.train.states.shape[1])
        for spec in models:
            model, info = _fit_one(spec, data, seed, time_scale, fit_kwargs)
            rows.append(
                {"model": spec[0], "seed": seed, "test_nll": nll(model, data.test), **info}
            )
    return pd.DataFrame(rows)


def summarise(results: pd.DataFrame, reference: str = NEURAL) -> pd.DataFrame:
    """Mean ± sd of the test NLL per model, sorted, with each model's gap to ``reference``.

    Args:
        results: A table from :func:`compare_models`.
        reference: The model the others are compared with.

    Returns:
        One row per model: ``mean``, ``sd``, ``gap`` (mean − reference mean, nats/dim/step;
        positive means worse than the reference) and ``wins`` (seeds where the reference is
        better), sorted by mean.

    """
    table = results.groupby("model")["test_nll"].agg(["mean", "std"]).rename(columns={"std": "sd"})
    per_seed = results.pivot(index="seed", columns="model", values="test_nll")
    table["gap"] = table["mean"] - table.loc[reference, "mean"]
    table["wins"] = [int((per_seed[reference] < per_seed[m]).sum()) for m in table.index]
    return table.sort_values("mean")


def cross_validate(
    trajs: Trajectories,
    *,
    models: list[ModelSpec] | None = None,
    folds: int = 5,
    layer: int | None = None,
    dim: int | None = 16,
    split: Sequence[float] = (0.85, 0.15, 0.0),
    seed: int = 0,
    **fit_kwargs: Any,
) -> pd.DataFrame:
    """K-fold cross-validation by prompt: every prompt is held out once, from every model.

    Each fold has its own projection (PCA on its training prompts) and its own fits; a
    prompt's NLLs under different models share the fold, so their differences are paired.

    Args:
        trajs: Trajectories.
        models: Model specifications; default :func:`standard_models`.
        folds: Number of folds ``k`` (at least 2).
        layer: Layer to model; default the last recorded one.
        dim: PCA dimension.
        split: Train and validation shares of the prompts outside the test fold (the third
            entry is not used; see :func:`sdelm.prepare`'s ``fold``).
        seed: Seed of the prompt shuffle, the initialisation and the minibatch order.
        **fit_kwargs: Passed to :func:`sdelm.fit` (e.g. ``epochs``, ``device``).

    Returns:
        One row per model, fold and held-out prompt: ``model, fold, prompt_id, nll`` (mean over
        the prompt's transitions and dimensions, nats per dimension per step) and
        ``transitions``.

    """
    models = standard_models() if models is None else models
    rows = []
    for index in range(folds):
        data = prepare(trajs, layer=layer, dim=dim, split=split, seed=seed, fold=(index, folds))
        time_scale = float(data.train.states.shape[1])
        transitions = (data.test.mask[:, :-1] & data.test.mask[:, 1:]).sum(1).numpy()
        prompts = data.test.rows["prompt_id"].to_numpy()
        for spec in models:
            model, _ = _fit_one(spec, data, seed, time_scale, fit_kwargs)
            per_sequence = (
                pd.DataFrame(
                    {
                        "prompt_id": prompts,
                        "total": sequence_nll(model, data.test).nan_to_num().numpy() * transitions,
                        "transitions": transitions,
                    }
                )
                .groupby("prompt_id", sort=True)[["total", "transitions"]]
                .sum()
            )
            rows.append(
                per_sequence.assign(
                    nll=per_sequence["total"] / per_sequence["transitions"],
                    model=spec[0],
                    fold=index,
                ).reset_index()
            )
    columns = ["model", "fold", "prompt_id", "nll", "transitions"]
    return pd.concat(rows, ignore_index=True)[columns]


def paired_gaps(results: pd.DataFrame, reference: str = NEURAL, *, seed: int = 0) -> pd.DataFrame:
    """Each model's held-out NLL minus the reference's, per prompt, resampled over prompts.

    Args:
        results: From :func:`cross_validate`.
        reference: The model the others are compared with.
        seed: Seed of the bootstrap.

    Returns:
        One row per other model: :func:`sdelm.stats.cluster_bootstrap`'s fields for the mean
        over prompts of (reference NLL − model NLL), in nats per dimension per step: negative
        where the reference fits the held-out prompts better.

    """
    table = results.pivot(index="prompt_id", columns="model", values="nll").reset_index()
    return pd.DataFrame(
        {
            model: cluster_bootstrap(
                table, lambda f, m=model: float((f[reference] - f[m]).mean()), seed=seed
            )
            for model in results["model"].unique()
            if model != reference
        }
    ).T
