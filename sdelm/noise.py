"""Correlated noise: σ(x, t) dW with coordinates that share their increments.

A diagonal diffusion draws each coordinate's noise independently. Hidden states projected on
principal components need not: their one-step residuals correlate (up to about 0.4 in the
book's data). :class:`NoiseCorrelation` is a constant unit-lower-triangular matrix ``C``; a
model with correlated noise moves by

    dX = μ(X, t) dt + diag(s(X, t)) C dW,

so that the increment's covariance is ``diag(s) C Cᵀ diag(s) Δt``: state-dependent scales
``s`` and a constant correlation. Its Cholesky factor is ``diag(s) C`` (lower triangular with
diagonal ``s``), so the log-determinant is ``2 Σ log s`` and whitening a residual is one
triangular solve with ``C`` for the whole batch. With ``C = I`` it is the diagonal noise of
every other model. A VAR(1) with a full noise covariance Σ = L Lᵀ is the case of constant
``s = diag L`` and ``C = diag(s)⁻¹ L`` (:class:`sdelm.models.linear.VectorAutoregression`).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["NoiseCorrelation"]


class NoiseCorrelation(nn.Module):
    """A constant unit-lower-triangular mixing matrix C of the noise (identity at the start).

    Args:
        dim: State dimension.

    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.lower = nn.Parameter(torch.zeros(dim, dim))

    def matrix(self) -> torch.Tensor:
        """Return C: ones on the diagonal, the learnt entries below it; size (dim, dim)."""
        eye = torch.eye(len(self.lower), dtype=self.lower.dtype, device=self.lower.device)
        return eye + torch.tril(self.lower, diagonal=-1)

    def set_covariance(self, covariance: torch.Tensor) -> torch.Tensor:
        """Set C from a covariance Σ = diag(s) C Cᵀ diag(s); return the scales s.

        Args:
            covariance: Symmetric positive-definite tensor of size (dim, dim).

        Returns:
            Float tensor of size (dim,): the diagonal of Σ's Cholesky factor.

        """
        factor = torch.linalg.cholesky(covariance.double())
        scale = factor.diagonal()
        with torch.no_grad():
            self.lower.copy_((factor / scale[:, None]).to(self.lower.dtype))
        return scale.to(self.lower.dtype)

    def marginal(self, scale: torch.Tensor) -> torch.Tensor:
        """Return each coordinate's own scale sqrt(diag Σ): s_i times the length of row i of C.

        Args:
            scale: Float tensor of size (batch, dim), the scales s.

        Returns:
            Float tensor of size (batch, dim).

        """
        return scale * self.matrix().norm(dim=1)

    def factor(self, scale: torch.Tensor) -> torch.Tensor:
        """Return the noise's Cholesky factor diag(s) C.

        Args:
            scale: Float tensor of size (batch, dim), the scales s.

        Returns:
            Float tensor of size (batch, dim, dim), lower triangular.

        """
        return scale.unsqueeze(-1) * self.matrix()

    def whiten(self, residual: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Return C⁻¹ (residual / s): independent coordinates of unit scale.

        Args:
            residual: Float tensor of size (batch, dim).
            scale: Float tensor of size (batch, dim), the scales s.

        Returns:
            Float tensor of size (batch, dim).

        """
        scaled = (residual / scale).T  # (dim, batch): one right-hand side per transition
        return torch.linalg.solve_triangular(self.matrix(), scaled, upper=False).T
