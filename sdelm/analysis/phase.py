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
- :func:`generator_by_distance` the expected one-step change of ``|x − x*|²`` under the chain
  (or the continuous generator), by distance from ``x*``;

Lyapunov exponents of the map and the flow are in :mod:`sdelm.analysis.lyapunov`.
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
    "check_states",
    "drift_jacobians",
    "fixed_point_table",
    "fixed_points",
    "float64_copy",
    "frozen_time",
    "generator_by_distance",
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


def check_states(model: SDEModel, x: torch.Tensor, what: str) -> None:
    """Refuse states that are not a non-empty (n, model.dim) batch, naming them ``what``."""
    if x.ndim != 2 or x.shape[1] != model.dim or len(x) == 0:
        raise ValueError(
            f"{what} must be a non-empty tensor of size (n, {model.dim}) for this "
            f"{model.dim}-dimensional model, got {tuple(x.shape)}."
        )


def frozen_time(n: int, t: float) -> torch.Tensor:
    """Return ``n`` copies of the time ``t``, float64 (a drift read at one frozen time)."""
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


def float64_copy(model: SDEModel) -> SDEModel:
    """Return a float64 copy of ``model`` in evaluation mode, its parameters frozen."""
    model64 = copy.deepcopy(model).double().eval()
    for parameter in model64.parameters():
        parameter.requires_grad_(False)
    return model64


def drift_jacobians(model: SDEModel, x: torch.Tensor, t: float) -> torch.Tensor:
    """Jacobians ∂μ/∂x, size (n, dim, dim), of a float64 model at states (n, dim)."""

    def single(state: torch.Tensor) -> torch.Tensor:
        return model.drift(state.unsqueeze(0), frozen_time(1, t)).squeeze(0)

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
    check_states(model, starts, "starts")
    if not dt > 0:
        raise ValueError(f"dt must be > 0 (the fitted chain's step), got {dt!r}.")
    model64 = float64_copy(model)
    x = starts.detach().double().clone()
    times = frozen_time(len(x), t)
    residual = model64.drift(x, times).norm(dim=1)
    for _ in range(max_iter):
        active = residual > tol
        if not active.any():
            break
        jac = drift_jacobians(model64, x[active], t)
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
        jac = drift_jacobians(model64, location.unsqueeze(0), t)[0]
        eigenvalues = np.linalg.eigvals(jac.numpy())
        points.append(
            FixedPoint(
                location=location.float(),
                jacobian=jac.float(),
                eigenvalues=eigenvalues[np.argsort(-eigenvalues.real)],
                residual=float(model64.drift(location[None], frozen_time(1, t)).norm()),
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
    check_states(model, x, "the split's states")
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
