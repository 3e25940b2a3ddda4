"""Phase space of a fitted SDE: its drift as a flow, fixed points, stability, Lyapunov exponents.

The drift μ(x, t) of an SDE defines a deterministic flow ẋ = μ(x, t): the path the state would
follow without noise. This module looks at that flow the way a dynamical-systems course does,
at a frozen time ``t`` (the fitted models see time as an input):

- :func:`plane_field` evaluates μ and tr σσᵀ on a grid in a plane of two coordinates, the other
  coordinates held at a background state (a slice through the state space);
- :func:`fixed_points` solves μ(x, t) = 0 by damped Newton iterations from many starts, merges
  the solutions and classifies each by the eigenvalues of the Jacobian ∂μ/∂x there;
- :func:`finite_time_lyapunov` gives the finite-time Lyapunov exponents of the flow,
  ``(1/T) log s_i`` for the singular values ``s_i`` of the flow map's Jacobian: negative means
  that nearby states are drawn together (coherence), positive that they separate;
- :func:`pair_separation` measures the same question on trajectories themselves: how far apart
  two sequences from the same prompt are, step by step.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.func import jacrev, vmap

from sdelm.data import SDEData
from sdelm.describe import state_labels
from sdelm.models import SDEModel
from sdelm.theory import generator

__all__ = [
    "FixedPoint",
    "PlaneField",
    "finite_time_lyapunov",
    "fixed_point_table",
    "fixed_points",
    "generator_by_distance",
    "pair_separation",
    "plane_field",
    "plane_states",
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
    """A zero of the drift at a frozen time.

    Attributes:
        location: Float tensor of size (dim,).
        jacobian: Float tensor of size (dim, dim): ∂μ/∂x at the fixed point.
        eigenvalues: Complex array of size (dim,), sorted by decreasing real part.
        residual: ``|μ(location)|``.
        starts: How many of the Newton starts converged to this point.

    """

    location: torch.Tensor
    jacobian: torch.Tensor
    eigenvalues: np.ndarray
    residual: float
    starts: int

    @property
    def unstable_directions(self) -> int:
        """Number of eigenvalues with a positive real part."""
        return int((self.eigenvalues.real > 0).sum())

    @property
    def kind(self) -> str:
        """``"stable"`` (every Re λ < 0), ``"unstable"`` (every Re λ > 0) or ``"saddle"``."""
        if self.unstable_directions == 0:
            return "stable"
        if self.unstable_directions == len(self.eigenvalues):
            return "unstable"
        return "saddle"


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

    Returns:
        The fixed points, most frequently reached first; empty when no start converged.

    Raises:
        ValueError: If ``starts`` is not (n, dim) for the model.

    """
    _check_states(model, starts, "starts")
    model64 = copy.deepcopy(model).double().eval()
    for parameter in model64.parameters():
        parameter.requires_grad_(False)
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
            )
        )
    return points


def fixed_point_table(points: list[FixedPoint], states: torch.Tensor) -> pd.DataFrame:
    """Summarise fixed points and place them relative to a cloud of states.

    Args:
        points: From :func:`fixed_points`.
        states: Float tensor of size (n, dim), e.g. the valid held-out states.

    Returns:
        One row per fixed point: ``kind``, ``unstable_directions``, ``max_real`` and
        ``min_real`` (extreme real parts of the Jacobian's eigenvalues), ``max_imag``
        (largest rotation rate), ``residual`` (``|μ|``), ``starts``, ``distance`` (from the
        states' mean) and ``data_quantile`` (the share of states closer to the mean than the
        fixed point: above ~0.99 means outside the data).

    """
    centre = states.mean(dim=0)
    radii = (states - centre).norm(dim=1)
    rows = []
    for point in points:
        distance = float((point.location - centre).norm())
        rows.append(
            {
                "kind": point.kind,
                "unstable_directions": point.unstable_directions,
                "max_real": float(point.eigenvalues.real.max()),
                "min_real": float(point.eigenvalues.real.min()),
                "max_imag": float(np.abs(point.eigenvalues.imag).max()),
                "residual": point.residual,
                "starts": point.starts,
                "distance": distance,
                "data_quantile": float((radii < distance).float().mean()),
            }
        )
    return pd.DataFrame(rows).rename_axis("fixed point")


def generator_by_distance(
    model: SDEModel, data: SDEData, center: torch.Tensor, *, bins: int = 4
) -> pd.DataFrame:
    """Evaluate the generator of ``V = |x − x*|²`` on a split's states, by distance from ``x*``.

    Args:
        model: A fitted SDE.
        data: A split; every valid state is used at its own time.
        center: Float tensor of size (dim,): ``x*``, e.g. a fixed point.
        bins: Number of distance quantile bins.

    Returns:
        One row per bin (nearest first): ``distance`` (mean ``|x − x*|``), ``LV`` (mean),
        ``share_negative`` (share of states with ``LV < 0``, pulled towards ``x*``), ``states``.

    """
    seq, step = data.mask.nonzero(as_tuple=True)
    x = data.states[seq, step]
    _check_states(model, x, "the split's states")
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
    """Finite-time Lyapunov exponents of the drift flow ẋ = μ(x, t).

    The flow map φ from ``t0`` to ``t0 + horizon`` is integrated by explicit Euler steps of
    ``dt``; its Jacobian ∂φ/∂x₀ comes from automatic differentiation through the steps. The
    exponents are ``log(s_i) / horizon`` for its singular values ``s_i``. For a linear flow
    ẋ = A x with symmetric A they tend to the eigenvalues of A as ``dt → 0``.

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
