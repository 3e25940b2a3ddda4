"""Fitting drift and diffusion by the Euler–Maruyama likelihood, or by the paper's loss.

The Euler–Maruyama scheme makes each transition Gaussian,

    X_{k+1} − X_k ~ N(μ(X_k, t_k) Δt, diag σ²(X_k, t_k) Δt),

(with correlated noise, covariance diag(s) C Cᵀ diag(s) Δt: :mod:`sdelm.noise`), so the
negative log-likelihood of all observed transitions fits drift and diffusion jointly.
:func:`nll` reports it in nats per dimension per step, the unit of every results table in the
book.

``loss="paper"`` is our reading of the paper's objective: a mean-squared error for the drift,
MSE(ΔX/Δt, μ), plus a Kullback–Leibler term for the diffusion,
KL(N(0, r²) ‖ N(0, σ²Δt)) with r = ΔX − μΔt (μ held fixed in this term). Up to a constant the
KL term is the likelihood's σ-part, so the two objectives differ in the drift: the paper's MSE
weighs every dimension and state equally, the likelihood by 1/σ².
"""

from __future__ import annotations

import math
import numbers
import time
import warnings
from dataclasses import dataclass

import pandas as pd
import torch
import torch.distributed as dist
from tqdm import tqdm

from sdelm.checks import check_integers
from sdelm.data import PreparedData, SDEData, Transitions
from sdelm.devices import resolve_device
from sdelm.models import SDEModel

__all__ = ["LOSSES", "FitResult", "fit", "loss_terms", "nll", "sequence_nll", "transition_nll"]

LOSSES = ("nll", "paper")
_LOG_2PI = math.log(2 * math.pi)

#: ``batch_size="auto"``: transitions per step on the CPU (the default of every fit so far) and
#: on CUDA, where a batch of 65,536 reaches about 9 times the throughput of 4,096.
AUTO_BATCH_SIZE = {"cpu": 4096, "cuda": 65536}

#: A fit has diverged when its validation NLL rises more than this many times
#: ``max(1, |starting NLL|)`` nats per dimension per step above the starting NLL.
DIVERGENCE_FACTOR = 1e3


def _transitions(data: SDEData | Transitions) -> Transitions:
    return data.transitions() if isinstance(data, SDEData) else data


