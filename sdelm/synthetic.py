"""Synthetic SDEs with known answers, simulated exactly by their Euler–Maruyama chains.

Used by the tests (recovery of known drifts and diffusions), the benchmarks and the exercises:
an Ornstein–Uhlenbeck process with a known matrix and noise, and a 2-D double well with
state-dependent noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from sdelm.models import SDEModel
from sdelm.models.linear import OrnsteinUhlenbeck
from sdelm.trajectories import Trajectories

__all__ = [
    "OU_MATRIX",
    "OU_SIGMA",
    "DoubleWell",
    "as_trajectories",
    "double_well_diffusion",
    "double_well_drift",
    "double_well_paths",
    "euler_maruyama",
    "lines_of_thought_paths",
    "ou_model",
    "ou_paths",
]

Field = Callable[[torch.Tensor], torch.Tensor]

#: The drift matrix A of the synthetic OU process dX = A X dt + diag(σ) dW (a damped rotation).
OU_MATRIX = torch.tensor([[-0.5, 0.3, 0.0], [-0.3, -0.5, 0.0], [0.0, 0.0, -1.0]])
#: Its noise levels σ.
OU_SIGMA = torch.tensor([0.3, 0.5, 0.8])


def euler_maruyama(
    drift: Field, diffusion: Field, x0: torch.Tensor, steps: int, dt: float, seed: int = 0
) -> torch.Tensor:
    """Simulate X_{k+1} = X_k + μ(X_k) Δt + σ(X_k) √Δt ξ_k exactly.

    Args:
        drift: Maps states (n, dim) to drifts (n, dim).
        diffusion: Maps states (n, dim) to diagonal diffusions (n, dim).
        x0: Float tensor of size (n, dim): starting states.
        steps: Number of steps.
        dt: Time step.
        seed: Seed of the noise.

    Returns:
        Float tensor of size (n, steps + 1, dim).

    """
    generator = torch.Generator().manual_seed(seed)
    states = [x0]
    for _ in range(steps):
        x = states[-1]
        noise = torch.randn(x.shape, generator=generator)
        states.append(x + drift(x) * dt + diffusion(x) * dt**0.5 * noise)
    return torch.stack(states, dim=1)


def as_trajectories(paths: torch.Tensor, dt: float, per_prompt: int = 1) -> Trajectories:
    """Wrap paths (n, steps, dim) as generated trajectories, ``per_prompt`` rows per prompt id."""
    trajs = Trajectories.from_states(paths, dt=dt)
    trajs.rows["prompt_id"] = [f"p{i // per_prompt:04d}" for i in range(len(trajs))]
    trajs.rows["source"] = "generated"
    return trajs


def ou_paths(n: int = 300, steps: int = 50, dt: float = 0.1, seed: int = 0) -> torch.Tensor:
    """Paths (n, steps + 1, 3) of the OU process with :data:`OU_MATRIX` and :data:`OU_SIGMA`."""
    x0 = torch.randn(n, 3, generator=torch.Generator().manual_seed(seed + 1))
    return euler_maruyama(
        lambda x: x @ OU_MATRIX.T, lambda x: OU_SIGMA.expand_as(x), x0, steps, dt, seed
    )


def ou_model() -> OrnsteinUhlenbeck:
    """Return the true model of :func:`ou_paths`, an OU with the known matrix and noise."""
    model = OrnsteinUhlenbeck(3)
    with torch.no_grad():
        model.matrix.copy_(OU_MATRIX)
        model.log_sigma.copy_(OU_SIGMA.log())
    return model.eval()


def double_well_drift(x: torch.Tensor) -> torch.Tensor:
    """Drift (x₁ − x₁³, −x₂) of the double well: wells at x₁ = ±1."""
    return torch.stack([x[:, 0] - x[:, 0] ** 3, -x[:, 1]], dim=1)


def double_well_diffusion(x: torch.Tensor) -> torch.Tensor:
    """State-dependent noise ``0.3 + 0.3 |x₁|`` in both coordinates."""
    level = 0.3 + 0.3 * x[:, :1].abs()
    return level.expand_as(x)


class DoubleWell(SDEModel):
    """The double well as an :class:`~sdelm.models.SDEModel` (for analyses with known answers).

    Its drift has stable fixed points at (±1, 0) with Jacobian diag(−2, −1) and a saddle at the
    origin with Jacobian diag(1, −1).
    """

    def __init__(self) -> None:
        super().__init__(2)

    def drift(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # noqa: D102
        self.check_input(x)
        return double_well_drift(x)

    def diffusion(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # noqa: D102
        self.check_input(x)
        return double_well_diffusion(x)


def double_well_paths(n: int = 400, steps: int = 60, dt: float = 0.05, seed: int = 0):
    """Paths (n, steps + 1, 2) of the double well."""
    x0 = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed + 1)) * 0.8
    return euler_maruyama(double_well_drift, double_well_diffusion, x0, steps, dt, seed)


def lines_of_thought_paths(
    n: int = 400,
    steps: int = 24,
    dim: int = 8,
    *,
    alpha: float = 0.64,
    rate: float = 0.18,
    contraction: float = 0.9,
    seed: int = 0,
) -> torch.Tensor:
    """Paths (n, steps + 1, dim) of a Lines-of-Thought process with known noise law.

    ``x_{k+1} = c Q_k x_k + ε_k`` with a fixed random rotation ``Q_k`` per step, contraction
    ``c`` and isotropic Gaussian ``ε_k`` of variance ``alpha · exp(rate · k)`` per coordinate
    (time step 1); ``x_0`` is standard normal.
    """
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=generator)
    states = [x]
    for k in range(steps):
        rotation = torch.linalg.qr(torch.randn(dim, dim, generator=generator))[0]
        noise = torch.randn(n, dim, generator=generator) * (alpha * math.exp(rate * k)) ** 0.5
        x = contraction * x @ rotation.T + noise
        states.append(x)
    return torch.stack(states, dim=1)
