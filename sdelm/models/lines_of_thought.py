"""The Lines-of-Thought model of layer-time trajectories (Sarfati, Liu, Boullé, Earls, 2025).

Along the layers of a transformer, the last token's state moves as
``x_{k+1} = M_k x_k + b_k + ε_k``: a linear rotation-and-stretch per layer plus isotropic
Gaussian noise whose variance grows exponentially with depth, ``Var ε_k = α e^{λ t_k} Δt``.
:class:`LayerLinear` is that model as an :class:`~sdelm.models.SDEModel` (so it has a
likelihood, can be compared with the other models and simulated by :func:`sdelm.simulate`):
its drift at step ``k`` is ``((M_k − I) x + b_k) / Δt`` and its noise is isotropic with
``σ²(t) = α e^{λ t}``. It works for any time axis: in token time it is a time-inhomogeneous
VAR(1).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import statsmodels.api as sm
import torch
from scipy import stats
from torch import nn

from sdelm.data import SDEData
from sdelm.models.base import SDEModel
from sdelm.models.linear import LinearDrift

__all__ = [
    "PUBLISHED",
    "ExponentialNoise",
    "LayerLinear",
    "LinesOfThought",
    "residual_diagnostics",
]

#: The Lines-of-Thought paper's figures for GPT-2 medium (24 layers, 1024 dimensions): noise
#: variance α e^{λ t} with α ≈ 0.64 and λ ≈ 0.18 per layer (≈ 0.27 for Llama-2-7B), and about a
#: quarter of the dimensions (256 of 1024) enough to describe the trajectories.
PUBLISHED = {"alpha": 0.64, "rate": 0.18, "rate_llama2_7b": 0.27, "dimension_fraction": 0.25}


class ExponentialNoise(SDEModel):
    """Isotropic noise whose variance per unit time grows as α e^{λ t}: the Lines-of-Thought law.

    A base for models that add a drift; both parameters start at 0 (α = 1, λ = 0).

    Args:
        dim: State dimension.

    """

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.log_alpha = nn.Parameter(torch.zeros(()))
        self.rate = nn.Parameter(torch.zeros(()))

    @property
    def alpha(self) -> float:
        """Noise variance per unit time at t = 0."""
        return float(self.log_alpha.detach().exp())

    def diffusion(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # noqa: D102
        self.check_input(x)
        log_variance = self.log_alpha + self.rate * t.to(x.dtype)
        return (0.5 * log_variance).exp().unsqueeze(-1).expand_as(x)


class LinesOfThought(LinearDrift, ExponentialNoise):
    """The Lines-of-Thought model: μ = A x + b, isotropic noise with variance α e^{λ t}.

    Args:
        dim: State dimension.

    """


class LayerLinear(ExponentialNoise):
    """One linear map per step and isotropic noise with variance α e^{λ t}.

    Args:
        dim: State dimension.
        n_steps: Steps per trajectory (``n_steps − 1`` maps).
        dt: Time step.

    """

    def __init__(self, dim: int, n_steps: int, dt: float = 1.0) -> None:
        super().__init__(dim)
        if not isinstance(n_steps, int) or n_steps < 2:
            raise ValueError(f"n_steps must be an integer >= 2, got {n_steps!r}.")
        self.config.update(n_steps=n_steps, dt=dt)
        self.dt = dt
        self.maps = nn.Parameter(torch.eye(dim).repeat(n_steps - 1, 1, 1))
        self.biases = nn.Parameter(torch.zeros(n_steps - 1, dim))

    def _step(self, t: torch.Tensor) -> torch.Tensor:
        return (t / self.dt).round().long().clamp(0, self.maps.shape[0] - 1)

    def drift(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # noqa: D102
        self.check_input(x)
        k = self._step(t.to(x.device))
        moved = torch.einsum("bij,bj->bi", self.maps[k], x) + self.biases[k]
        return (moved - x) / self.dt

    def fit_least_squares(
        self, data: SDEData, *, ridge: float = 1e-3, law_steps: Sequence[int] | None = None
    ) -> LayerLinear:
        """Fit the maps by ridge least squares per step, then the noise law by regression.

        Step ``k``'s map is the least-squares solution of ``x_{k+1} ≈ M_k x_k + b_k`` over the
        sequences valid at ``k`` and ``k + 1`` (ridge ``ridge`` times the mean squared state,
        on ``M_k`` only). Its residual variance per dimension ``v_k`` gives
        ``log(v_k / Δt) = log α + λ t_k``, fitted by ordinary least squares over ``law_steps``.

        Args:
            data: A training split with ``n_steps`` steps.
            ridge: Relative ridge penalty (≥ 0).
            law_steps: Steps whose variances enter the exponential law; default all (e.g.
                ``range(n_steps - 2)`` leaves out the last layer).

        Returns:
            ``self``, with :attr:`law` (``alpha``, ``rate``, ``rate_low``, ``rate_high``,
            ``r_squared``) and :attr:`step_variance` (array of ``v_k / Δt``) set.

        Raises:
            ValueError: If the split's steps differ from the model's, or a step has fewer valid
                transitions than ``dim + 2``.

        """
        n_maps = self.maps.shape[0]
        if data.states.shape[1] != n_maps + 1:
            raise ValueError(
                f"The model has {n_maps + 1} steps, the data {data.states.shape[1]}; build it "
                f"with n_steps={data.states.shape[1]}."
            )
        self.check_input(data.states[:, 0])
        variances = np.zeros(n_maps)
        maps = torch.empty_like(self.maps)
        biases = torch.empty_like(self.biases)
        for k in range(n_maps):
            valid = data.mask[:, k] & data.mask[:, k + 1]
            if int(valid.sum()) < self.dim + 2:
                raise ValueError(
                    f"Step {k} has {int(valid.sum())} valid transitions; LayerLinear needs at "
                    f"least dim + 2 = {self.dim + 2} per step. Use more sequences or a lower dim."
                )
            x = data.states[valid, k].double()
            y = data.states[valid, k + 1].double()
            design = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
            penalty = torch.eye(self.dim + 1, dtype=x.dtype) * ridge * x.pow(2).mean() * len(x)
            penalty[-1, -1] = 0
            solution = torch.linalg.solve(design.T @ design + penalty, design.T @ y)
            maps[k] = solution[:-1].T.float()
            biases[k] = solution[-1].float()
            variances[k] = float((y - design @ solution).pow(2).mean()) / self.dt
        steps = np.arange(n_maps) if law_steps is None else np.asarray(list(law_steps))
        times = steps * self.dt
        regression = sm.OLS(np.log(variances[steps]), sm.add_constant(times)).fit()
        low, high = regression.conf_int()[1]
        with torch.no_grad():
            self.maps.copy_(maps)
            self.biases.copy_(biases)
            self.log_alpha.fill_(float(regression.params[0]))
            self.rate.fill_(float(regression.params[1]))
        self.step_variance = variances
        self.law = {
            "alpha": self.alpha,
            "rate": float(regression.params[1]),
            "rate_low": float(low),
            "rate_high": float(high),
            "r_squared": float(regression.rsquared),
        }
        return self


@torch.no_grad()
def residual_diagnostics(model: SDEModel, data: SDEData) -> pd.DataFrame:
    """Check, step by step, whether a model's residuals ``ΔX − μ Δt`` are isotropic noise.

    Args:
        model: A fitted SDE (e.g. :class:`LayerLinear`).
        data: A split.

    Returns:
        One row per step ``k`` (the transition k → k + 1) with ``t``, ``transitions``,
        ``variance`` (mean squared residual per dimension, divided by Δt), ``predicted``
        (the model's mean σ² there), ``mean_ratio`` (the length of the mean residual over the
        residuals' root-mean-square length: near 0 when unbiased), ``excess_kurtosis``
        (of every residual coordinate, each standardised, pooled; 0 for Gaussian noise),
        ``anisotropy`` (largest eigenvalue of the residual covariance over the mean eigenvalue)
        and
        ``anisotropy_isotropic`` (what isotropic Gaussian noise gives for the same number of
        residuals, the Marchenko–Pastur edge ``(1 + √(dim/n))²``).

    """
    rows = []
    for k in range(data.states.shape[1] - 1):
        valid = data.mask[:, k] & data.mask[:, k + 1]
        n = int(valid.sum())
        if n < 2:
            continue
        x = data.states[valid, k]
        t = torch.full((n,), k * data.dt)
        residual = data.states[valid, k + 1] - x - model.drift(x, t) * data.dt
        centred = residual - residual.mean(dim=0)
        eigenvalues = torch.linalg.eigvalsh(centred.T @ centred / (n - 1))
        rows.append(
            {
                "step": k,
                "t": k * data.dt,
                "transitions": n,
                "variance": float(residual.pow(2).mean()) / data.dt,
                "predicted": float(model.diffusion(x, t).pow(2).mean()),
                "mean_ratio": float(
                    residual.mean(dim=0).norm() / residual.pow(2).sum(dim=1).mean().sqrt()
                ),
                "excess_kurtosis": float(
                    stats.kurtosis((centred / centred.std(dim=0)).flatten().numpy())
                ),
                "anisotropy": float(eigenvalues.max() / eigenvalues.mean()),
                "anisotropy_isotropic": (1 + (data.dim / n) ** 0.5) ** 2,
            }
        )
    return pd.DataFrame(rows)
