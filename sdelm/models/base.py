"""The base of every SDE model dX = μ(X, t) dt + σ(X, t) dW, and the networks they share.

Every model is a :class:`SDEModel`: a ``torch.nn.Module`` with ``drift(x, t)`` and
``diffusion(x, t)`` for batches of states, and the ``f``/``g``/``noise_type``/``sde_type``
interface that ``torchsde`` integrates directly. The noise is diagonal (each coordinate draws
its own), or correlated by a constant :class:`~sdelm.noise.NoiseCorrelation` (``correlation``),
in which case ``diffusion`` gives each coordinate's own scale and ``g`` the full factor.
Each subclass registers itself in :data:`MODEL_CLASSES`, so a checkpoint names its class.
"""

from __future__ import annotations

import itertools
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from sdelm.noise import NoiseCorrelation

__all__ = ["MODEL_CLASSES", "SILU_LIPSCHITZ", "SDEModel", "mlp", "with_time"]

#: Lipschitz constant of SiLU: the largest absolute slope of x·sigmoid(x).
SILU_LIPSCHITZ = 1.0998
#: Every model class by name, filled as each class is defined (read by checkpoints).
MODEL_CLASSES: dict[str, type[SDEModel]] = {}


class SDEModel(nn.Module):
    """Base class: an Itô SDE on R^dim, with diagonal or correlated noise.

    Subclasses implement :meth:`drift` and :meth:`diffusion`, store their constructor
    arguments in ``self.config`` and are registered for :func:`load_checkpoint`. A subclass
    with correlated noise sets ``correlation`` (and ``noise_type = "general"``) and overrides
    :meth:`noise_scale`.
    """

    noise_type: str = "diagonal"
    sde_type: ClassVar[str] = "ito"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        MODEL_CLASSES[cls.__name__] = cls

    def __init__(self, dim: int) -> None:
        super().__init__()
        if not isinstance(dim, int) or dim <= 0:
            raise ValueError(f"dim must be a positive integer, got {dim!r}.")
        self.dim = dim
        self.config: dict[str, Any] = {"dim": dim}
        #: The noise's constant correlation; None where coordinates draw it independently.
        self.correlation: NoiseCorrelation | None = None

    def drift(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Drift μ(x, t).

        Args:
            x: Float tensor of size (batch, dim).
            t: Float tensor of size (batch,).

        Returns:
            Float tensor of size (batch, dim).

        """
        raise NotImplementedError

    def diffusion(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Each coordinate's noise scale σ(x, t), positive: sqrt of the diagonal of σσᵀ.

        Args:
            x: Float tensor of size (batch, dim).
            t: Float tensor of size (batch,).

        Returns:
            Float tensor of size (batch, dim).

        """
        raise NotImplementedError

    def noise_scale(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Scales s(x, t) of the noise diag(s) C dW before its correlation C.

        The diffusion itself where the noise is diagonal.

        Args:
            x: Float tensor of size (batch, dim).
            t: Float tensor of size (batch,).

        Returns:
            Float tensor of size (batch, dim), positive.

        """
        return self.diffusion(x, t)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a clear error when states have the wrong dimension."""
        if x.ndim != 2 or x.shape[-1] != self.dim:
            raise ValueError(
                f"{type(self).__name__} models {self.dim}-dimensional states, got a tensor of "
                f"size {tuple(x.shape)}; prepare the data with dim={self.dim} or build the "
                f"model with dim={x.shape[-1]}."
            )

    def f(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Drift in torchsde's convention: scalar ``t``, states (batch, dim)."""
        return self.drift(y, torch.as_tensor(t, dtype=y.dtype, device=y.device).expand(len(y)))

    def g(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Diffusion in torchsde's convention: scalar ``t``, states (batch, dim).

        Returns:
            The diagonal, size (batch, dim); with correlated noise the factor diag(s) C,
            size (batch, dim, dim) (torchsde's ``"general"`` noise).

        """
        times = torch.as_tensor(t, dtype=y.dtype, device=y.device).expand(len(y))
        if self.correlation is None:
            return self.diffusion(y, times)
        return self.correlation.factor(self.noise_scale(y, times))

    def extra_repr(self) -> str:
        """Show the constructor arguments in the module's repr."""
        return ", ".join(f"{k}={v}" for k, v in self.config.items())


def with_time(x: torch.Tensor, t: torch.Tensor, time_scale: float) -> torch.Tensor:
    """Append the feature t / time_scale to states (batch, dim); nothing when time_scale is 0."""
    if not time_scale:
        return x
    return torch.cat([x, (t / time_scale).unsqueeze(-1).to(x.dtype)], dim=-1)


def mlp(n_in: int, n_out: int, hidden: int, depth: int, normalise: bool) -> nn.Sequential:
    """Return a SiLU network n_in -> n_out with ``depth`` hidden layers (spectral norm: opt-in)."""
    sizes = [n_in, *[hidden] * depth, n_out]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        linear = nn.Linear(a, b)
        layers.append(spectral_norm(linear) if normalise else linear)
        if i < len(sizes) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)
