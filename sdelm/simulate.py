"""Simulating a fitted SDE with torchsde, seeded and fast.

torchsde's default Brownian motion rebuilds a tree of Brownian increments and costs about 50
times a hand-written Euler–Maruyama loop (torchsde issue #109); a
:class:`torchsde.BrownianInterval` with ``dt`` given as its step and ``entropy=seed`` avoids it
and makes the paths reproducible (``torch.manual_seed`` does not).
"""

from __future__ import annotations

import dataclasses

import pandas as pd
import torch
import torchsde

from sdelm.data import SDEData
from sdelm.models import SDEModel

__all__ = ["METHODS", "convergence", "energy_distance", "simulate", "simulate_split"]

METHODS = ("euler", "milstein", "srk")


@torch.no_grad()
def simulate(
    model: SDEModel,
    x0: torch.Tensor,
    steps: int,
    n_paths: int = 1,
    *,
    method: str = "euler",
    dt: float = 1.0,
    t0: float = 0.0,
    substeps: int = 1,
    seed: int = 0,
) -> torch.Tensor:
    """Simulate paths of ``model`` from starting states.

    Args:
        model: A fitted SDE (any :class:`~sdelm.models.SDEModel`).
        x0: Float tensor of size (dim,) or (n_starts, dim); each start gets ``n_paths`` paths.
        steps: Number of output steps after the start.
        n_paths: Paths per starting state.
        method: ``"euler"`` (Euler–Maruyama), ``"milstein"`` or ``"srk"``.
        dt: Time between output steps.
        t0: Start time.
        substeps: Solver steps per output step (a finer solver grid).
        seed: Seed of the Brownian motion; the same seed gives the same paths.

    Returns:
        Float tensor of size (n_starts * n_paths, steps + 1, dim); row ``i * n_paths + j`` is
        path ``j`` from start ``i``; step 0 is the start.

    Raises:
        ValueError: On a non-positive ``steps``, ``n_paths``, ``substeps`` or ``dt``, an
            unknown method, or states of the wrong dimension.

    """
    for name, value in {"steps": steps, "n_paths": n_paths, "substeps": substeps}.items():
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    if not dt > 0:
        raise ValueError(f"dt must be > 0, got {dt!r}.")
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; choose one of {METHODS}.")
    x0 = torch.as_tensor(x0, dtype=torch.float32)
    if x0.ndim == 1:
        x0 = x0.unsqueeze(0)
    model.check_input(x0)
    device = next(iter(model.parameters()), torch.empty(0)).device
    y0 = x0.to(device).repeat_interleave(n_paths, dim=0)
    ts = t0 + dt * torch.arange(steps + 1, dtype=torch.float32, device=device)
    bm = torchsde.BrownianInterval(
        t0=float(ts[0]),
        t1=float(ts[-1]),
        size=tuple(y0.shape),
        dt=dt / substeps,
        device=device,
        entropy=seed,
        levy_area_approximation="space-time" if method == "srk" else "none",
    )
    was_training = model.training
    model.eval()  # e.g. spectral normalisation must not update during a simulation
    try:
        paths = torchsde.sdeint(model, y0, ts, bm=bm, method=method, dt=dt / substeps)
    finally:
        model.train(was_training)
    return paths.transpose(0, 1).cpu()  # (batch, steps + 1, dim)


def simulate_split(model: SDEModel, data: SDEData, *, seed: int = 0) -> SDEData:
    """Replace every sequence of a split by one simulated path from its own first state.

    The simulated split keeps the rows, mask and time step of ``data`` (and drops the
    entropies), so any analysis of a split runs unchanged on the model's paths.

    Args:
        model: A fitted SDE of ``data.dim``.
        data: A split, e.g. ``test``.
        seed: Seed of the Brownian motion.

    Returns:
        The simulated split: states of size (n_sequences, n_steps, dim), zero where masked.

    """
    paths = simulate(model, data.states[:, 0], data.states.shape[1] - 1, dt=data.dt, seed=seed)
    states = torch.where(data.mask[..., None], paths, torch.zeros(()))
    return dataclasses.replace(data, states=states, name=f"{data.name} simulated", entropies=None)


@torch.no_grad()
def convergence(
    model: SDEModel,
    x0: torch.Tensor,
    *,
    horizon: float,
    substeps: tuple[int, ...] = (1, 2, 4, 8),
    reference_substeps: int = 64,
    n_paths: int = 512,
    method: str = "euler",
    seed: int = 0,
) -> pd.DataFrame:
    """Strong and weak errors of a solver against a fine reference, on one Brownian motion.

    Every solve uses the same :class:`torchsde.BrownianInterval`, so the paths differ only by the
    solver's step size. The strong error is ``E|X_h(T) − X_ref(T)|``, the weak error
    ``|E X_h(T) − E X_ref(T)|`` (norm over dimensions).

    Args:
        model: The SDE.
        x0: Float tensor of size (dim,): the start.
        horizon: Time T of the comparison.
        substeps: Solver steps per unit of time to test.
        reference_substeps: Steps per unit of time of the reference solution.
        n_paths: Paths.
        method: ``"euler"``, ``"milstein"`` or ``"srk"``.
        seed: Seed of the Brownian motion.

    Returns:
        One row per step count: ``dt``, ``strong_error``, ``weak_error``.

    Raises:
        ValueError: On an unknown method or a non-positive horizon.

    """
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; choose one of {METHODS}.")
    if not horizon > 0:
        raise ValueError(f"horizon must be > 0, got {horizon!r}.")
    model.check_input(torch.as_tensor(x0, dtype=torch.float32).reshape(1, -1))
    y0 = torch.as_tensor(x0, dtype=torch.float32).reshape(1, -1).repeat(n_paths, 1)
    ts = torch.tensor([0.0, horizon])
    bm = torchsde.BrownianInterval(
        t0=0.0,
        t1=horizon,
        size=tuple(y0.shape),
        dt=1.0 / reference_substeps,
        entropy=seed,
        levy_area_approximation="space-time" if method == "srk" else "none",
    )
    was_training = model.training
    model.eval()
    try:
        reference = torchsde.sdeint(
            model, y0, ts, bm=bm, method=method, dt=1.0 / reference_substeps
        )[-1]
        rows = []
        for n in substeps:
            end = torchsde.sdeint(model, y0, ts, bm=bm, method=method, dt=1.0 / n)[-1]
            rows.append(
                {
                    "dt": 1.0 / n,
                    "strong_error": float((end - reference).norm(dim=1).mean()),
                    "weak_error": float((end.mean(0) - reference.mean(0)).norm()),
                }
            )
    finally:
        model.train(was_training)
    return pd.DataFrame(rows)


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Energy distance between two samples: ``2 E|X − Y| − E|X − X'| − E|Y − Y'|`` (≥ 0).

    Zero exactly when the two distributions are equal; works in any dimension.

    Args:
        x: Float tensor of size (n, dim).
        y: Float tensor of size (m, dim).

    Returns:
        The (V-statistic) energy distance.

    """
    x, y = x.double(), y.double()
    return float(
        2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean()
    )
