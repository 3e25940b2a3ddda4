"""Drift and diffusion along the trajectories, against temperature, entropy, source and nulls.

Everything is evaluated on a held-out split, with the model fitted on the training prompts.
The statistics here are functions of a table (one row per step or per sequence) so that
:func:`sdelm.stats.cluster_bootstrap` can recompute them on resamples of whole prompts.

Time convention: the state ``X_k`` is read after token ``y_k``; the step ``X_k → X_{k+1}``
reads the token ``y_{k+1}``, drawn from a distribution of entropy ``H_{k+1}``. So the
diffusion ``σ(X_k)`` of that step is paired with ``H_{k+1}`` (``next_entropy``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
from scipy import stats

from sdelm.analysis import kramers_moyal, surrogates
from sdelm.baselines import OrnsteinUhlenbeck
from sdelm.data import PreparedData, SDEData
from sdelm.describe import state_labels
from sdelm.models import SDEModel
from sdelm.stats import N_RESAMPLES, cluster_bootstrap

__all__ = [
    "agreement",
    "agreement_versus",
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


def agreement(
    table: pd.DataFrame, grid: kramers_moyal.Grid, *, kind: str = "drift", min_count: int = 30
) -> Statistic:
    """Statistic: :func:`kramers_moyal.agreement` of a resample of ``table``.

    Every resample reads the cells that ``table`` populates
    (:func:`kramers_moyal.populated_cells`), so the statistic of the data is the agreement of
    ``table`` itself and repeated prompts cannot admit sparse cells.
    """
    cells = kramers_moyal.populated_cells(table, grid, min_count=min_count)

    def statistic(frame: pd.DataFrame) -> float:
        return kramers_moyal.agreement(frame, grid, kind=kind, min_count=min_count, cells=cells)

    return statistic


def agreement_versus(
    tables: pd.DataFrame,
    grids: dict[str, kramers_moyal.Grid],
    surrogate: str,
    *,
    min_count: int = 30,
    seed: int = 0,
    n_resamples: int = N_RESAMPLES,
) -> dict[str, float]:
    """Measure the drift agreement on the ``"data"`` rows minus on the ``surrogate`` rows.

    The same numbers as :func:`sdelm.stats.cluster_bootstrap` of the difference of
    :func:`kramers_moyal.agreement` on the two series' rows, resampling prompts, but each series
    is first reduced to per-prompt sums (:class:`kramers_moyal.DriftSums`), so a resample costs
    no pass over the transitions.

    Args:
        tables: :func:`surrogate_tables`' tables (a ``series`` column).
        grids: Each series' grid, from :func:`surrogate_tables`.
        surrogate: The surrogate kind.
        min_count: Minimum transitions per cell.
        seed: Seed of the bootstrap.
        n_resamples: Bootstrap resamples.

    Returns:
        :func:`sdelm.stats.cluster_bootstrap`'s result.

    """
    prompts = np.sort(tables["prompt_id"].unique())
    sums = {
        name: kramers_moyal.DriftSums.of(tables[tables["series"] == name], grids[name], prompts)
        for name in ("data", surrogate)
    }

    def difference(drawn: pd.DataFrame) -> float:
        rows = drawn["row"].to_numpy()
        data, other = (sums[name].agreement(rows, min_count=min_count) for name in sums)
        return data - other

    frame = pd.DataFrame({"prompt_id": prompts, "row": np.arange(len(prompts))})
    return cluster_bootstrap(frame, difference, seed=seed, n_resamples=n_resamples)


def surrogate_tables(
    data: PreparedData, *, bins: int = 6, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, kramers_moyal.Grid]]:
    """Refit a VAR(1) on the data and on each surrogate; read it on the held-out steps.

    For each series (``"data"`` and the kinds of :data:`surrogates.KINDS`), an OU / VAR(1)
    drift is fitted by least squares to the series' training split, and a Kramers–Moyal grid
    to its training states; both are read on its test split. A surrogate sequence keeps the
    prompt of the sequence it was made from, so resampling prompts resamples both together.

    Args:
        data: Prepared data.
        bins: Bins per coordinate of the Kramers–Moyal grids.
        seed: Seed of the surrogates.

    Returns:
        ``fields``: :func:`field_along_steps` of each series' VAR(1) on its test split, with a
        ``series`` column; ``tables``: :func:`kramers_moyal.transition_table` of the same, with
        ``series``; and each series' grid.

    """
    series = surrogates.surrogate_series(data.train, data.test, seed=seed)
    fields, tables, grids = [], [], {}
    for name, (train, test) in series.items():
        linear = OrnsteinUhlenbeck(data.dim).fit_least_squares(train)
        grids[name] = kramers_moyal.Grid.fit(train.states[train.mask], bins)
        fields.append(field_along_steps(linear, test).assign(series=name))
        table = kramers_moyal.transition_table(test, grids[name], linear)
        tables.append(table.assign(series=name))
    return pd.concat(fields, ignore_index=True), pd.concat(tables, ignore_index=True), grids
