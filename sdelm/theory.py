"""Numerical checks of the SDE theory on fitted models (chapter 2).

* Existence and uniqueness need a Lipschitz drift: ``NeuralSDE.lipschitz_bound`` bounds it
  from spectral norms, :func:`empirical_lipschitz` measures it on data.
* Itô's moment equations: :func:`ou_moments` gives the exact Euler–Maruyama mean and covariance
  of a linear model; :func:`moment_balance` checks ``dm/dt = E[μ]`` and
  ``d tr C/dt = 2 E[(X − m)·μ] + E[|σ|²]`` on simulated paths of any model.
* Lyapunov stability: :func:`generator` evaluates LV for ``V(x) = |x − c|²`` (the continuous
  reading), :func:`discrete_generator` the expected one-step change of V under the fitted chain.
* What a Δt-step likelihood identifies: the map x ↦ x + μ(x)Δt, not a continuous SDE.
  :func:`ou_transition` gives the exact map of a continuous OU process observed every Δt
  (``e^{AΔt}``, not ``I + AΔt``); :func:`real_logarithm` says whether a fitted linear map
  ``M = I + AΔt`` has a continuous-time reading at all (a real matrix logarithm).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.linalg
import torch

from sdelm.models import SDEModel
from sdelm.models.linear import OrnsteinUhlenbeck

__all__ = [
    "MatrixLogarithm",
    "discrete_generator",
    "empirical_lipschitz",
    "generator",
    "moment_balance",
    "ou_moments",
    "ou_transition",
    "real_logarithm",
]


@torch.no_grad()
def empirical_lipschitz(
    model: SDEModel,
    x: torch.Tensor,
    t: torch.Tensor,
    *,
    n_pairs: int = 4096,
    radius: float = 0.1,
    seed: int = 0,
) -> float:
    """Largest observed ‖μ(x) − μ(y)‖ / ‖x − y‖ over pairs near and between data states.

    Half the pairs are random pairs of data states, half a data state and a random point at
    distance ``radius`` from it (the local slope). This is a lower bound on the Lipschitz
    constant; a valid upper bound must exceed it.

    Args:
        model: The SDE.
        x: Float tensor of size (n, dim): data states.
        t: Float tensor of size (n,): their times.
        n_pairs: Pairs of each kind.
        radius: Distance of the local perturbations.
        seed: Seed of the pairs.

    Returns:
        The largest ratio.

    """
    generator = torch.Generator().manual_seed(seed)
    i = torch.randint(len(x), (n_pairs,), generator=generator)
    j = torch.randint(len(x), (n_pairs,), generator=generator)
    direction = torch.randn(n_pairs, x.shape[1], generator=generator)
    nearby = x[i] + radius * direction / direction.norm(dim=1, keepdim=True)
    ratios = []
    for a, b in ((x[i], x[j]), (x[i], nearby)):
        distance = (a - b).norm(dim=1)
        keep = distance > 1e-6
        change = (model.drift(a, t[i]) - model.drift(b, t[i])).norm(dim=1)
        ratios.append((change[keep] / distance[keep]).max())
    return float(torch.stack(ratios).max())


@torch.no_grad()
def ou_moments(
    model: OrnsteinUhlenbeck, mean0: torch.Tensor, cov0: torch.Tensor, steps: int, dt: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact mean and covariance of an OU model's Euler–Maruyama chain.

    m_{k+1} = m_k + (A m_k + b) Δt and C_{k+1} = (I + A Δt) C_k (I + A Δt)ᵀ + diag(σ²) Δt.

    Args:
        model: A linear-drift model with constant diagonal σ.
        mean0: Float tensor of size (dim,): the starting mean.
        cov0: Float tensor of size (dim, dim): the starting covariance.
        steps: Number of steps.
        dt: Time step.

    Returns:
        Means of size (steps + 1, dim) and covariances of size (steps + 1, dim, dim).

    """
    a = model.matrix.double()
    b = model.bias.double()
    noise = torch.diag(model.log_sigma.double().exp().pow(2) * dt)
    step = torch.eye(len(b), dtype=torch.float64) + a * dt
    means, covs = [mean0.double()], [cov0.double()]
    for _ in range(steps):
        means.append(means[-1] + (a @ means[-1] + b) * dt)
        covs.append(step @ covs[-1] @ step.T + noise)
    return torch.stack(means).float(), torch.stack(covs).float()


