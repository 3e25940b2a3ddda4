"""The paper's model: a neural drift and a neural diffusion, two separate networks."""

from __future__ import annotations

import math

import torch
from torch import nn

from sdelm.models.base import SILU_LIPSCHITZ, SDEModel, mlp, with_time
from sdelm.noise import NoiseCorrelation

__all__ = ["NeuralSDE"]


class NeuralSDE(SDEModel):
    """The neural SDE: drift and diffusion are two separate MLPs of (x, t/time_scale).

    Args:
        dim: State dimension.
        hidden: Width of the hidden layers.
        depth: Number of hidden layers.
        time_scale: Time is fed to the networks as ``t / time_scale`` (e.g. the sequence
            length); ``0`` drops time (an autonomous SDE).
        spectral_norm: Divide every weight matrix by its spectral norm as estimated by power
            iteration (one step per training forward pass), which keeps the drift's Lipschitz
            constant near ``SILU_LIPSCHITZ ** depth``; :meth:`lipschitz_bound` computes the
            exact bound of the weights as they are.
        min_sigma: Floor added to the softplus diffusion.
        correlated: Correlate the noise's coordinates by a learnt constant
            :class:`~sdelm.noise.NoiseCorrelation`: the network gives the scales s(x, t) of
            diag(s) C dW. False: diagonal noise, the paper's model.
        seed: Seed of the weight initialisation (the global random state is left alone).

    """

    def __init__(
        self,
        dim: int,
        *,
        hidden: int = 128,
        depth: int = 2,
        time_scale: float = 48.0,
        spectral_norm: bool = False,
        min_sigma: float = 1e-3,
        correlated: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(dim)
        self.config.update(
            hidden=hidden,
            depth=depth,
            time_scale=time_scale,
            spectral_norm=spectral_norm,
            min_sigma=min_sigma,
            correlated=correlated,
            seed=seed,
        )
        self.time_scale = time_scale
        self.min_sigma = min_sigma
        n_in = dim + (1 if time_scale else 0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.drift_net = mlp(n_in, dim, hidden, depth, spectral_norm)
            self.diffusion_net = mlp(n_in, dim, hidden, depth, spectral_norm)
        if correlated:
            self.correlation = NoiseCorrelation(dim)
            self.noise_type = "general"

    def _features(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return with_time(x, t, self.time_scale)

    def drift(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.drift_net(self._features(x, t))

    def noise_scale(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return nn.functional.softplus(self.diffusion_net(self._features(x, t))) + self.min_sigma

    def diffusion(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # noqa: D102
        scale = self.noise_scale(x, t)
        return scale if self.correlation is None else self.correlation.marginal(scale)

    def lipschitz_bound(self) -> float:
        """Return an upper bound on the drift's Lipschitz constant in x.

        The product of the spectral norms of the drift network's weight matrices (the first
        restricted to the state columns) times SiLU's Lipschitz constant per activation.
        """
        linears = [m for m in self.drift_net if isinstance(m, nn.Linear)]
        norms = []
        for i, linear in enumerate(linears):
            weight = linear.weight.detach()
            if i == 0:
                weight = weight[:, : self.dim]
            norms.append(torch.linalg.matrix_norm(weight, ord=2).item())
        return math.prod(norms) * SILU_LIPSCHITZ ** (len(linears) - 1)
