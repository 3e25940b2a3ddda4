"""Lyapunov exponents of a fitted SDE's drift, and how fast real sequences separate.

The likelihood fits the chain at the data's step (Δt = 1 token), so the primary reading is the
map ``x ↦ x + μ(x, t) Δt`` (:mod:`sdelm.analysis.phase`):

- :func:`map_lyapunov` gives Lyapunov exponents of the map along paths, from QR factorisations
  of the products of ``I + J(x_k) Δt``; :func:`drift_orbits` gives the map's noise-free paths;
- :func:`finite_time_lyapunov` gives the exponents of the continuous flow (the continuous
  reading);
- :func:`pair_separation` measures how far apart two sequences from the same prompt are, step
  by step: the data's own answer.
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import torch
from torch.func import jacrev, vmap

from sdelm.analysis.phase import check_states, drift_jacobians, float64_copy
from sdelm.data import SDEData
from sdelm.models import SDEModel

__all__ = ["drift_orbits", "finite_time_lyapunov", "map_lyapunov", "pair_separation"]


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
    check_states(model, starts, "starts")
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
    check_states(model, starts, "starts")
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
    model64 = float64_copy(model)
    n, steps, dim = len(paths), paths.shape[1] - 1, model.dim
    identity = torch.eye(dim, dtype=torch.float64)
    basis = identity.expand(n, dim, dim)
    logs = torch.zeros(n, dim, dtype=torch.float64)
    for k in range(steps):
        jac = drift_jacobians(model64, paths[:, k].detach().double(), t0 + k * dt)
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
