"""The data a chapter starts from, built from its parameters cell by one call.

Most chapters read the same kind of data: trajectories sampled from bundled prompts (plus
teacher-forced Shakespeare), their generated rows projected onto principal components
(:func:`sdelm.prepare`), and a neural SDE fitted on them. :meth:`Chapter.setup
<sdelm.book.Chapter.setup>` builds all three from the chapter's parameters: a parameter named
like an argument of :func:`sdelm.collect_trajectories` (``model``, ``n_prompts``,
``temperatures``, ...) is that argument, and ``dim`` and ``seed`` set the projection and the
fit. Everything is cached under keys made of the full arguments and the code
(:mod:`sdelm.cache`), so chapters with the same parameters share one extraction and one fit,
and no chapter can read another's entry by a name.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from sdelm.data import PreparedData
    from sdelm.models import SDEModel
    from sdelm.trajectories import Trajectories

__all__ = ["Setup", "standard_folds", "standard_neural", "standard_setup", "standard_trajectories"]


class Setup(NamedTuple):
    """What :func:`standard_setup` returns.

    Attributes:
        trajectories: Every collected row, generated and human.
        data: The prepared (projected, split by prompt) rows.
        neural: A neural SDE fitted on ``data`` (cached), or None when not asked for.

    """

    trajectories: Trajectories
    data: PreparedData
    neural: SDEModel | None


def standard_trajectories(parameters: Mapping[str, Any]) -> Trajectories:
    """:func:`sdelm.collect_trajectories` with the arguments that ``parameters`` names.

    Args:
        parameters: A chapter's parameters by name; those named like an argument of
            :func:`sdelm.collect_trajectories` are passed to it, the others ignored.

    Returns:
        The (cached) trajectories.

    """
    from sdelm.collect import collect_trajectories

    accepted = inspect.signature(collect_trajectories).parameters
    return collect_trajectories(**{k: v for k, v in parameters.items() if k in accepted})


def standard_setup(
    parameters: Mapping[str, Any],
    *,
    source: str | None = "generated",
    split: tuple[float, float, float] | None = None,
    fit: bool = True,
) -> Setup:
    """Trajectories, prepared data and a fitted neural SDE from a chapter's parameters.

    Args:
        parameters: A chapter's parameters by name: the arguments of
            :func:`sdelm.collect_trajectories` it names, plus ``dim`` and ``seed`` (and
            optionally ``device``).
        source: Prepare only the rows of this source (``"generated"``, ``"human"``), or every
            row with None.
        split: Train/validation/test shares of the prompts; default that of
            :func:`sdelm.prepare`.
        fit: Fit (or load) the neural SDE.

    Returns:
        The :class:`Setup`. The neural SDE is :class:`sdelm.NeuralSDE` with ``time_scale`` the
        number of steps, fitted by :func:`sdelm.cached_fit` with the chapter's ``seed`` and
        ``device``.

    Raises:
        KeyError: If ``parameters`` lacks ``dim`` or ``seed``.

    """
    from sdelm.data import prepare

    trajs = standard_trajectories(parameters)
    chosen = trajs if source is None else trajs.where(source=source)
    data = prepare(
        chosen,
        dim=parameters["dim"],
        seed=parameters["seed"],
        **({} if split is None else {"split": split}),
    )
    neural = standard_neural(parameters, data) if fit else None
    return Setup(trajs, data, neural)


def standard_neural(
    parameters: Mapping[str, Any], data: PreparedData, *, correlated: bool = False
) -> SDEModel:
    """Fit (or load) the chapters' neural SDE on ``data``: also for refits on surrogates.

    Args:
        parameters: A chapter's parameters by name: ``dim``, ``seed`` and optionally
            ``device``.
        data: Prepared data (of dimension ``dim``).
        correlated: Fit the neural SDE with correlated noise instead (:mod:`sdelm.noise`).

    Returns:
        :class:`sdelm.NeuralSDE` with ``time_scale`` the number of steps, fitted by
        :func:`sdelm.cached_fit` with the chapter's ``seed`` and ``device``.

    Raises:
        KeyError: If ``parameters`` lacks ``dim`` or ``seed``.

    """
    from sdelm.cache import cached_fit
    from sdelm.models import NeuralSDE

    dim, seed = parameters["dim"], parameters["seed"]
    steps = float(data.train.states.shape[1])
    start = NeuralSDE(dim, time_scale=steps, correlated=correlated, seed=seed)
    device = parameters.get("device", "auto")
    return cached_fit(start, data, seed=seed, device=device, progress=False)


def standard_folds(
    parameters: Mapping[str, Any], k: int, *, source: str | None = "generated"
) -> list[PreparedData]:
    """Prepare a chapter's rows for K-fold cross-validation by prompt (and passage).

    Fold ``i`` tests on the i-th of ``k`` groups of prompts and trains (with 15% of the rest
    for validation) on the others, each with its own projection (:func:`sdelm.prepare`'s
    ``fold``): every prompt is held out exactly once. Chapters with the same parameters get
    the same folds, so their fits on them (:func:`standard_neural`) share cache entries.

    Args:
        parameters: A chapter's parameters by name (see :func:`standard_setup`).
        k: Number of folds (at least 2).
        source: The rows to prepare (``"generated"``, ``"human"``), or every row with None:
            prompts and passages are then dealt into the folds together.

    Returns:
        ``k`` prepared splits, fold 0 first.

    """
    from sdelm.data import prepare

    rows = standard_trajectories(parameters)
    rows = rows if source is None else rows.where(source=source)
    return [
        prepare(
            rows,
            dim=parameters["dim"],
            seed=parameters["seed"],
            split=(0.85, 0.15, 0.0),
            fold=(i, k),
        )
        for i in range(k)
    ]
