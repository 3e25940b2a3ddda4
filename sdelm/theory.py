"""Numerical checks of the SDE theory on fitted models (chapter 2).

* Existence and uniqueness need a Lipschitz drift: ``NeuralSDE.lipschitz_bound`` bounds it
  from spectral norms, :func:`empirical_lipschitz` measures it on data.
* Itô's moment equations: :func:`ou_moments` gives the exact Euler–Maruyama mean and covariance
  of a linear model; :func:`moment_balance` checks ``dm/dt = E[μ]`` and
  ``d tr C/dt = 2 E[(X − m)·μ] + E[|σ|²]`` on simulated paths of any model.
* Lyapunov stability: :func:`generator` evaluates LV for ``V(x) = |x − c|²``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from sdelm.baselines import OrnsteinUhlenbeck
from sdelm.models import SDEModel

__all__ = ["empirical_lipschitz", "generator", "moment_balance", "ou_moments"]


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

    LV < 0 means V decreases in expectation: the process is pulled back towards ``c``.

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
