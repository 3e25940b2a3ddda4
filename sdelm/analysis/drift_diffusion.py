"""Drift and diffusion along the trajectories, against temperature, entropy, source and nulls.

Everything is evaluated on held-out prompts, with the model fitted on the training prompts:
on one split, or on every fold of a cross-validation (:func:`cross_validated`), each fold's
model read on its own test split.
The statistics here are functions of a table (one row per step or per sequence) so that
:func:`sdelm.stats.cluster_bootstrap` can recompute them on resamples of whole prompts.

Time convention: the state ``X_k`` is read after token ``y_k``; the step ``X_k → X_{k+1}``
reads the token ``y_{k+1}``, drawn from a distribution of entropy ``H_{k+1}``. So the
diffusion ``σ(X_k)`` of that step is paired with ``H_{k+1}`` (``next_entropy``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from scipy import stats

from sdelm.analysis import kramers_moyal, surrogates
from sdelm.analysis.descriptives import state_labels
from sdelm.data import PreparedData, SDEData
from sdelm.models import SDEModel
from sdelm.models.linear import OrnsteinUhlenbeck
from sdelm.stats import N_RESAMPLES, cluster_bootstrap

__all__ = [
    "agreement",
    "agreement_effect",
    "agreement_versus",
    "cross_validated",
    "field_along_steps",
    "noise_share",
    "per_sequence",
    "slope",
    "source_gap",
    "spearman",
    "surrogate_tables",
    "temperature_slope",
    "versus",
]

Statistic = Callable[[pd.DataFrame], float]


@torch.no_grad()
def field_along_steps(model: SDEModel, data: SDEData) -> pd.DataFrame:
    """Drift and diffusion of a model at every valid state of a split.

    Args:
        model: A fitted SDE of ``data.dim``.
        data: A split (usually ``test``).

    Returns:
        One row per valid step ``k``: ``sequence, prompt_id, source, temperature, group,
        step``, ``drift_norm`` (``|μ(X_k)|``), ``diffusion_trace`` (tr σσᵀ = Σ σ_i²),
        ``determinism`` (``|μ|² Δt / tr σσᵀ``: the squared drift displacement of one step over
        the noise variance of that step), ``increment_sq`` (``|X_{k+1} − X_k|²``) and
        ``next_entropy`` (``H_{k+1}``, the entropy of the distribution the token read by the
        step ``X_k → X_{k+1}`` was drawn from); the last two are NaN at a sequence's last step
        (and the entropy where unknown).

    """
    seq, step, labels = state_labels(data)
    x = data.states[seq, step]
    t = data.times[step]
    mu = model.drift(x, t)
    variance = model.diffusion(x, t).pow(2).sum(dim=1)
    drift_norm = mu.norm(dim=1)
    has_next = torch.zeros_like(data.mask)
    has_next[:, :-1] = data.mask[:, :-1] & data.mask[:, 1:]
    no_next = ~has_next[seq, step]
    next_step = (step + 1).clamp(max=data.states.shape[1] - 1)
    increment = (data.states[seq, next_step] - x).pow(2).sum(dim=1)
    increment[no_next] = torch.nan
    if data.entropies is None:
        entropy = torch.full((len(seq),), torch.nan)
    else:
        entropy = data.entropies[seq, next_step].clone()
        entropy[no_next] = torch.nan
    return labels.assign(
        **{
            "drift_norm": drift_norm.numpy(),
            "diffusion_trace": variance.numpy(),
            "determinism": (drift_norm.pow(2) * data.dt / variance).numpy(),
            "increment_sq": increment.numpy(),
            "next_entropy": entropy.numpy(),
        }
    )


def cross_validated(
    models: Sequence[SDEModel], folds: Sequence[PreparedData], *, bins: int = 6
) -> tuple[pd.DataFrame, pd.DataFrame, list[kramers_moyal.Grid]]:
    """Read each fold's model on its own held-out split: every prompt and passage once.

    Args:
        models: The model fitted on each fold's training split.
        folds: The folds (:func:`sdelm.prepare` with ``fold=(i, k)``), fold ``i`` at ``i``.
        bins: Bins per coordinate of each fold's Kramers–Moyal grid.

    Returns:
        ``field``: :func:`field_along_steps` of every fold's test split, with a ``fold``
        column and ``sequence`` numbered across folds; ``table``:
        :func:`kramers_moyal.transition_table` of the same transitions with the model's
        columns, binned on each fold's grid, with ``fold``; ``grids``: fold ``i``'s grid,
        fitted to its training states.

    Raises:
        ValueError: If ``models`` and ``folds`` differ in length.

    """
    if len(models) != len(folds):
        raise ValueError(f"{len(models)} models for {len(folds)} folds: give one per fold.")
    fields, tables, grids, offset = [], [], [], 0
    for i, (model, data) in enumerate(zip(models, folds, strict=True)):
        field = field_along_steps(model, data.test)
        fields.append(field.assign(fold=i, sequence=field["sequence"] + offset))
        offset += len(data.test)
        grids.append(kramers_moyal.Grid.fit(data.train.states[data.train.mask], bins))
        table = kramers_moyal.transition_table(data.test, grids[i], model)
        tables.append(table.assign(fold=i))
    return pd.concat(fields, ignore_index=True), pd.concat(tables, ignore_index=True), grids


def per_sequence(field: pd.DataFrame, column: str, *, log: bool = True) -> pd.DataFrame:
    """Mean of a step statistic per sequence.

    Args:
        field: A table from :func:`field_along_steps`.
        column: E.g. ``"diffusion_trace"``; NaN steps are left out.
        log: Average the logarithm.

    Returns:
        One row per sequence: ``sequence, prompt_id, source, temperature`` (those of them the
        field has) and ``value``.

    """
    rows = field.dropna(subset=[column])
    values = np.log(rows[column]) if log else rows[column]
    labels = [c for c in ("prompt_id", "source", "temperature") if c in rows.columns]
    return (
        rows.assign(value=values)
        .groupby("sequence", as_index=False)
        .agg(**{c: (c, "first") for c in labels}, value=("value", "mean"))
    )


def slope(x: str, y: str) -> Statistic:
    """Statistic: the least-squares slope of column ``y`` on column ``x``."""

    def statistic(frame: pd.DataFrame) -> float:
        if frame[x].nunique() < 2:
            return float("nan")
        return float(np.polyfit(frame[x], frame[y], 1)[0])

    return statistic


def temperature_slope(
    field: pd.DataFrame,
    column: str,
    *,
    log: bool = True,
    seed: int = 0,
    n_resamples: int = N_RESAMPLES,
) -> dict[str, float]:
    """Slope of a per-sequence statistic against sampling temperature, resampling prompts.

    Per-sequence means (of ``log column`` when ``log``) are regressed on temperature by least
    squares; the interval and p-value come from :func:`sdelm.stats.cluster_bootstrap` over
    prompts, since samples of one prompt are not independent.

    Args:
        field: A table from :func:`field_along_steps` (generated rows with temperatures).
        column: E.g. ``"diffusion_trace"``.
        log: Regress the logarithm (a slope is then a relative change per unit temperature).
        seed: Seed of the bootstrap.
        n_resamples: Bootstrap resamples.

    Returns:
        ``estimate`` (the slope), ``low``, ``high``, ``p_value`` (against 0), ``n_clusters``
        (prompts) and ``n_sequences``.

    Raises:
        ValueError: With fewer than two temperatures.

    """
    generated = field.dropna(subset=["temperature"])
    if generated["temperature"].nunique() < 2:
        raise ValueError("A temperature slope needs sequences at two or more temperatures.")
    sequences = per_sequence(generated, column, log=log)
    result = cluster_bootstrap(
        sequences, slope("temperature", "value"), seed=seed, n_resamples=n_resamples
    )
    return {**result, "n_sequences": len(sequences)}


def spearman(x: str, y: str) -> Statistic:
    """Statistic: the Spearman correlation of two columns (rows with NaN left out)."""

    def statistic(frame: pd.DataFrame) -> float:
        rows = frame.dropna(subset=[x, y])
        with warnings.catch_warnings():  # a constant resample gives NaN, dropped by the caller
            warnings.simplefilter("ignore", stats.ConstantInputWarning)
            return float(stats.spearmanr(rows[x], rows[y]).statistic)

    return statistic


def source_gap(column: str = "value", first: str = "human", second: str = "generated"):
    """Statistic: mean of ``column`` over ``first``-source rows minus over ``second``-source."""

    def statistic(frame: pd.DataFrame) -> float:
        means = frame.groupby("source")[column].mean()
        if first not in means or second not in means:
            return float("nan")
        return float(means[first] - means[second])

    return statistic


def noise_share(frame: pd.DataFrame) -> float:
    """Statistic: the share of steps whose squared drift step is below the noise variance."""
    return float((frame["determinism"] < 1).mean())


def versus(statistic: Statistic, surrogate: str, column: str = "series") -> Statistic:
    """Statistic: ``statistic`` on the ``"data"`` rows minus on the ``surrogate`` rows."""

    def difference(frame: pd.DataFrame) -> float:
        return statistic(frame[frame[column] == "data"]) - statistic(
            frame[frame[column] == surrogate]
        )

    return difference


def _fold_rows(frame: pd.DataFrame, fold: int) -> pd.DataFrame:
    return frame[frame["fold"] == fold]


def agreement(
    table: pd.DataFrame,
    grids: Sequence[kramers_moyal.Grid],
    *,
    kind: str = "drift",
    min_count: int = 30,
) -> Statistic:
    """Statistic: the mean over folds of :func:`kramers_moyal.agreement` of a resample.

    Each fold's rows are read on that fold's grid and on the cells the data of that fold
    populate (:func:`kramers_moyal.populated_cells`), so the statistic of the data is the mean
    of the folds' agreements and repeated prompts cannot admit sparse cells. A fold with fewer
    than ``min_count`` transitions in a resample is left out of its mean.

    Args:
        table: From :func:`cross_validated` (a ``fold`` column, the model's columns).
        grids: Fold ``i``'s grid at ``i``.
        kind: ``"drift"`` or ``"diffusion"``.
        min_count: Minimum transitions per cell.

    """
    cells = [
        kramers_moyal.populated_cells(_fold_rows(table, i), grid, min_count=min_count)
        for i, grid in enumerate(grids)
    ]

    def statistic(frame: pd.DataFrame) -> float:
        rs = [
            kramers_moyal.agreement(rows, grid, kind=kind, min_count=min_count, cells=cells[i])
            for i, grid in enumerate(grids)
            if len(rows := _fold_rows(frame, i)) >= min_count
        ]
        return _mean_finite(rs)

    return statistic


def _prompt_bootstrap(
    prompts: np.ndarray, statistic: Callable[[np.ndarray], float], seed: int, n_resamples: int
) -> dict[str, float]:
    """:func:`sdelm.stats.cluster_bootstrap` over ``prompts`` of ``statistic(rows drawn)``."""
    frame = pd.DataFrame({"prompt_id": prompts, "row": np.arange(len(prompts))})
    return cluster_bootstrap(
        frame, lambda drawn: statistic(drawn["row"].to_numpy()), seed=seed, n_resamples=n_resamples
    )


def _mean_finite(values: list[float]) -> float:
    values = [v for v in values if np.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


def agreement_effect(
    table: pd.DataFrame,
    grids: Sequence[kramers_moyal.Grid],
    *,
    kind: str = "drift",
    min_count: int = 30,
    seed: int = 0,
    n_resamples: int = N_RESAMPLES,
) -> dict[str, float]:
    """Measure :func:`agreement` with an interval that resamples prompts (and passages).

    The drift's agreement is read through per-prompt sums (:class:`kramers_moyal.DriftSums`),
    so a resample costs no pass over the transitions; the diffusion's, which subtracts a
    linear drift refitted on each resample, through :func:`agreement` itself.

    Args:
        table: From :func:`cross_validated` (a ``fold`` column, the model's columns).
        grids: Fold ``i``'s grid at ``i``.
        kind: ``"drift"`` or ``"diffusion"``.
        min_count: Minimum transitions per cell.
        seed: Seed of the bootstrap.
        n_resamples: Bootstrap resamples.

    Returns:
        :func:`sdelm.stats.cluster_bootstrap`'s result.

    """
    if kind != "drift":
        statistic = agreement(table, grids, kind=kind, min_count=min_count)
        return cluster_bootstrap(table, statistic, seed=seed, n_resamples=n_resamples)
    prompts = np.sort(table["prompt_id"].unique())
    sums = [
        kramers_moyal.DriftSums.of(_fold_rows(table, i), grid, prompts)
        for i, grid in enumerate(grids)
    ]
    return _prompt_bootstrap(
        prompts,
        lambda rows: _mean_finite([fold.agreement(rows, min_count=min_count) for fold in sums]),
        seed,
        n_resamples,
    )


def agreement_versus(
    tables: pd.DataFrame,
    grids: Sequence[dict[str, kramers_moyal.Grid]],
    surrogate: str,
    *,
    min_count: int = 30,
    seed: int = 0,
    n_resamples: int = N_RESAMPLES,
) -> dict[str, float]:
    """Measure the drift agreement on the ``"data"`` rows minus on the ``surrogate`` rows.

    The same numbers as :func:`sdelm.stats.cluster_bootstrap` of the mean over folds of the
    difference of :func:`kramers_moyal.agreement` on the two series' rows of each fold,
    resampling prompts, but each series and fold is first reduced to per-prompt sums
    (:class:`kramers_moyal.DriftSums`), so a resample costs no pass over the transitions.

    Args:
        tables: :func:`surrogate_tables`' tables (``series`` and ``fold`` columns).
        grids: Each fold's grids by series, from :func:`surrogate_tables`.
        surrogate: The surrogate kind.
        min_count: Minimum transitions per cell.
        seed: Seed of the bootstrap.
        n_resamples: Bootstrap resamples.

    Returns:
        :func:`sdelm.stats.cluster_bootstrap`'s result.

    """
    prompts = np.sort(tables["prompt_id"].unique())
    sums = [
        {
            name: kramers_moyal.DriftSums.of(
                _fold_rows(tables[tables["series"] == name], i), fold_grids[name], prompts
            )
            for name in ("data", surrogate)
        }
        for i, fold_grids in enumerate(grids)
    ]

    def difference(rows: np.ndarray) -> float:
        return _mean_finite(
            [
                fold["data"].agreement(rows, min_count=min_count)
                - fold[surrogate].agreement(rows, min_count=min_count)
                for fold in sums
            ]
        )

    return _prompt_bootstrap(prompts, difference, seed, n_resamples)


def surrogate_tables(
    folds: Sequence[PreparedData], *, bins: int = 6, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame, list[dict[str, kramers_moyal.Grid]]]:
    """Refit a VAR(1) on the data and on each surrogate; read it on the held-out steps.

    In each fold and for each series (``"data"`` and the kinds of :data:`surrogates.KINDS`),
    an OU / VAR(1) drift is fitted by least squares to the series' training split, and a
    Kramers–Moyal grid to its training states; both are read on its test split. A surrogate
    sequence keeps the prompt of the sequence it was made from, so resampling prompts
    resamples both together.

    Args:
        folds: Prepared data: the folds of a cross-validation, or one split in a list.
        bins: Bins per coordinate of the Kramers–Moyal grids.
        seed: Seed of the surrogates; fold ``i`` uses ``seed + 100·i``.

    Returns:
        ``fields``: :func:`field_along_steps` of each series' VAR(1) on its test split, with
        ``series`` and ``fold`` columns; ``tables``: :func:`kramers_moyal.transition_table` of
        the same, with ``series`` and ``fold``; and each fold's grids by series.

    """
    fields, tables, grids = [], [], []
    for i, data in enumerate(folds):
        series = surrogates.surrogate_series(data.train, data.test, seed=seed + 100 * i)
        fold_grids = {}
        for name, (train, test) in series.items():
            linear = OrnsteinUhlenbeck(data.dim).fit_least_squares(train)
            fold_grids[name] = kramers_moyal.Grid.fit(train.states[train.mask], bins)
            fields.append(field_along_steps(linear, test).assign(series=name, fold=i))
            table = kramers_moyal.transition_table(test, fold_grids[name], linear)
            tables.append(table.assign(series=name, fold=i))
        grids.append(fold_grids)
    return pd.concat(fields, ignore_index=True), pd.concat(tables, ignore_index=True), grids
