"""Simulating a fitted SDE with torchsde, seeded and fast.

torchsde's default Brownian motion rebuilds a tree of Brownian increments and costs about 50
times a hand-written Euler–Maruyama loop (torchsde issue #109); a
:class:`torchsde.BrownianInterval` with ``dt`` given as its step and ``entropy=seed`` avoids it
and makes the paths reproducible (``torch.manual_seed`` does not).
"""

from __future__ import annotations

import torch
import torchsde

from sdelm.models import SDEModel

__all__ = ["METHODS", "simulate"]

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