def transition_nll(
    model: SDEModel, x: torch.Tensor, t: torch.Tensor, dx: torch.Tensor, dt: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return the drift and the two parts of each transition's NLL, per dimension.

    The parts sum over dimensions to the transition's negative log-likelihood: the residual's
    part ``|w|² / 2`` (``w``: the residual ΔX − μΔt whitened by the noise) and the noise's
    part ``log s + (log Δt + log 2π) / 2`` (``s``: the noise scales, whose logs sum to half
    the covariance's log-determinant).

    Args:
        model: The SDE.
        x: Float tensor of size (batch, dim), the states.
        t: Float tensor of size (batch,), their times.
        dx: Float tensor of size (batch, dim), the increments.
        dt: The time step.

    Returns:
        The drift μ, the residual's part and the noise's part, each of size (batch, dim).

    """
    mu = model.drift(x, t)
    residual = dx - mu * dt
    if model.correlation is None:
        variance = model.diffusion(x, t).pow(2) * dt
        return mu, residual.pow(2) / (2 * variance), 0.5 * (torch.log(variance) + _LOG_2PI)
    scale = model.noise_scale(x, t)
    white = model.correlation.whiten(residual, scale)
    noise = torch.log(scale) + 0.5 * (math.log(dt) + _LOG_2PI)
    return mu, white.pow(2) / (2 * dt), noise


def loss_terms(
    model: SDEModel, transitions: Transitions, loss: str = "nll"
) -> dict[str, torch.Tensor]:
    """Return the objective and its drift and diffusion parts, averaged over elements.

    Args:
        model: The SDE.
        transitions: Transitions (on the model's device).
        loss: ``"nll"`` or ``"paper"``.

    Returns:
        ``total``, ``drift``, ``diffusion`` (scalars, ``total = drift + diffusion``) and
        ``nll`` (the Euler–Maruyama negative log-likelihood, nats per dimension per step).

    """
    if loss not in LOSSES:
        raise ValueError(f"Unknown loss {loss!r}; choose one of {LOSSES}.")
    if loss == "paper" and model.correlation is not None:
        raise ValueError(
            "The paper's loss is written for diagonal noise; fit a model with correlated "
            "noise by the likelihood (loss='nll')."
        )
    x, t, dx, dt = transitions.x, transitions.t, transitions.dx, transitions.dt
    mu, residual_part, scale_part = transition_nll(model, x, t, dx, dt)
    nll_drift, nll_diffusion = residual_part.mean(), scale_part.mean()
    if loss == "nll":
        drift, diffusion = nll_drift, nll_diffusion
    else:
        variance = model.diffusion(x, t).pow(2) * dt
        drift = (dx / dt - mu).pow(2).mean()
        ratio = (dx - mu.detach() * dt).pow(2).clamp_min(1e-12) / variance
        diffusion = 0.5 * (ratio - 1 - torch.log(ratio)).mean()
    return {
        "total": drift + diffusion,
        "drift": drift,
        "diffusion": diffusion,
        "nll": nll_drift + nll_diffusion,
    }


@torch.no_grad()
def nll(model: SDEModel, data: SDEData | Transitions) -> float:
    """Held-out Euler–Maruyama negative log-likelihood in nats per dimension per step.

    Args:
        model: The SDE.
        data: A split, or its transitions.

    Returns:
        The mean over valid transitions and dimensions.

    Raises:
        ValueError: If the data have no transitions or the wrong dimension.

    """
    tr = _transitions(data)
    if len(tr) == 0:
        raise ValueError("The data have no transitions (every sequence has fewer than 2 steps).")
    device = next(iter(model.parameters()), torch.empty(0)).device
    was_training = model.training
    model.eval()
    value = float(loss_terms(model, tr.to(device))["nll"])
    model.train(was_training)
    return value


@torch.no_grad()
def sequence_nll(model: SDEModel, data: SDEData) -> torch.Tensor:
    """Held-out Euler–Maruyama negative log-likelihood of each sequence.

    Args:
        model: The SDE.
        data: A split.

    Returns:
        Float tensor of size (n_sequences,): the mean over the sequence's valid transitions and
        dimensions, in nats per dimension per step (NaN for a sequence without transitions).
        Weighted by transitions, it averages to :func:`nll`.

    """
    x = data.states[:, :-1]
    valid = data.mask[:, :-1] & data.mask[:, 1:]
    times = data.times[:-1].expand(x.shape[:2])
    device = next(iter(model.parameters()), torch.empty(0)).device
    was_training = model.training
    model.eval()
    _, residual_part, noise_part = transition_nll(
        model,
        x.reshape(-1, data.dim).to(device),
        times.reshape(-1).to(device),
        (data.states[:, 1:] - x).reshape(-1, data.dim).to(device),
        data.dt,
    )
    model.train(was_training)
    per_step = (residual_part + noise_part).reshape(x.shape).cpu().mean(-1)
    per_step = torch.where(valid, per_step, torch.zeros_like(per_step))
    return per_step.sum(1) / valid.sum(1)


def _resolve_batch_size(batch_size: int | str, device: torch.device) -> int:
    """Return the transitions per step: ``batch_size`` itself, or the default of ``device``.

    Args:
        batch_size: A positive integer, or ``"auto"``.
        device: Where the fit runs.

    Returns:
        ``batch_size``, or for ``"auto"`` :data:`AUTO_BATCH_SIZE` of CUDA on a CUDA device and
        of the CPU elsewhere.

    Raises:
        ValueError: If ``batch_size`` is neither ``"auto"`` nor a positive integer.

    """
    if isinstance(batch_size, str) and batch_size == "auto":
        return AUTO_BATCH_SIZE["cuda" if device.type == "cuda" else "cpu"]
    try:
        check_integers(1, batch_size=batch_size)
    except ValueError as error:
        raise ValueError(
            f"batch_size must be a positive integer or 'auto', got {batch_size!r}."
        ) from error
    return int(batch_size)


def _world() -> tuple[int, int]:
    """Return (rank, world size); (0, 1) unless a torch.distributed process group is running."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _shard(n: int, rank: int, world: int, device: torch.device) -> torch.Tensor:
    return torch.arange(rank, n, world, device=device)


def _terms_everywhere(
    model: SDEModel, tr: Transitions, loss: str, rank: int, world: int
) -> dict[str, float]:
    """Loss terms of all transitions, each process evaluating its share (means over all)."""
    if world == 1:
        return {k: float(v) for k, v in loss_terms(model, tr, loss).items()}
    local = _shard(len(tr), rank, world, tr.x.device)
    names = ("total", "drift", "diffusion", "nll")
    sums = torch.zeros(len(names), dtype=torch.float64)
    if len(local):
        part = Transitions(tr.x[local], tr.t[local], tr.dx[local], tr.dt)
        terms = loss_terms(model, part, loss)
        sums = torch.stack([terms[k].double().cpu() * len(local) for k in names])
    dist.all_reduce(sums)
    return dict(zip(names, (sums / len(tr)).tolist(), strict=True))


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        model: The model with the weights of the best validation epoch (on the CPU).
        history: Learning curves: one row per epoch and split (``train``/``val``) with columns
            ``epoch, split, total, drift, diffusion, nll`` and ``seconds`` (wall time since the
            start of training, for benchmarks; not reproducible).
        best_epoch: Epoch with the lowest validation NLL (0 is before training).
        best_val_nll: That NLL, nats per dimension per step.
        stopped: ``"patience"``, ``"epochs"``, ``"non-finite"`` (a loss was NaN or infinite) or
            ``"diverged"`` (the validation NLL rose more than :data:`DIVERGENCE_FACTOR` times
            ``max(1, |starting NLL|)`` above the starting NLL).
        seconds: Wall time of the fit.
        device: Where it ran.
        transitions_per_second: Training transitions processed per second.
        batch_size: Transitions per optimiser step (``batch_size="auto"`` resolved).
        improved: Whether some epoch beat the starting weights' validation NLL; when False the
            model has its starting weights (and :func:`fit` warned).

    """

    model: SDEModel
    history: pd.DataFrame
    best_epoch: int
    best_val_nll: float
    stopped: str
    seconds: float
    device: str
    transitions_per_second: float
    batch_size: int
    improved: bool


def fit(
    model: SDEModel,
    data: PreparedData,
    *,
    loss: str = "nll",
    epochs: int = 300,
    lr: float = 3e-3,
    batch_size: int | str = "auto",
    weight_decay: float = 0.0,
    patience: int = 30,
    device: str | torch.device = "auto",
    seed: int = 0,
    progress: bool = True,
) -> FitResult:
    """Fit a model's drift and diffusion with Adam, early stopping on validation NLL.

    All transitions are gathered once into tensors and shuffled into minibatches each epoch;
    there is no Python loop over sequences or steps. The best validation epoch's weights are
    restored at the end. A non-finite loss, or a validation NLL that explodes (see
    :attr:`FitResult.stopped`), stops the fit with a warning (best weights restored); a fit in
    which no epoch improved on the starting weights also warns (:attr:`FitResult.improved`).

    Args:
        model: A model from :mod:`sdelm.models` or :mod:`sdelm.models.linear`, of ``data.dim``.
        data: Prepared splits (:func:`sdelm.prepare`).
        loss: ``"nll"`` (likelihood) or ``"paper"`` (drift MSE + diffusion KL).
        epochs: Maximum passes over the training transitions.
        lr: Adam learning rate.
        batch_size: Transitions per step, or ``"auto"``: 4,096 on the CPU (bit-identical to
            ``batch_size=4096``) and 65,536 on CUDA, where larger batches reach about 9 times
            the throughput (fewer optimiser steps per epoch, so a CUDA fit follows another path
            than a CPU one). A batch at least as large as the training split takes it whole.
            :attr:`FitResult.batch_size` records the value used.
        weight_decay: AdamW weight decay.
        patience: Stop after this many epochs without a better validation NLL.
        device: ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
        seed: Seed of the minibatch order.
        progress: Show a progress bar over epochs.

    Data parallel: when a ``torch.distributed`` process group is running (e.g. under
    ``torchrun`` or ``accelerate launch``), every process holds the same data and model, takes
    its share of each minibatch and of the evaluation, and the gradients and losses are summed
    across processes: the result equals a single-process fit up to floating-point summation
    order. Only rank 0 shows a progress bar.

    Returns:
        A :class:`FitResult`.

    Raises:
        ValueError: On an unknown loss, epochs, batch size or patience that are not positive
            integers (bools included), an lr that is not a positive finite number, a model of
            the wrong dimension, or an empty split.

    Warns:
        RuntimeWarning: When the fit stopped on a non-finite or diverging loss, or no epoch
            improved on the starting weights.

    """
    if loss not in LOSSES:
        raise ValueError(f"Unknown loss {loss!r}; choose one of {LOSSES}.")
    check_integers(1, epochs=epochs, patience=patience)
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not 0 < lr < math.inf:
        raise ValueError(f"lr must be > 0 and finite, got {lr!r}; 1e-3 to 1e-2 suits Adam here.")
    if model.dim != data.dim:
        raise ValueError(
            f"The model is {model.dim}-dimensional but the data are {data.dim}-dimensional; "
            f"build the model with dim={data.dim}."
        )
    device = resolve_device(device)
    batch_size = _resolve_batch_size(batch_size, device)
    train, val = data.train.transitions().to(device), data.val.transitions().to(device)
    for split, tr in (("train", train), ("val", val)):
        if len(tr) == 0:
            raise ValueError(f"The {split} split has no transitions; use more prompts.")
    model.to(device)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)

    rank, world = _world()
    if world > 1:
        for parameter in model.parameters():
            dist.broadcast(parameter.data, src=0)

    def evaluate(epoch: int, seconds: float) -> list[dict[str, float]]:
        model.eval()
        with torch.no_grad():
            rows = [
                {
                    "epoch": epoch,
                    "split": name,
                    **_terms_everywhere(model, tr, loss, rank, world),
                    "seconds": seconds,
                }
                for name, tr in (("train", train), ("val", val))
            ]
        model.train()
        return rows

    def step(batch: torch.Tensor) -> bool:
        """One optimiser step on a minibatch; returns whether its loss was finite."""
        local = batch[rank::world]
        optimiser.zero_grad(set_to_none=False)
        finite = torch.ones(1)
        if len(local):
            part = Transitions(train.x[local], train.t[local], train.dx[local], train.dt)
            total = loss_terms(model, part, loss)["total"]
            finite[0] = float(torch.isfinite(total))
            if finite[0]:
                (total * len(local) / len(batch)).backward()
        if world > 1:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
            for parameter in parameters:
                if parameter.grad is None:
                    parameter.grad = torch.zeros_like(parameter)
                dist.all_reduce(parameter.grad)
        if not finite[0]:
            return False
        optimiser.step()
        return True

    history = evaluate(0, 0.0)
    start_nll = best_nll = history[-1]["nll"]
    best_epoch = 0
    exploded = start_nll + DIVERGENCE_FACTOR * max(1.0, abs(start_nll))
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    stopped, problem = "epochs", ""
    start = time.perf_counter()
    bar = tqdm(
        range(1, epochs + 1),
        desc=f"fit {type(model).__name__}",
        disable=not progress or rank != 0,
    )
    for epoch in bar:
        order = torch.randperm(len(train), generator=generator).to(device)
        finite = all(step(batch) for batch in order.split(batch_size))
        rows = evaluate(epoch, time.perf_counter() - start)
        if not finite or not math.isfinite(rows[-1]["nll"]):
            stopped, problem = "non-finite", f"produced a non-finite loss at epoch {epoch}"
            break
        history.extend(rows)
        if rows[-1]["nll"] > exploded:
            stopped = "diverged"
            problem = (
                f"diverged at epoch {epoch}: the validation NLL rose from {start_nll:.4g} to "
                f"{rows[-1]['nll']:.4g} nats per dimension per step"
            )
            break
        if rows[-1]["nll"] < best_nll - 1e-6:
            best_nll, best_epoch = rows[-1]["nll"], epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        elif epoch - best_epoch >= patience:
            stopped = "patience"
            break
        bar.set_postfix(val_nll=f"{rows[-1]['nll']:.4f}")
    bar.close()
    seconds = time.perf_counter() - start
    model.load_state_dict(best_state)
    model.to("cpu").eval()
    name = type(model).__name__
    if problem:
        restored = " (the starting weights)" if best_epoch == 0 else ""
        warnings.warn(
            f"Fitting {name} {problem}; stopped and restored epoch {best_epoch}{restored}. "
            f"Try a smaller lr than {lr:g}, e.g. {lr / 10:g}.",
            RuntimeWarning,
            stacklevel=2,
        )
    elif best_epoch == 0:
        # Validation rows after epoch 0: did the NLL get worse, or stay where it started?
        rose = min(row["nll"] for row in history[3::2]) > start_nll + 1e-6
        advice = (
            f"a smaller lr than {lr:g}" if rose else f"a larger lr than {lr:g}, or more epochs"
        )
        warnings.warn(
            f"No epoch of fitting {name} improved the validation NLL of the starting weights "
            f"({start_nll:.4g} nats per dimension per step), so the result has its starting "
            f"weights (FitResult.improved is False). Try {advice}.",
            RuntimeWarning,
            stacklevel=2,
        )
    epochs_run = max(row["epoch"] for row in history)
    return FitResult(
        model=model,
        history=pd.DataFrame(history),
        best_epoch=best_epoch,
        best_val_nll=best_nll,
        stopped=stopped,
        seconds=seconds,
        device=str(device),
        transitions_per_second=epochs_run * len(train) / max(seconds, 1e-9),
        batch_size=batch_size,
        improved=best_epoch > 0,
    )
