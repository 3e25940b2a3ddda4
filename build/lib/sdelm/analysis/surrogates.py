"""Surrogate data: what any mean-reverting process, or no dynamics at all, would show.

A finding about hidden-state trajectories is interesting only where it separates the data from
processes that share their generic properties. Three surrogates of a split, each with the same
sequences, lengths and valid steps:

- :func:`var1_surrogate`: a Gaussian VAR(1), ``x_{k+1} = A x_k + b + ε_k`` with
  ``ε_k ~ N(0, Σ)``, fitted by least squares (:func:`fit_var1`) and simulated from each
  sequence's own first state: same marginal scale and one-step autocorrelation, linear and
  Gaussian dynamics;
- :func:`shuffle_in_time`: each sequence's states in a random order: the same states per
  sequence, no temporal order;
- :func:`iid_resample`: every valid step drawn with replacement from all valid states: the
  same marginal law, no sequence structure at all.

The functions work on ``states`` (n_sequences, n_steps, dim) and ``mask`` (n_sequences, n_steps)
tensors; :func:`surrogate_split` applies one to an :class:`~sdelm.data.SDEData`, and
:func:`surrogate_data` to every split of prepared data, for refitting a model.
:func:`refitted` gives the data and each surrogate with a model fitted to it, and
:func:`surrogate_effects` measures a per-state statistic on the data against a null and
against each surrogate, resampling prompts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Literal

import pandas as pd
import torch

from sdelm.data import PreparedData, SDEData
from sdelm.models import SDEModel
from sdelm.stats import cluster_bootstrap

__all__ = [
    "KINDS",
    "VAR1",
    "fit_var1",
    "iid_resample",
    "refitted",
    "shuffle_in_time",
    "simulate_var1",
    "surrogate_data",
    "surrogate_effects",
    "surrogate_series",
    "surrogate_split",
    "var1_surrogate",
]

#: The surrogate kinds of :func:`surrogate_split`.
KINDS = ("var1", "shuffled", "iid")


@dataclass(frozen=True)
class VAR1:
    """A Gaussian VAR(1), ``x_{k+1} = A x_k + b + ε_k``, ``ε_k ~ N(0, Σ)``.

    Attributes:
        matrix: Float tensor of size (dim, dim): ``A``.
        bias: Float tensor of size (dim,): ``b``.
        covariance: Float tensor of size (dim, dim): ``Σ``, the residual covariance.

    """

    matrix: torch.Tensor
    bias: torch.Tensor
    covariance: torch.Tensor


def _check(states: torch.Tensor, mask: torch.Tensor) -> None:
    if states.ndim != 3 or mask.shape != states.shape[:2]:
        raise ValueError(
            "states must be (n_sequences, n_steps, dim) and mask (n_sequences, n_steps); got "
            f"{tuple(states.shape)} and {tuple(mask.shape)}."
        )


def fit_var1(states: torch.Tensor, mask: torch.Tensor) -> VAR1:
    """Fit a Gaussian VAR(1) by least squares to every valid transition.

    Args:
        states: Float tensor of size (n_sequences, n_steps, dim).
        mask: Bool tensor of size (n_sequences, n_steps): valid steps.

    Returns:
        The fitted :class:`VAR1` (least squares of ``x_{k+1}`` on ``[x_k, 1]``; ``Σ`` is the
        residual covariance with divisor ``n − dim − 1``).

    Raises:
        ValueError: On mismatched shapes, or fewer transitions than ``dim + 2``.

    """
    _check(states, mask)
    both = mask[:, :-1] & mask[:, 1:]
    seq, step = both.nonzero(as_tuple=True)
    dim = states.shape[-1]
    if len(seq) < dim + 2:
        raise ValueError(f"{len(seq)} transitions cannot fit a VAR(1) in {dim} dimensions.")
    x = states[seq, step].double()
    y = states[seq, step + 1].double()
    design = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    solution = torch.linalg.lstsq(design, y).solution  # (dim + 1, dim)
    residual = y - design @ solution
    covariance = residual.T @ residual / (len(x) - dim - 1)
    return VAR1(
        matrix=solution[:-1].T.float(),
        bias=solution[-1].float(),
        covariance=covariance.float(),
    )


def simulate_var1(
    var1: VAR1, starts: torch.Tensor, first: torch.Tensor, mask: torch.Tensor, *, seed: int = 0
) -> torch.Tensor:
    """Simulate a VAR(1) over given valid steps, from given first states.

    Args:
        var1: The process.
        starts: Float tensor of size (n_sequences, dim): the state at each sequence's first
            valid step.
        first: Long tensor of size (n_sequences,): the first valid step of each sequence.
        mask: Bool tensor of size (n_sequences, n_steps): the valid steps to fill.
        seed: Seed of the noise.

    Returns:
        Float tensor of size (n_sequences, n_steps, dim): ``starts`` at ``first``, the simulated
        chain after it, zeros before it and at invalid steps.

    """
    n, n_steps = mask.shape
    dim = starts.shape[1]
    generator = torch.Generator().manual_seed(seed)
    values, vectors = torch.linalg.eigh(var1.covariance.double())
    root = (vectors * values.clamp_min(0).sqrt()).float()  # root @ rootᵀ = Σ
    out = torch.zeros(n, n_steps, dim)
    x = starts.float().clone()
    for k in range(n_steps):
        noise = torch.randn(n, dim, generator=generator) @ root.T
        step = x @ var1.matrix.T + var1.bias + noise
        x = torch.where((first == k)[:, None], starts.float(), step)
        out[:, k] = torch.where((first <= k)[:, None], x, torch.zeros_like(x))
    return out * mask[..., None]


def var1_surrogate(
    states: torch.Tensor, mask: torch.Tensor, var1: VAR1 | None = None, *, seed: int = 0
) -> torch.Tensor:
    """Simulate a fitted VAR(1) with the sequences' own lengths and first states.

    Args:
        states: Float tensor of size (n_sequences, n_steps, dim).
        mask: Bool tensor of size (n_sequences, n_steps).
        var1: The process; default fitted to ``states`` (pass one fitted to a training split to
            simulate a held-out split).
        seed: Seed of the noise.

    Returns:
        Float tensor of size (n_sequences, n_steps, dim), zero at invalid steps.

    Raises:
        ValueError: On mismatched shapes or a sequence with no valid step.

    """
    _check(states, mask)
    if not mask.any(dim=1).all():
        raise ValueError("Every sequence needs at least one valid step.")
    var1 = fit_var1(states, mask) if var1 is None else var1
    first = mask.int().argmax(dim=1)
    starts = states[torch.arange(len(states)), first]
    return simulate_var1(var1, starts, first, mask, seed=seed)


def shuffle_in_time(states: torch.Tensor, mask: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
    """Permute each sequence's valid states in time, independently per sequence.

    Args:
        states: Float tensor of size (n_sequences, n_steps, dim).
        mask: Bool tensor of size (n_sequences, n_steps).
        seed: Seed of the permutations.

    Returns:
        Float tensor of size (n_sequences, n_steps, dim): the same multiset of valid states per
        sequence, at the same valid steps, in a random order; invalid steps unchanged.

    """
    _check(states, mask)
    generator = torch.Generator().manual_seed(seed)
    out = states.clone()
    for i in range(len(states)):
        valid = mask[i].nonzero(as_tuple=True)[0]
        order = valid[torch.randperm(len(valid), generator=generator)]
        out[i, valid] = states[i, order]
    return out


def iid_resample(states: torch.Tensor, mask: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
    """Fill every valid step with a state drawn with replacement from all valid states.

    Args:
        states: Float tensor of size (n_sequences, n_steps, dim).
        mask: Bool tensor of size (n_sequences, n_steps).
        seed: Seed of the draws.

    Returns:
        Float tensor of size (n_sequences, n_steps, dim): i.i.d. draws from the empirical
        marginal of the valid states; invalid steps unchanged.

    """
    _check(states, mask)
    generator = torch.Generator().manual_seed(seed)
    pool = states[mask]
    out = states.clone()
    picks = torch.randint(len(pool), (int(mask.sum()),), generator=generator)
    out[mask] = pool[picks]
    return out


def surrogate_split(
    data: SDEData,
    kind: Literal["var1", "shuffled", "iid"],
    *,
    var1: VAR1 | None = None,
    seed: int = 0,
) -> SDEData:
    """Make a surrogate of a split: same sequences, rows, mask and time step, other states.

    Args:
        data: A split.
        kind: ``"var1"``, ``"shuffled"`` or ``"iid"`` (see the module docstring).
        var1: For ``"var1"``: the process (default fitted to ``data``).
        seed: Seed of the surrogate.

    Returns:
        The surrogate split, without entropies (they belong to the real tokens).

    Raises:
        ValueError: On an unknown ``kind``.

    """
    if kind == "var1":
        states = var1_surrogate(data.states, data.mask, var1, seed=seed)
    elif kind == "shuffled":
        states = shuffle_in_time(data.states, data.mask, seed=seed)
    elif kind == "iid":
        states = iid_resample(data.states, data.mask, seed=seed)
    else:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}.")
    return replace(data, states=states, name=f"{data.name} ({kind} surrogate)", entropies=None)


def surrogate_data(
    data: PreparedData, kind: Literal["var1", "shuffled", "iid"], *, seed: int = 0
) -> PreparedData:
    """Make a surrogate of every split of prepared data, to refit a model on.

    The VAR(1) is fitted to the training split and simulated in each split; each split draws
    its own random stream. Sequences keep their rows (prompts), and the projection is kept.

    Args:
        data: Prepared data.
        kind: ``"var1"``, ``"shuffled"`` or ``"iid"``.
        seed: Seed of the surrogate.

    Returns:
        The surrogate's train, validation and test splits.

    """
    var1 = fit_var1(data.train.states, data.train.mask) if kind == "var1" else None
    train, val, test = (
        surrogate_split(split, kind, var1=var1, seed=seed + j)
        for j, split in enumerate((data.train, data.val, data.test))
    )
    return replace(data, train=train, val=val, test=test)


def surrogate_series(
    train: SDEData, test: SDEData, *, seed: int = 0
) -> dict[str, tuple[SDEData, SDEData]]:
    """Return the data and one surrogate of each kind, each as a (train, test) pair.

    The VAR(1) surrogate simulates the process fitted to the data's training split (held-out
    sequences from their own first states); every surrogate keeps the rows (prompts) of the
    split it was made from, so resampling prompts resamples data and surrogates together.

    Args:
        train: The training split.
        test: A held-out split.
        seed: Seed of the surrogates (each kind and split gets its own stream).

    Returns:
        ``{"data": (train, test), "var1": (...), "shuffled": (...), "iid": (...)}``.

    """
    var1 = fit_var1(train.states, train.mask)
    series = {"data": (train, test)}
    for i, kind in enumerate(KINDS):
        series[kind] = tuple(
            surrogate_split(split, kind, var1=var1, seed=seed + 10 * i + j)
            for j, split in enumerate((train, test))
        )
    return series


def refitted(
    data: PreparedData,
    fitted: SDEModel,
    refit: Callable[[PreparedData], SDEModel],
    *,
    seed: int = 0,
) -> Iterator[tuple[str, PreparedData, SDEModel]]:
    """Yield the data with its fitted model, then each surrogate with the model refitted to it.

    Args:
        data: Prepared data.
        fitted: The model fitted to ``data``.
        refit: Fits the same kind of model to a surrogate's prepared data.
        seed: Seed of the surrogates (:func:`surrogate_data`).

    Yields:
        ``(series, prepared, model)`` for ``series`` in ``"data"`` and :data:`KINDS`.

    """
    yield "data", data, fitted
    for kind in KINDS:
        prepared = surrogate_data(data, kind, seed=seed)
        yield kind, prepared, refit(prepared)


def surrogate_effects(
    frame: pd.DataFrame, value: str, *, null: float, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Measure the mean of ``value`` on the data, and its excess over each surrogate.

    Prompts are resampled, data and surrogates together (a surrogate sequence keeps its
    prompt); each series is first reduced to per-prompt sums and counts, so a resample is a
    sum and the mean weighs every row alike.

    Args:
        frame: One row per state (or sequence) of each series: ``series`` (``"data"`` and
            :data:`KINDS`), ``prompt_id`` and the numeric or boolean column ``value``.
        value: The column to average.
        null: The data's mean under no effect (the surrogate differences are tested against 0).
        seed: Seed of the bootstrap.

    Returns:
        ``{"data": ..., "var1": ..., ...}``: :func:`sdelm.stats.cluster_bootstrap` results;
        ``"data"`` is the data's mean against ``null``, each surrogate kind the data's mean
        minus that surrogate's, against 0.

    Raises:
        ValueError: If a series is missing from ``frame``.

    """
    missing = {"data", *KINDS} - set(frame["series"])
    if missing:
        raise ValueError(f"frame lacks the series {sorted(missing)}.")
    grouped = frame.assign(value=frame[value].astype(float)).groupby(["prompt_id", "series"])
    per_prompt = grouped["value"].agg(["sum", "count"]).unstack("series", fill_value=0)
    per_prompt.columns = [f"{stat}_{series}" for stat, series in per_prompt.columns]
    per_prompt = per_prompt.reset_index()

    def mean(f: pd.DataFrame, series: str) -> float:
        return float(f[f"sum_{series}"].sum() / f[f"count_{series}"].sum())

    effects = {
        "data": cluster_bootstrap(per_prompt, lambda f: mean(f, "data"), null=null, seed=seed)
    }
    for kind in KINDS:
        effects[kind] = cluster_bootstrap(
            per_prompt, lambda f, k=kind: mean(f, "data") - mean(f, k), seed=seed
        )
    return effects
