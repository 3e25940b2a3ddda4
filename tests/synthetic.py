"""Synthetic SDEs with known answers, simulated exactly by their Euler–Maruyama chains."""

from __future__ import annotations

from collections.abc import Callable

import torch

from sdelm import Trajectories

Field = Callable[[torch.Tensor], torch.Tensor]


def euler_maruyama(
    drift: Field, diffusion: Field, x0: torch.Tensor, steps: int, dt: float, seed: int = 0
) -> torch.Tensor:
    """Paths (n, steps + 1, dim) of X_{k+1} = X_k + μ(X_k) dt + σ(X_k) √dt ξ_k."""
    generator = torch.Generator().manual_seed(seed)
    states = [x0]
    for _ in range(steps):
        x = states[-1]
        noise = torch.randn(x.shape, generator=generator)
        states.append(x + drift(x) * dt + diffusion(x) * dt**0.5 * noise)
    return torch.stack(states, dim=1)


def as_trajectories(paths: torch.Tensor, dt: float, per_prompt: int = 1) -> Trajectories:
    """Wrap paths, giving every ``per_prompt`` consecutive rows one prompt id."""
    trajs = Trajectories.from_states(paths, dt=dt)
    trajs.rows["prompt_id"] = [f"p{i // per_prompt:04d}" for i in range(len(trajs))]
    trajs.rows["source"] = "generated"
    return trajs


OU_MATRIX = torch.tensor([[-0.5, 0.3, 0.0], [-0.3, -0.5, 0.0], [0.0, 0.0, -1.0]])
OU_SIGMA = torch.tensor([0.3, 0.5, 0.8])


def ou_paths(n: int = 300, steps: int = 50, dt: float = 0.1, seed: int = 0) -> torch.Tensor:
    x0 = torch.randn(n, 3, generator=torch.Generator().manual_seed(seed + 1))
    return euler_maruyama(
        lambda x: x @ OU_MATRIX.T, lambda x: OU_SIGMA.expand_as(x), x0, steps, dt, seed
    )


def double_well_drift(x: torch.Tensor) -> torch.Tensor:
    return torch.stack([x[:, 0] - x[:, 0] ** 3, -x[:, 1]], dim=1)


def double_well_diffusion(x: torch.Tensor) -> torch.Tensor:
    level = 0.3 + 0.3 * x[:, :1].abs()
    return level.expand_as(x)


def double_well_paths(n: int = 400, steps: int = 60, dt: float = 0.05, seed: int = 0):
    x0 = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed + 1)) * 0.8
    return euler_maruyama(double_well_drift, double_well_diffusion, x0, steps, dt, seed)
