"""Baseline SDEs that the neural SDE must beat on held-out data.

================================  ===================  ==========================================
model                             drift μ(x, t)        diffusion σ(x, t)
================================  ===================  ==========================================
:class:`RandomWalk`               0                    constant diagonal
:class:`BrownianDrift`            constant b           constant diagonal
:class:`OrnsteinUhlenbeck`        A x + b (VAR(1))     constant diagonal
:class:`VectorAutoregression`     A x + b (VAR(1))     constant, full covariance Σ
:class:`LinesOfThought`           A x + b              isotropic, σ² = α e^{λ t}
:class:`NeuralDrift`              MLP(x, t)            constant diagonal (a noise floor)
================================  ===================  ==========================================

The linear-drift models with constant noise also have a closed-form fit,
``fit_least_squares``, which is the maximum-likelihood estimate of the Euler–Maruyama
transition density: A and b by least squares (the same for both), then the residuals' variances
(OU) or their whole covariance (:class:`VectorAutoregression`, the VAR(1) of econometrics, e.g.
``statsmodels.tsa.api.VAR(...).fit(1)`` with its covariance's maximum-likelihood divisor).
"""

from __future__ import annotations

import torch
from torch import nn

from sdelm.data import SDEData, Transitions
from sdelm.models.base import SDEModel, mlp, with_time
from sdelm.noise import NoiseCorrelation

__all__ = [
    "BrownianDrift",
    "LinearDrift",
    "NeuralDrift",
    "OrnsteinUhlenbeck",
    "RandomWalk",
    "VectorAutoregression",
]


class _ConstantNoise(SDEModel):
    """A model whose diffusion is a constant diagonal, exp(log_sigma)."""

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.log_sigma = nn.Parameter(torch.zeros(dim))

    def diffusion(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.log_sigma.exp().expand_as(x)


class RandomWalk(_ConstantNoise):
    """Brownian motion: μ = 0, constant diagonal σ."""

    def drift(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # noqa: D102
        self.check_input(x)
        return torch.zeros_like(x)


class BrownianDrift(_ConstantNoise):
    """Brownian motion with a constant drift b and constant diagonal σ."""

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.bias = nn.Parameter(torch.zeros(dim))

    def drift(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # noqa: D102
        self.check_input(x)
        return self.bias.expand_as(x)


class LinearDrift(SDEModel):
    """A drift A x + b (the noise is left to subclasses)."""

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.matrix = nn.Parameter(torch.zeros(dim, dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def drift(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # noqa: D102
        self.check_input(x)
        return x @ self.matrix.T + self.bias

    def _least_squares(self, data: SDEData | Transitions) -> torch.Tensor:
        """Set A, b by least squares of dx/dt on [x, 1]; return the residuals (n, dim)."""
        tr = data.transitions() if isinstance(data, SDEData) else data
        self.check_input(tr.x)
        design = torch.cat([tr.x, torch.ones(len(tr), 1, dtype=tr.x.dtype)], dim=1).double()
        target = (tr.dx / tr.dt).double()
        solution = torch.linalg.lstsq(design, target).solution  # (dim + 1, dim)
        with torch.no_grad():
            self.matrix.copy_(solution[:-1].T.float())
            self.bias.copy_(solution[-1].float())
        return (tr.dx - self.drift(tr.x, tr.t) * tr.dt).detach()


class OrnsteinUhlenbeck(LinearDrift):
    """Ornstein–Uhlenbeck / VAR(1): μ = A x + b, constant diagonal σ."""

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.log_sigma = nn.Parameter(torch.zeros(dim))

    def diffusion(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # noqa: D102
        self.check_input(x)
        return self.log_sigma.exp().expand_as(x)

    def fit_least_squares(self, data: SDEData | Transitions) -> OrnsteinUhlenbeck:
        """Fit in closed form (the exact maximum-likelihood estimate); returns ``self``.

        Args:
            data: A split (its transitions are used) or transitions.

        """
        residuals = self._least_squares(data)
        dt = data.dt
        with torch.no_grad():
            self.log_sigma.copy_(0.5 * torch.log(residuals.pow(2).mean(dim=0) / dt))
        return self


class VectorAutoregression(LinearDrift):
    """VAR(1) with a full noise covariance: μ = A x + b, increments' covariance Σ Δt.

    The noise is diag(s) C dW with constant scales s and a constant unit-lower-triangular C
    (:class:`~sdelm.noise.NoiseCorrelation`), so Σ = diag(s) C Cᵀ diag(s) is any covariance.
    :class:`OrnsteinUhlenbeck` is the case C = I.

    Args:
        dim: State dimension.

    """

    noise_type = "general"

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.log_sigma = nn.Parameter(torch.zeros(dim))
        self.correlation = NoiseCorrelation(dim)

    def noise_scale(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # noqa: D102
        self.check_input(x)
        return self.log_sigma.exp().expand_as(x)

    def diffusion(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.correlation.marginal(self.noise_scale(x, t))

    def covariance(self) -> torch.Tensor:
        """Return Σ, the noise covariance per unit of time; size (dim, dim)."""
        factor = self.correlation.factor(self.log_sigma.exp().unsqueeze(0))[0]
        return factor @ factor.T

    def fit_least_squares(self, data: SDEData | Transitions) -> VectorAutoregression:
        """Fit in closed form (the exact maximum-likelihood estimate); returns ``self``.

        Args:
            data: A split (its transitions are used) or transitions.

        Raises:
            ValueError: If the residuals' covariance is singular (fewer transitions than
                dimensions, or coordinates that move together exactly).

        """
        residuals = self._least_squares(data).double()
        covariance = residuals.T @ residuals / (len(residuals) * data.dt)
        try:
            scale = self.correlation.set_covariance(covariance)
        except torch.linalg.LinAlgError as error:
            raise ValueError(
                f"The residuals' covariance of {len(residuals)} transitions in {self.dim} "
                "dimensions is singular; give more transitions or fewer dimensions."
            ) from error
        with torch.no_grad():
            self.log_sigma.copy_(scale.log().float())
        return self


class NeuralDrift(_ConstantNoise):
    """A neural drift with constant diagonal σ: a neural ODE plus a fitted noise floor.

    Args:
        dim: State dimension.
        hidden: Width of the hidden layers.
        depth: Number of hidden layers.
        time_scale: Time enters as ``t / time_scale``; 0 drops it.
        seed: Seed of the weight initialisation.

    """

    def __init__(
        self,
        dim: int,
        *,
        hidden: int = 128,
        depth: int = 2,
        time_scale: float = 48.0,
        seed: int = 0,
    ) -> None:
        super().__init__(dim)
        self.config.update(hidden=hidden, depth=depth, time_scale=time_scale, seed=seed)
        self.time_scale = time_scale
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.drift_net = mlp(dim + (1 if time_scale else 0), dim, hidden, depth, False)

    def drift(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # noqa: D102
        self.check_input(x)
        return self.drift_net(with_time(x, t, self.time_scale))