@torch.no_grad()
def moment_balance(
    model: SDEModel, paths: torch.Tensor, *, dt: float = 1.0, t0: float = 0.0
) -> pd.DataFrame:
    """Check Itô's moment equations on simulated paths, step by step.

    For the Euler–Maruyama chain, ``m_{k+1} − m_k = E[μ(X_k)] Δt`` and
    ``tr C_{k+1} − tr C_k = (2 E[(X_k − m_k)·μ] + E[|σ|²]) Δt + tr Cov(μ) Δt²``, exactly in
    expectation; the Monte Carlo paths show how closely they hold.

    Args:
        model: The SDE the paths were simulated from.
        paths: Float tensor of size (n_paths, steps + 1, dim).
        dt: Time step of the paths.
        t0: Time of the first step.

    Returns:
        One row per step k ≥ 1: ``step``, ``mean_mc`` and ``mean_predicted``
        (``|m_k − m_0|`` and ``|Σ E[μ] Δt|``), ``mean_gap`` (the norm of their difference),
        ``trace_mc`` and ``trace_predicted`` (``tr C_k − tr C_0`` and the accumulated
        right-hand side).

    """
    n_paths, n_steps, _ = paths.shape
    mean_change = torch.zeros(paths.shape[-1])
    trace_change = 0.0
    rows = []
    for k in range(n_steps - 1):
        x = paths[:, k]
        t = torch.full((n_paths,), t0 + k * dt)
        mu = model.drift(x, t)
        sigma = model.diffusion(x, t)
        centred = x - x.mean(dim=0)
        mean_change += mu.mean(dim=0) * dt
        trace_change += float(
            (2 * (centred * mu).sum(dim=1).mean() + sigma.pow(2).sum(dim=1).mean()) * dt
            + mu.var(dim=0).sum() * dt**2
        )
        rows.append(
            {
                "step": k + 1,
                "mean_mc": float((paths[:, k + 1].mean(dim=0) - paths[:, 0].mean(dim=0)).norm()),
                "mean_predicted": float(mean_change.norm()),
                "mean_gap": float(
                    (paths[:, k + 1].mean(dim=0) - paths[:, 0].mean(dim=0) - mean_change).norm()
                ),
                "trace_mc": float(paths[:, k + 1].var(dim=0).sum() - paths[:, 0].var(dim=0).sum()),
                "trace_predicted": trace_change,
            }
        )
    return pd.DataFrame(rows)


@torch.no_grad()
def generator(
    model: SDEModel, x: torch.Tensor, t: torch.Tensor, center: torch.Tensor | None = None
) -> np.ndarray:
    """Evaluate the generator of ``V(x) = |x − c|²``: ``LV = 2 (x − c)·μ + Σ σ_i²``.

    LV < 0 means V decreases in expectation: the process is pulled back towards ``c``. This is
    the continuous-time reading; the fitted Δt-step chain changes V in expectation by
    :func:`discrete_generator`, which adds ``|μ|² Δt²`` (so is never below ``LV Δt``).

    Args:
        model: The SDE.
        x: Float tensor of size (n, dim).
        t: Float tensor of size (n,).
        center: Float tensor of size (dim,); default the origin.

    Returns:
        Array of size (n,).

    """
    center = torch.zeros(x.shape[1]) if center is None else center
    mu = model.drift(x, t)
    sigma = model.diffusion(x, t)
    return (2 * ((x - center) * mu).sum(dim=1) + sigma.pow(2).sum(dim=1)).numpy()


@torch.no_grad()
def discrete_generator(
    model: SDEModel,
    x: torch.Tensor,
    t: torch.Tensor,
    center: torch.Tensor | None = None,
    *,
    dt: float = 1.0,
) -> np.ndarray:
    """Evaluate the expected one-step change of ``V(x) = |x − c|²`` under the fitted chain.

    For the Euler–Maruyama chain ``X' = x + μ Δt + σ √Δt ξ``,
    ``E[V(X')] − V(x) = 2 (x − c)·μ Δt + |μ|² Δt² + Σ σ_i² Δt``, exactly (the chain fitted
    by the likelihood, read as a map). Negative means the chain is pulled towards ``c`` in one
    step.

    Args:
        model: The SDE.
        x: Float tensor of size (n, dim).
        t: Float tensor of size (n,).
        center: Float tensor of size (dim,); default the origin.
        dt: The chain's step (> 0).

    Returns:
        Array of size (n,).

    Raises:
        ValueError: On a non-positive ``dt``.

    """
    if not dt > 0:
        raise ValueError(f"dt must be > 0, got {dt!r}.")
    center = torch.zeros(x.shape[1]) if center is None else center
    mu = model.drift(x, t)
    sigma = model.diffusion(x, t)
    return (
        2 * ((x - center) * mu).sum(dim=1) * dt
        + mu.pow(2).sum(dim=1) * dt**2
        + sigma.pow(2).sum(dim=1) * dt
    ).numpy()


