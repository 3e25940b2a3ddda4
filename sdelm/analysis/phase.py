"""Phase space of a fitted SDE: its drift as a map and as a flow, fixed points, stability.

The likelihood fits the chain ``X_{k+1} = X_k + μ(X_k, t_k) Δt + σ √Δt ξ`` at the data's step
(Δt = 1 token): what it identifies is the map ``x ↦ x + μ(x, t) Δt``, and that is the primary
reading here. The continuous-time flow ``ẋ = μ(x, t)`` is a second reading, kept where a chapter
shows both (it agrees with the map only when ``e^{JΔt} ≈ I + JΔt``, i.e. slow drift). At a
frozen time ``t`` (the fitted models see time as an input):

- :func:`plane_field` evaluates μ and tr σσᵀ on a grid in a plane of two coordinates, the other
  coordinates held at a background state (a slice through the state space);
- :func:`fixed_points` solves μ(x, t) = 0 (the fixed points of the map and the flow alike) by
  damped Newton iterations from many starts, merges the solutions and keeps the Jacobian
  J = ∂μ/∂x there. The map's stability is read from the multipliers ``1 + λΔt`` of ``I + JΔt``
  (stable when every ``|1 + λΔt| < 1``, relaxation time ``−Δt / log|1 + λΔt|``); the flow's
  from ``Re λ < 0`` (:attr:`FixedPoint.kind`, against :attr:`FixedPoint.map_kind`);
- :func:`map_lyapunov` gives Lyapunov exponents of the map along paths, from QR
  factorisations of the products of ``I + J(x_k) Δt``; :func:`drift_orbits` gives the map's
  noise-free paths; :func:`finite_time_lyapunov` the exponents of the continuous flow
  (the continuous reading);
- :func:`generator_by_distance` the expected one-step change of ``|x − x*|²`` under the chain
  (or the continuous generator), by distance from ``x*``;
- :func:`pair_separation` measures how far apart two sequences from the same prompt are, step
  by step.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.func import jacrev, vmap

from sdelm.analysis.descriptives import state_labels
from sdelm.data import SDEData
from sdelm.models import SDEModel
from sdelm.theory import discrete_generator, generator

__all__ = [
    "FixedPoint",
    "PlaneField",
    "drift_orbits",
    "finite_time_lyapunov",
    "fixed_point_table",
    "fixed_points",
    "generator_by_distance",
    "map_lyapunov",
    "pair_separation",
    "plane_field",
    "plane_states",
    "relaxation_times",
]


@dataclass(frozen=True)
class PlaneField:
    """Drift and diffusion on a grid in the plane of two coordinates.

    Attributes:
        x: Array of size (resolution,): grid values of the first plane coordinate.
        y: Array of size (resolution,): grid values of the second plane coordinate.
        u: Array of size (resolution, resolution): the drift's first plane component; entry
            ``[i, j]`` is at ``(x[j], y[i])`` (the layout of ``matplotlib.streamplot``).
        v: Array of size (resolution, resolution): the drift's second plane component.
        diffusion: Array of size (resolution, resolution): tr σσᵀ over all coordinates.
        components: The two coordinates spanning the plane.
        t: The frozen time.

    """

    x: np.ndarray
    y: np.ndarray
    u: np.ndarray
    v: np.ndarray
    diffusion: np.ndarray
    components: tuple[int, int]
    t: float


def _check_states(model: SDEModel, x: torch.Tensor, what: str) -> None:
    if x.ndim != 2 or x.shape[1] != model.dim or len(x) == 0:
        raise ValueError(
            f"{what} must be a non-empty tensor of size (n, {model.dim}) for this "
            f"{model.dim}-dimensional model, got {tuple(x.shape)}."
        )


def _frozen_time(n: int, t: float) -> torch.Tensor:
    return torch.full((n,), float(t), dtype=torch.float64)


@torch.no_grad()
def plane_field(
    model: SDEModel,
    extent: tuple[float, float, float, float],
    *,
    resolution: int = 25,
    t: float = 0.0,
    components: tuple[int, int] = (0, 1),
    background: torch.Tensor | None = None,
) -> PlaneField:
    """Evaluate the drift and diffusion on a grid in a coordinate plane.

    Args:
        model: A fitted SDE.
        extent: ``(x_min, x_max, y_min, y_max)`` of the grid in the two plane coordinates.
        resolution: Grid points per axis (at least 2).
        t: The time at which the (possibly time-dependent) model is evaluated.
        components: Indices of the two coordinates spanning the plane.
        background: Float tensor of size (dim,): the state's other coordinates; default zeros
            (for standardised PCA coordinates, the training mean).

    Returns:
        The field on the grid.

    Raises:
        ValueError: On a resolution below 2, an empty extent, or components outside the model.

    """
    if resolution < 2:
        raise ValueError(f"resolution must be at least 2, got {resolution}.")
    x_min, x_max, y_min, y_max = extent
    if not (x_max > x_min and y_max > y_min):
        raise ValueError(f"extent must be (x_min, x_max, y_min, y_max) with min < max: {extent}.")
    i, j = components
    if i == j or not (0 <= i < model.dim and 0 <= j < model.dim):
        raise ValueError(
            f"components must be two different indices in 0..{model.dim - 1}, got {components}."
        )
    base = torch.zeros(model.dim) if background is None else background.float()
    xs = np.linspace(x_min, x_max, resolution)
    ys = np.linspace(y_min, y_max, resolution)
    gx, gy = np.meshgrid(xs, ys)
    states = base.repeat(resolution * resolution, 1)
    states[:, i] = torch.as_tensor(gx.ravel(), dtype=torch.float32)
    states[:, j] = torch.as_tensor(gy.ravel(), dtype=torch.float32)
    times = torch.full((len(states),), float(t))
    mu = model.drift(states, times).numpy()
    variance = model.diffusion(states, times).pow(2).sum(dim=1).numpy()
    shape = (resolution, resolution)
    return PlaneField(
        x=xs,
        y=ys,
        u=mu[:, i].reshape(shape),
        v=mu[:, j].reshape(shape),
        diffusion=variance.reshape(shape),
        components=(i, j),
        t=float(t),
    )


def plane_states(data: SDEData, *, components: tuple[int, int] = (0, 1)) -> pd.DataFrame:
    """Every valid state of a split, in a coordinate plane, with its sequence's labels.

    Args:
        data: A split (e.g. from :func:`sdelm.prepare` or :func:`sdelm.project`).
        components: The two coordinates of the plane.

    Returns:
        One row per valid state: ``sequence, prompt_id, source, temperature, group, step`` and
        the coordinates ``pc1``, ``pc2`` (named after ``components``, counting from 1).

    """
    i, j = components
    if not (0 <= i < data.dim and 0 <= j < data.dim):
        raise ValueError(f"components must be in 0..{data.dim - 1}, got {components}.")
    seq, step, table = state_labels(data)
    return table.assign(
        **{
            f"pc{i + 1}": data.states[seq, step, i].numpy(),
            f"pc{j + 1}": data.states[seq, step, j].numpy(),
        }
    )


@dataclass(frozen=True)
class FixedPoint:
    """A zero of the drift at a frozen time: a fixed point of the map and of the flow.

    Attributes:
        location: Float tensor of size (dim,).
        jacobian: Float tensor of size (dim, dim): J = ∂μ/∂x at the fixed point.
        eigenvalues: Complex array of size (dim,): those of J, sorted by decreasing real part.
        residual: ``|μ(location)|``.
        starts: How many of the Newton starts converged to this point.
        dt: The step of the map ``x ↦ x + μ(x) Δt`` (the fitted chain's step).

    """

    location: torch.Tensor
    jacobian: torch.Tensor
    eigenvalues: np.ndarray
    residual: float
    starts: int
    dt: float = 1.0

    @property
    def unstable_directions(self) -> int:
        """Number of eigenvalues of J with a positive real part (the flow's reading)."""
        return int((self.eigenvalues.real > 0).sum())

    @property
    def kind(self) -> str:
        """The flow's reading: ``"stable"`` (every Re λ < 0), ``"unstable"`` or ``"saddle"``."""
        if self.unstable_directions == 0:
            return "stable"
        if self.unstable_directions == len(self.eigenvalues):
            return "unstable"
        return "saddle"

    @property
    def multipliers(self) -> np.ndarray:
        """Complex array of size (dim,): the map's multipliers ``1 + λΔt``.

        They are the eigenvalues of ``I + JΔt``, in the order of :attr:`eigenvalues`.
        """
        return 1 + self.eigenvalues * self.dt

    @property
    def map_unstable_directions(self) -> int:
        """Number of multipliers outside the unit circle, ``|1 + λΔt| > 1``."""
        return int((np.abs(self.multipliers) > 1).sum())

    @property
    def map_kind(self) -> str:
        """The map's reading of the fixed point's stability.

        ``"stable"`` (every ``|1 + λΔt| < 1``), ``"unstable"`` (every ``|1 + λΔt| > 1``),
        ``"saddle"`` (some inside and some outside the unit circle) or ``"marginal"`` (the
        rest: a multiplier on the unit circle).
        """
        modulus = np.abs(self.multipliers)
        if (modulus < 1).all():
            return "stable"
        if (modulus > 1).all():
            return "unstable"
        if (modulus > 1).any() and (modulus < 1).any():
            return "saddle"
        return "marginal"


def relaxation_times(multipliers: np.ndarray, *, dt: float = 1.0) -> np.ndarray:
    """Relaxation times of a linear map's directions: ``−Δt / log|m|``.

    A direction with multiplier ``m`` shrinks by ``|m|`` per step, so by ``1/e`` after this
    time. Directions that do not shrink (``|m| ≥ 1``) get ``inf``; a multiplier 0 gives 0.

    Args:
        multipliers: Complex or real array: eigenvalues of the map's Jacobian.
        dt: The map's step.

    Returns:
        Float array of the same size, in units of time (tokens for Δt = 1).

    """
    modulus = np.abs(np.asarray(multipliers))
    with np.errstate(divide="ignore"):
        times = -dt / np.log(modulus)
    return np.where(modulus >= 1, np.inf, times)


def _float64_copy(model: SDEModel) -> SDEModel:
    """Return a float64 copy of ``model`` in evaluation mode, its parameters frozen."""
    model64 = copy.deepcopy(model).double().eval()
    for parameter in model64.parameters():
        parameter.requires_grad_(False)
    return model64


def _drift_jacobians(model: SDEModel, x: torch.Tensor, t: float) -> torch.Tensor:
    """Jacobians ∂μ/∂x, size (n, dim, dim), of a float64 model at states (n, dim)."""

    def single(state: torch.Tensor) -> torch.Tensor:
        return model.drift(state.unsqueeze(0), _frozen_time(1, t)).squeeze(0)

    return vmap(jacrev(single))(x)


def fixed_points(
    model: SDEModel,
    starts: torch.Tensor,
    *,
    t: float = 0.0,
    tol: float = 1e-5,
    max_iter: int = 100,
    merge: float = 1e-3,
    dt: float = 1.0,
) -> list[FixedPoint]:
    """Find the zeros of the drift μ(·, t) by damped Newton iterations from many starts.

    Each start iterates ``x ← x − α J⁻¹ μ(x)`` with the largest ``α ∈ {1, ½, ¼, …}`` that
    reduces ``|μ|`` (in float64). Starts whose ``|μ|`` ends below ``tol`` are converged; their
    end points closer than ``merge`` (relative to the spread of the starts) are one fixed point.

    Args:
        model: A fitted SDE.
        starts: Float tensor of size (n_starts, dim), e.g. held-out states.
        t: The frozen time.
        tol: Convergence threshold on ``|μ|``.
        max_iter: Newton iterations.
        merge: Merge distance, as a fraction of the root-mean-square distance of the starts
            from their mean.
        dt: Step of the map ``x ↦ x + μ Δt`` whose multipliers the points report (the
            fitted chain's step, 1 token for the book's data).

    Returns:
        The fixed points, most frequently reached first; empty when no start converged.

    Raises:
        ValueError: If ``starts`` is not (n, dim) for the model, or ``dt <= 0``.

    """
    _check_states(model, starts, "starts")
    if not dt > 0:
        raise ValueError(f"dt must be > 0 (the fitted chain's step), got {dt!r}.")
    model64 = _float64_copy(model)
    x = starts.detach().double().clone()
    times = _frozen_time(len(x), t)
    residual = model64.drift(x, times).norm(dim=1)
    for _ in range(max_iter):
        active = residual > tol
        if not active.any():
            break
        jac = _drift_jacobians(model64, x[active], t)
        mu = model64.drift(x[active], times[active])
        step = torch.linalg.lstsq(jac, mu.unsqueeze(-1)).solution.squeeze(-1)
        best_x, best_r = x[active], residual[active]
        alpha = 1.0
        for _ in range(12):
            trial = x[active] - alpha * step
            trial_r = model64.drift(trial, times[active]).norm(dim=1)
            better = trial_r < best_r
            best_x = torch.where(better[:, None], trial, best_x)
            best_r = torch.where(better, trial_r, best_r)
            alpha /= 2
        x[active], residual[active] = best_x, best_r
    converged = x[residual <= tol]
    scale = (starts.double() - starts.double().mean(dim=0)).pow(2).sum(dim=1).mean().sqrt()
    radius = merge * float(scale) if float(scale) > 0 else merge
    groups: list[list[torch.Tensor]] = []
    for point in converged:
        for group in groups:
            if (group[0] - point).norm() < radius:
                group.append(point)
                break
        else:
            groups.append([point])
    groups.sort(key=len, reverse=True)
    points = []
    for group in groups:
        location = torch.stack(group).mean(dim=0)
        jac = _drift_jacobians(model64, location.unsqueeze(0), t)[0]
        eigenvalues = np.linalg.eigvals(jac.numpy())
        points.append(
            FixedPoint(
                location=location.float(),
                jacobian=jac.float(),
                eigenvalues=eigenvalues[np.argsort(-eigenvalues.real)],
                residual=float(model64.drift(location[None], _frozen_time(1, t)).norm()),
                starts=len(group),
                dt=float(dt),
            )
        )
    return points


def fixed_point_table(points: list[FixedPoint], states: torch.Tensor) -> pd.DataFrame:
    """Summarise fixed points, read as the map's and as the flow's, and place them in the data.

    Args:
        points: From :func:`fixed_points`.
        states: Float tensor of size (n, dim), e.g. the valid held-out states.

    Returns:
        One row per fixed point. The map's reading: ``map_kind``, ``map_unstable_directions``,
        ``max_modulus`` and ``min_modulus`` (extreme ``|1 + λΔt|``), ``flips`` (multipliers
        with a negative real part: directions that overshoot and change sign every step),
        ``relaxation`` (the slowest direction's relaxation time ``−Δt / log max|1 + λΔt|``,
        ``inf`` when it does not shrink). The flow's reading: ``kind``,
        ``unstable_directions``, ``max_real`` and ``min_real`` (extreme real parts of the
        Jacobian's eigenvalues), ``max_imag`` (largest rotation rate), ``flow_relaxation``
        (``−1 / max Re λ``, ``inf`` when not negative). Then ``residual`` (``|μ|``),
        ``starts``, ``distance`` (from the states' mean) and ``data_quantile`` (the share of
        states closer to the mean than the fixed point: above ~0.99 means outside the data).

    """
    centre = states.mean(dim=0)
    radii = (states - centre).norm(dim=1)
    rows = []
    for point in points:
        distance = float((point.location - centre).norm())
        modulus = np.abs(point.multipliers)
        slowest = float(point.eigenvalues.real.max())
        rows.append(
            {
                "map_kind": point.map_kind,
                "map_unstable_directions": point.map_unstable_directions,
                "max_modulus": float(modulus.max()),
                "min_modulus": float(modulus.min()),
                "flips": int((point.multipliers.real < 0).sum()),
                "relaxation": float(relaxation_times(modulus.max(), dt=point.dt)),
                "kind": point.kind,
                "unstable_directions": point.unstable_directions,
                "max_real": slowest,
                "min_real": float(point.eigenvalues.real.min()),
                "max_imag": float(np.abs(point.eigenvalues.imag).max()),
                "flow_relaxation": -1 / slowest if slowest < 0 else np.inf,
                "residual": point.residual,
                "starts": point.starts,
                "distance": distance,
                "data_quantile": float((radii < distance).float().mean()),
            }
        )
    return pd.DataFrame(rows).rename_axis("fixed point")


def generator_by_distance(
    model: SDEModel,
    data: SDEData,
    center: torch.Tensor,
    *,
    bins: int = 4,
    reading: str = "flow",
) -> pd.DataFrame:
    """How ``V = |x − x*|²`` is expected to change at a split's states, by distance from ``x*``.

    With ``reading="map"`` the value is the fitted chain's expected one-step change
    ``E[V(X_{k+1})] − V(x) = 2(x − x*)·μΔt + |μ|²Δt² + tr σσᵀ Δt``
    (:func:`sdelm.theory.discrete_generator`, Δt = ``data.dt``); with ``reading="flow"``
    the continuous generator ``LV = 2(x − x*)·μ + tr σσᵀ`` (:func:`sdelm.theory.generator`).

    Args:
        model: A fitted SDE.
        data: A split; every valid state is used at its own time.
        center: Float tensor of size (dim,): ``x*``, e.g. a fixed point.
        bins: Number of distance quantile bins.
        reading: ``"flow"`` (continuous generator) or ``"map"`` (the chain's one-step change).

    Returns:
        One row per bin (nearest first): ``distance`` (mean ``|x − x*|``), ``LV`` (the mean
        value, whichever the reading), ``share_negative`` (share of states where it is
        negative: pulled towards ``x*``), ``states``.

    Raises:
        ValueError: On an unknown ``reading`` or states of the wrong size.

    """
    if reading not in ("flow", "map"):
        raise ValueError(f"reading must be 'flow' or 'map', got {reading!r}.")
    seq, step = data.mask.nonzero(as_tuple=True)
    x = data.states[seq, step]
    _check_states(model, x, "the split's states")
    if reading == "map":
        values = discrete_generator(model, x, data.times[step], center, dt=data.dt)
    else:
        values = generator(model, x, data.times[step], center)
    distance = (x - center).norm(dim=1).numpy()
    table = pd.DataFrame(
        {"bin": pd.qcut(distance, bins, labels=False), "distance": distance, "LV": values}
    )
    return table.groupby("bin").agg(
        distance=("distance", "mean"),
        LV=("LV", "mean"),
        share_negative=("LV", lambda v: float((v < 0).mean())),
        states=("LV", "size"),
    )


def finite_time_lyapunov(
    model: SDEModel,
    starts: torch.Tensor,
    *,
    horizon: float,
    t0: float = 0.0,
    dt: float = 0.25,
) -> np.ndarray:
    """Finite-time Lyapunov exponents of the continuous drift flow ẋ = μ(x, t).

    This is the continuous-time reading of a fitted drift; the fitted chain's own exponents
    are :func:`map_lyapunov`'s (the two agree only when the flow over one step and one step
    of the map move alike, i.e. when ``e^{J} ≈ I + J``). The flow map φ from ``t0`` to
    ``t0 + horizon`` is integrated by explicit Euler steps of ``dt``; its Jacobian ∂φ/∂x₀
    comes from automatic differentiation through the steps. The exponents are
    ``log(s_i) / horizon`` for its singular values ``s_i``. For a linear flow ẋ = A x with
    symmetric A they tend to the eigenvalues of A as ``dt → 0``.

    Args:
        model: A fitted SDE (only its drift is used).
        starts: Float tensor of size (n, dim): initial states.
        horizon: Flow time T (> 0).
        t0: Start time.
        dt: Integration step (> 0; ``horizon / dt`` is rounded to whole steps).

    Returns:
        Array of size (n, dim): each start's exponents, largest first.

    Raises:
        ValueError: On a non-positive ``horizon`` or ``dt``, or states of the wrong size.

    """
    if not horizon > 0 or not dt > 0:
        raise ValueError(f"horizon and dt must be positive, got horizon={horizon}, dt={dt}.")
    _check_states(model, starts, "starts")
    steps = max(1, round(horizon / dt))
    step = horizon / steps
    frozen = copy.deepcopy(model).eval()
    for parameter in frozen.parameters():
        parameter.requires_grad_(False)

    def flow(state: torch.Tensor) -> torch.Tensor:
        x = state.unsqueeze(0)
        for k in range(steps):
            time = torch.full((1,), t0 + k * step, dtype=x.dtype)
            x = x + frozen.drift(x, time) * step
        return x.squeeze(0)

    jacobians = vmap(jacrev(flow))(starts.detach().float())
    singular = torch.linalg.svdvals(jacobians.double())
    return (singular.clamp_min(1e-300).log() / horizon).numpy()


@torch.no_grad()
def drift_orbits(
    model: SDEModel, starts: torch.Tensor, steps: int, *, t0: float = 0.0, dt: float = 1.0
) -> torch.Tensor:
    """Noise-free paths of the map ``x_{k+1} = x_k + μ(x_k, t_k) Δt``, ``t_k = t0 + kΔt``.

    Args:
        model: A fitted SDE (only its drift is used).
        starts: Float tensor of size (n, dim): initial states.
        steps: Number of steps (a positive integer).
        t0: Time of the first state.
        dt: The map's step (> 0; the fitted chain's step).

    Returns:
        Float tensor of size (n, steps + 1, dim); index 0 is the start.

    Raises:
        ValueError: On a non-positive ``steps`` or ``dt``, or states of the wrong size.

    """
    if not isinstance(steps, int) or steps <= 0 or not dt > 0:
        raise ValueError(
            f"steps must be a positive integer and dt > 0, got steps={steps!r}, dt={dt!r}."
        )
    _check_states(model, starts, "starts")
    frozen = copy.deepcopy(model).eval()
    states = [starts.detach().float()]
    for k in range(steps):
        times = torch.full((len(starts),), t0 + k * dt)
        states.append(states[-1] + frozen.drift(states[-1], times) * dt)
    return torch.stack(states, dim=1)


def map_lyapunov(
    model: SDEModel, paths: torch.Tensor, *, t0: float = 0.0, dt: float = 1.0
) -> np.ndarray:
    """Finite-time Lyapunov exponents of the map ``x ↦ x + μ(x, t) Δt`` along paths.

    A small perturbation of ``x_0`` is carried by the product
    ``(I + J_{K−1}Δt) ⋯ (I + J_0Δt)`` of the map's Jacobians at the path's states
    (``J_k = ∂μ/∂x`` at ``(x_k, t0 + kΔt)``, float64). The product is accumulated by repeated
    QR factorisations (Benettin's method), so it neither overflows nor collapses onto one
    direction; the exponents are ``Σ_k log|R_k,ii| / (KΔt)``, per unit time (per token). Along
    the map's own noise-free orbits (:func:`drift_orbits`) they are the drift map's
    exponents; along simulated or observed paths, those of the linearised random map. For a
    linear map ``x ↦ Mx`` they tend to ``log|eig(M)| / Δt`` as K grows.

    Args:
        model: A fitted SDE (only its drift is used).
        paths: Float tensor of size (n, K + 1, dim), K ≥ 1: complete paths (no masked steps);
            the Jacobians are taken at states 0 … K − 1.
        t0: Time of each path's first state.
        dt: The map's step (> 0).

    Returns:
        Array of size (n, dim): each path's exponents, largest first.

    Raises:
        ValueError: On paths of the wrong size or with non-finite states, or ``dt <= 0``.

    """
    if paths.ndim != 3 or paths.shape[1] < 2 or paths.shape[2] != model.dim or len(paths) == 0:
        raise ValueError(
            f"paths must be a tensor of size (n, K + 1, {model.dim}) with n >= 1 and K >= 1 "
            f"for this {model.dim}-dimensional model, got {tuple(paths.shape)}."
        )
    if not torch.isfinite(paths).all():
        raise ValueError("paths contain non-finite states: pass complete, finite paths.")
    if not dt > 0:
        raise ValueError(f"dt must be > 0 (the fitted chain's step), got {dt!r}.")
    model64 = _float64_copy(model)
    n, steps, dim = len(paths), paths.shape[1] - 1, model.dim
    identity = torch.eye(dim, dtype=torch.float64)
    basis = identity.expand(n, dim, dim)
    logs = torch.zeros(n, dim, dtype=torch.float64)
    for k in range(steps):
        jac = _drift_jacobians(model64, paths[:, k].detach().double(), t0 + k * dt)
        basis, r = torch.linalg.qr((identity + jac * dt) @ basis)
        logs += r.diagonal(dim1=-2, dim2=-1).abs().clamp_min(1e-300).log()
    exponents = (logs / (steps * dt)).numpy()
    return -np.sort(-exponents, axis=1)


def pair_separation(data: SDEData, *, pairs: str = "same prompt") -> pd.DataFrame:
    """Distance between two sequences of one source and temperature, step by step.

    With ``pairs="same prompt"`` every two sequences that share a prompt, a source and a
    temperature form a pair; with ``pairs="different prompts"`` every two that share the source
    and temperature but not the prompt (the baseline: what separation looks like without a
    common prompt). Each pair contributes ``|X_k − X'_k|`` at every step ``k`` where both exist.

    Args:
        data: A split.
        pairs: ``"same prompt"`` or ``"different prompts"``.

    Returns:
        One row per pair and step: ``prompt_id`` and ``other_prompt_id`` (of the two
        sequences), ``temperature``, ``pair``, ``step``, ``separation``.

    Raises:
        ValueError: On an unknown ``pairs``, or when the split has no such pair.

    """
    if pairs not in ("same prompt", "different prompts"):
        raise ValueError(f"pairs must be 'same prompt' or 'different prompts', got {pairs!r}.")
    rows = data.rows.reset_index(drop=True)
    keys = ["source", "temperature"] + (["prompt_id"] if pairs == "same prompt" else [])
    prompts = rows["prompt_id"].to_numpy()
    frames = []
    for _, group in rows.groupby(keys, dropna=False):
        index = group.index.to_numpy()
        for a_pos, a in enumerate(index):
            for b in index[a_pos + 1 :]:
                if pairs == "different prompts" and prompts[a] == prompts[b]:
                    continue
                steps = np.flatnonzero((data.mask[a] & data.mask[b]).numpy())
                distance = (data.states[a, steps] - data.states[b, steps]).norm(dim=1).numpy()
                frames.append(
                    pd.DataFrame(
                        {
                            "prompt_id": prompts[a],
                            "other_prompt_id": prompts[b],
                            "temperature": rows.at[a, "temperature"],
                            "pair": len(frames),
                            "step": steps,
                            "separation": distance,
                        }
                    )
                )
    if not frames:
        raise ValueError(
            f"pair_separation found no pairs of sequences with {pairs!r}: collect with "
            "samples_per_prompt >= 2 (same prompt) or with at least two prompts."
        )
    return pd.concat(frames, ignore_index=True)
