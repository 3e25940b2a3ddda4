"""Simulating a fitted SDE with torchsde, seeded and fast.

torchsde's default Brownian motion rebuilds a tree of Brownian increments and costs about 50
times a hand-written Euler–Maruyama loop (torchsde issue #109). Euler–Maruyama, which needs each
solver step's increment once and in order, draws them from a seeded :class:`torch.Generator`
(``_SeededIncrements``). Milstein and the stochastic Runge–Kutta scheme use a
:class:`torchsde.BrownianInterval` with ``dt`` given as its step and ``entropy=seed``. Either way
the paths are reproducible (``torch.manual_seed`` plays no part): the same seed on the same
device gives the same paths.

The steps are torchsde's solvers (after :func:`torchsde.sdeint`'s checks of the SDE), driven by
``_integrate``: sdeint's fixed-step loop with the solver's times and the interpolation weights of
the outputs worked out before the loop rather than by a few scalar tensor operations per step,
which show at small ensembles (about 5% of a 64-path simulation's time). It walks the same
times in the same float32 arithmetic, so the paths are bit for bit those of sdeint.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import warnings

import numpy as np
import pandas as pd
import torch
import torchsde
from torchsde._core import methods as torchsde_methods
from torchsde._core.base_solver import BaseSDESolver
from torchsde._core.sdeint import check_contract

from sdelm.checks import check_integers, check_time_step
from sdelm.data import SDEData
from sdelm.devices import check_memory
from sdelm.models import SDEModel

__all__ = [
    "METHODS",
    "convergence",
    "one_token_errors",
    "simulate",
    "simulate_split",
]

METHODS = ("euler", "milstein", "srk")


class _SeededIncrements(torchsde.BaseBrownian):
    """Brownian increments for one pass of a fixed-step solver, drawn from a seeded generator.

    Each query must start where the previous one ended (as a fixed-step solver queries
    ``bm(t, t + h)`` once per step); it returns ``sqrt(h) * Z`` with ``Z`` standard normal from a
    :class:`torch.Generator` seeded with ``seed``. Unlike :class:`torchsde.BrownianInterval` it
    cannot be queried twice or out of order, and has no Lévy area, so it suits Euler–Maruyama
    (and Milstein) but not a solver that revisits or splits intervals.

    Args:
        t0: Start time.
        size: Size of each increment, (batch, dim).
        dtype: Floating-point type of the increments.
        device: Where they are drawn.
        seed: Seed of the generator.

    """

    def __init__(
        self,
        t0: float,
        size: tuple[int, ...],
        dtype: torch.dtype,
        device: torch.device,
        seed: int,
    ) -> None:
        self._size, self._dtype, self._device = tuple(size), dtype, torch.device(device)
        self._generator = torch.Generator(self._device).manual_seed(seed)
        self._end = float(t0)

    def __call__(
        self, ta: float, tb: float | None = None, return_U: bool = False, return_A: bool = False
    ) -> torch.Tensor:
        """Return the increment ``W(tb) − W(ta)``, of size ``self.shape``.

        Raises:
            RuntimeError: If the query does not start where the previous one ended, is a point
                (``tb`` missing) or asks for a Lévy area.

        """
        start, end = float(ta), math.nan if tb is None else float(tb)
        if return_U or return_A or start != self._end or not end > start:
            raise RuntimeError(
                f"_SeededIncrements serves consecutive increments of a fixed-step solver; got a "
                f"query for ({ta}, {tb}) after one ending at {self._end}. Use "
                "torchsde.BrownianInterval for other solvers."
            )
        self._end = end
        noise = torch.randn(
            self._size, generator=self._generator, dtype=self._dtype, device=self._device
        )
        return noise.mul_(math.sqrt(end - start))

    def __repr__(self) -> str:
        """Describe the increments."""
        return f"_SeededIncrements(size={self._size}, device={self._device})"

    @property
    def dtype(self) -> torch.dtype:
        """Floating-point type of the increments."""
        return self._dtype

    @property
    def device(self) -> torch.device:
        """Where the increments are drawn."""
        return self._device

    @property
    def shape(self) -> tuple[int, ...]:
        """Size of each increment, (batch, dim)."""
        return self._size

    @property
    def levy_area_approximation(self) -> str:
        """``"none"``: no Lévy area."""
        return "none"


def _solver_times(ts: torch.Tensor, h: float) -> tuple[torch.Tensor, list[int]]:
    """Work out the times that :func:`torchsde.sdeint`'s fixed-step loop walks.

    From ``ts[0]`` the loop steps to ``min(t + h, ts[-1])`` while ``t`` is before the next output
    time, then interpolates that output between its last two times. The times are summed in
    float32, as the loop sums scalar tensors, so they can drift off the output times.

    Args:
        ts: Float32 tensor of size (n_out,), the output times, increasing.
        h: Solver step.

    Returns:
        A float32 tensor of size (n_steps + 1,), the solver's times on ``ts``'s device (the
        first is ``ts[0]``), and for each output time after the first the index of the first
        solver time at or after it.

    """
    out_times = ts.cpu().numpy()
    step, end = np.float32(h), out_times[-1]
    times, reached = [out_times[0]], []
    for out in out_times[1:]:
        while times[-1] < out:
            times.append(min(times[-1] + step, end))
        reached.append(len(times) - 1)
    return torch.from_numpy(np.array(times, dtype=np.float32)).to(ts.device), reached


def _integrate(
    solver: BaseSDESolver, y0: torch.Tensor, ts: torch.Tensor, h: float
) -> torch.Tensor:
    """Solve from ``y0`` at ``ts[0]`` with fixed steps ``h``, as :func:`torchsde.sdeint` does.

    The solver's times and the interpolation weights of the outputs are worked out before the
    loop (:func:`_solver_times`), so each step is the solver's step alone.

    Args:
        solver: A torchsde solver of the SDE and its Brownian motion.
        y0: Float tensor of size (batch, dim), the state at ``ts[0]``.
        ts: Float32 tensor of size (n_out,), the output times, increasing.
        h: Solver step.

    Returns:
        Float tensor of size (batch, n_out, dim): the state at each output time, linearly
        interpolated between the solver's times around it (the first is ``y0``).

    """
    times, reached = _solver_times(ts, h)
    index = torch.tensor(reached, device=ts.device)
    before, after, out = times[index - 1], times[index], ts[1:]
    weights_before = ((after - out) / (after - before)).unbind()
    weights_after = ((out - before) / (after - before)).unbind()
    outputs: list[list[int]] = [[] for _ in range(len(times))]  # by the solver time reaching them
    for j, k in enumerate(reached):
        outputs[k].append(j)
    times = times.unbind()
    y, extra, ys = y0, solver.init_extra_solver_state(times[0], y0), [y0]
    for k in range(1, len(times)):
        previous = y
        y, extra = solver.step(times[k - 1], times[k], y, extra)
        ys.extend(weights_before[j] * previous + weights_after[j] * y for j in outputs[k])
    return torch.stack(ys, dim=1)


def _check_memory(n_paths: int, steps: int, dim: int, device: torch.device) -> None:
    """Refuse a simulation whose paths cannot fit in memory, before it starts.

    The solver's loop keeps every output step and then stacks them, so the device holds the paths
    twice; from a GPU they are then copied to the CPU once.

    Args:
        n_paths: Paths in all (starts times paths per start).
        steps: Output steps after the start.
        dim: State dimension.
        device: Where the model runs.

    Raises:
        ValueError: If a device lacks the memory; the message gives the figures in GiB.

    """
    paths = n_paths * (steps + 1) * dim * 4  # float32
    cpu = torch.device("cpu")
    needs = {cpu: 2 * paths} if device.type == "cpu" else {device: 2 * paths, cpu: paths}
    check_memory(
        needs,
        "simulate",
        f"{n_paths:,} paths x {steps + 1:,} steps x {dim} dimensions",
        "Ask for fewer paths or steps, or simulate in chunks of paths (with different seeds) "
        "and summarise each chunk.",
    )


def _checked_arguments(
    model: SDEModel,
    x0: torch.Tensor,
    steps: int,
    dt: float,
    n_paths: int,
    t0: float,
    substeps: int,
    method: str,
    seed: int,
) -> tuple[torch.Tensor, float]:
    """Refuse :func:`simulate`'s bad arguments; return the starts (batch, dim) and ``dt``."""
    check_integers(1, steps=steps, n_paths=n_paths, substeps=substeps)
    check_integers(0, seed=seed)
    dt = check_time_step(dt)
    if isinstance(t0, bool) or not isinstance(t0, numbers.Real) or not math.isfinite(t0):
        raise ValueError(f"t0 must be a finite number, got {t0!r}.")
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; choose one of {METHODS}.")
    if model.correlation is not None and method != "euler":
        raise ValueError(
            f"{type(model).__name__} has correlated noise, which torchsde's {method!r} solver "
            "does not take; simulate it with method='euler'."
        )
    x0 = torch.as_tensor(x0, dtype=torch.float32)
    if x0.ndim == 1:
        x0 = x0.unsqueeze(0)
    model.check_input(x0)
    bad = (~torch.isfinite(x0).all(dim=1)).nonzero().flatten().tolist()
    if bad:
        shown = f"{bad[:10]}{' and more' if len(bad) > 10 else ''}"
        starts = (
            ""
            if n_paths == 1
            else f"; row i starts paths {n_paths}i to {n_paths}i + {n_paths - 1}"
        )
        raise ValueError(
            f"x0 rows {shown} are NaN or infinite (of {len(x0)} starting states{starts}); "
            "pass finite starting states."
        )
    return x0, dt


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

    Euler–Maruyama draws its increments from a :class:`torch.Generator` seeded with ``seed``
    (``_SeededIncrements``); Milstein and ``"srk"`` from a :class:`torchsde.BrownianInterval`
    with ``entropy=seed``. The same seed on the same device gives the same paths. A path that
    leaves the floating-point range (NaN or infinite) raises a warning naming it.

    Args:
        model: A fitted SDE (any :class:`~sdelm.models.SDEModel`).
        x0: Float tensor of size (dim,) or (n_starts, dim), finite; each start gets
            ``n_paths`` paths.
        steps: Number of output steps after the start, a positive integer.
        n_paths: Paths per starting state, a positive integer.
        method: ``"euler"`` (Euler–Maruyama), ``"milstein"`` or ``"srk"``.
        dt: Time between output steps, a positive finite number.
        t0: Start time, a finite number.
        substeps: Solver steps per output step (a finer solver grid), a positive integer.
        seed: Seed of the Brownian motion, an integer >= 0; the same seed gives the same
            paths.

    Returns:
        Float tensor of size (n_starts * n_paths, steps + 1, dim); row ``i * n_paths + j`` is
        path ``j`` from start ``i``; step 0 is the start.

    Raises:
        ValueError: On ``steps``, ``n_paths`` or ``substeps`` that are not positive integers
            (bools and floats included), a ``dt`` that is not a positive finite number, a
            non-finite ``t0`` or times that float32 cannot resolve, a negative seed, an
            unknown method (or one other than Euler for correlated noise), starting states
            of the wrong dimension or not finite (the message names them), or paths that
            would not fit in memory (the message gives the GiB).

    Warns:
        RuntimeWarning: When a simulated path became NaN or infinite.

    """
    x0, dt = _checked_arguments(model, x0, steps, dt, n_paths, t0, substeps, method, seed)
    device = next(iter(model.parameters()), torch.empty(0)).device
    _check_memory(len(x0) * n_paths, steps, model.dim, device)
    ts = t0 + dt * torch.arange(steps + 1, dtype=torch.float32, device=device)
    edges = ts[[0, -1]]
    if not (
        torch.isfinite(ts).all()
        and (ts.diff() > 0).all()
        and (edges + dt / substeps > edges).all()
    ):
        raise ValueError(
            f"t0={t0!r}, dt={dt!r}, steps={steps} and substeps={substeps} give times that "
            "float32 cannot represent or tell apart; use a smaller t0 (e.g. 0) or a larger dt."
        )
    y0 = x0.to(device).repeat_interleave(n_paths, dim=0)
    solver_dt = dt / substeps
    if method == "euler":
        bm = _SeededIncrements(float(ts[0]), tuple(y0.shape), y0.dtype, device, seed)
    else:
        bm = torchsde.BrownianInterval(
            t0=float(ts[0]),
            t1=float(ts[-1]),
            size=tuple(y0.shape),
            dt=solver_dt,
            device=device,
            entropy=seed,
            levy_area_approximation="space-time" if method == "srk" else "none",
        )
    was_training = model.training
    model.eval()  # e.g. spectral normalisation must not update during a simulation
    try:
        # torchsde.sdeint's checks and solver; its checks need only the first and last times
        sde, y0, _, bm, method, options = check_contract(
            model, y0, edges, bm, method, adaptive=False, options=None, names=None, logqp=False
        )
        solver = torchsde_methods.select(method=method, sde_type=sde.sde_type)(
            sde=sde,
            bm=bm,
            dt=solver_dt,
            adaptive=False,
            rtol=0.0,  # the tolerances are unused by fixed steps
            atol=0.0,
            dt_min=0.0,
            options=options,
        )
        paths = _integrate(solver, y0, ts, solver_dt)
    finally:
        model.train(was_training)
    paths = paths.cpu()  # (batch, steps + 1, dim)
    finite = torch.isfinite(paths).all(dim=2)
    if not finite.all():
        rows = (~finite.all(dim=1)).nonzero().flatten()
        first = int(rows[0])
        step = int((~finite[first]).nonzero()[0])
        warnings.warn(
            f"{len(rows)} of {len(paths)} simulated paths became NaN or infinite (path {first} "
            f"at step {step} first); {type(model).__name__}'s drift or diffusion blows up "
            "there. Try a smaller dt or more substeps, or a better-behaved model.",
            RuntimeWarning,
            stacklevel=3,  # the caller, past torch.no_grad's wrapper
        )
    return paths


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


@torch.no_grad()
def one_token_errors(model: SDEModel, data: SDEData, *, substeps: int = 16) -> pd.DataFrame:
    """Squared error of two readings of a fitted chain's one-token step, per transition.

    The chain's step is the Euler–Maruyama mean ``x + μ(x, t)·Δt``, the map the likelihood
    fitted. Its continuous reading follows the drift flow for one token in ``substeps`` steps
    (noise-free: for a linear drift, the exact conditional mean of the SDE read in continuous
    time).

    Args:
        model: A fitted model.
        data: Held-out sequences (one split of a projection).
        substeps: Solver steps per token of the continuous reading.

    Returns:
        One row per transition of ``data`` (:meth:`SDEData.transitions`' order):
        ``prompt_id``, ``chain`` and ``continuous`` (squared Euclidean errors of the predicted
        next state).

    """
    check_integers(1, substeps=substeps)
    moves = data.transitions()
    target = moves.x + moves.dx
    chain = moves.x + model.drift(moves.x, moves.t) * moves.dt
    flow = moves.x.clone()
    for k in range(substeps):
        flow = flow + model.drift(flow, moves.t + k * moves.dt / substeps) * moves.dt / substeps
    return pd.DataFrame(
        {
            "prompt_id": data.transition_prompts(),
            "chain": (chain - target).pow(2).sum(dim=1).numpy(),
            "continuous": (flow - target).pow(2).sum(dim=1).numpy(),
        }
    )