def ou_transition(
    matrix: torch.Tensor, sigma: torch.Tensor, dt: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact one-step map of the continuous OU process ``dX = A X dt + diag(σ) dW``.

    Observed every ``dt``, the process is the linear chain ``X' = M X + ε`` with
    ``M = e^{A Δt}`` and ``ε ~ N(0, Q)``, ``Q = ∫₀^Δt e^{As} diag(σ²) e^{Aᵀs} ds`` (Van Loan's
    block exponential). An Euler–Maruyama fit at this ``dt`` estimates ``I + Â Δt = M``.

    Args:
        matrix: Float tensor of size (dim, dim): A.
        sigma: Float tensor of size (dim,): the noise levels σ.
        dt: Observation step (> 0).

    Returns:
        ``M`` and ``Q``, float64 tensors of size (dim, dim).

    Raises:
        ValueError: On a non-square ``matrix``, a ``sigma`` of another size, or ``dt <= 0``.

    """
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or sigma.shape != matrix.shape[:1]:
        raise ValueError(
            "matrix must be (dim, dim) and sigma (dim,), got "
            f"{tuple(matrix.shape)} and {tuple(sigma.shape)}."
        )
    if not dt > 0:
        raise ValueError(f"dt must be > 0, got {dt!r}.")
    a = matrix.detach().double().numpy()
    dim = len(a)
    block = np.zeros((2 * dim, 2 * dim))
    block[:dim, :dim] = -a
    block[:dim, dim:] = np.diag(sigma.detach().double().numpy() ** 2)
    block[dim:, dim:] = a.T
    exponential = scipy.linalg.expm(block * dt)
    step = exponential[dim:, dim:].T
    noise = step @ exponential[:dim, dim:]
    return torch.from_numpy(step), torch.from_numpy((noise + noise.T) / 2)


@dataclass(frozen=True)
class MatrixLogarithm:
    """Whether a one-step map ``M`` is the time-Δt map of a linear ODE ``ẋ = A x``.

    Attributes:
        exists: True when ``M`` has a real principal logarithm (no eigenvalue on the closed
            negative real axis).
        generator: Float64 array of size (dim, dim): ``A = log(M) / Δt`` when it exists, else
            None.
        eigenvalues: Complex array of size (dim,): the eigenvalues of ``M``, nearest to the
            closed negative real axis first.
        obstructions: Complex array: the eigenvalues of ``M`` on the closed negative real axis
            (within the tolerance); each one rules out a continuous reading.
        distance: Distance of the nearest eigenvalue of ``M`` to the closed negative real axis
            (0 for an obstruction). Small but positive means a continuous reading exists only
            with a rotation of nearly half a turn per step.

    """

    exists: bool
    generator: np.ndarray | None
    eigenvalues: np.ndarray
    obstructions: np.ndarray
    distance: float


def real_logarithm(step: torch.Tensor, *, dt: float = 1.0, tol: float = 1e-9) -> MatrixLogarithm:
    """Test whether a fitted linear map has a continuous-time reading.

    A real ``M`` is ``e^{A Δt}`` for a real ``A`` with eigenvalues in the strip
    ``|Im λ| < π / Δt`` exactly when no eigenvalue of ``M`` lies on the closed negative real
    axis (the principal logarithm is then real). A real eigenvalue ``≤ 0`` of a fitted ``M``
    (e.g. ``I + AΔt`` with a drift eigenvalue ``≤ −1/Δt``) rules it out: the map reverses or
    annihilates a direction in one step, which no continuous flow does (a non-principal real
    logarithm would need every negative eigenvalue's Jordan blocks in identical pairs, which a
    fitted matrix never has). The model is then a discrete-time AR(1) map, not a sampled SDE.

    Args:
        step: Float tensor of size (dim, dim): the one-step map ``M``, e.g. ``I + A Δt``.
        dt: The step Δt (> 0); the returned generator is ``log(M) / Δt``.
        tol: Relative tolerance for an eigenvalue to count as real and non-positive.

    Returns:
        The test's result.

    Raises:
        ValueError: On a non-square or non-finite ``step`` or ``dt <= 0``.

    """
    if step.ndim != 2 or step.shape[0] != step.shape[1] or not torch.isfinite(step).all():
        raise ValueError(
            f"step must be a finite square matrix (the map M = I + A dt), got size "
            f"{tuple(step.shape)}."
        )
    if not dt > 0:
        raise ValueError(f"dt must be > 0, got {dt!r}.")
    m = step.detach().double().numpy()
    eigenvalues = np.linalg.eigvals(m)
    scale = max(1.0, float(np.abs(eigenvalues).max()))
    distance = np.where(eigenvalues.real <= 0, np.abs(eigenvalues.imag), np.abs(eigenvalues))
    order = np.argsort(distance, kind="stable")
    obstructions = eigenvalues[distance <= tol * scale]
    exists = len(obstructions) == 0
    generator = np.real(scipy.linalg.logm(m)) / dt if exists else None
    return MatrixLogarithm(
        exists=exists,
        generator=generator,
        eigenvalues=eigenvalues[order],
        obstructions=obstructions,
        distance=float(distance.min()),
    )
