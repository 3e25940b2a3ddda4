"""What generation calls back while it samples: a temperature control and a state nudge.

:func:`sdelm.generation.extract` accepts any object with these methods; the laws that
implement them, fitted from an SDE, live in :mod:`sdelm.control`.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

__all__ = ["StateNudge", "TemperatureControl"]


class TemperatureControl(Protocol):
    """What :func:`sdelm.extract` calls before drawing each token.

    Attributes:
        layer: Hidden-state layer whose state the control reads (``None``: it reads none).

    """

    layer: int | None

    def __call__(
        self, step: int, state: torch.Tensor | None, logits: torch.Tensor, base: torch.Tensor
    ) -> torch.Tensor:
        """Return the temperatures of the tokens drawn at ``step``.

        Args:
            step: Index of the token about to be drawn (0 for the first generated token).
            state: Float tensor of size (batch, hidden_size): the state at :attr:`layer` after
                the previous generated token; ``None`` at step 0 or when ``layer`` is ``None``.
            logits: Float tensor of size (batch, vocab): the next-token logits.
            base: Float tensor of size (batch,): each sequence's base temperature.

        Returns:
            Float tensor of size (batch,), every entry > 0.

        """

    def describe(self) -> dict[str, Any]:
        """Return a JSON-serialisable description (recorded in the trajectories' metadata)."""


class StateNudge(Protocol):
    """What :func:`sdelm.extract` calls to move the last hidden state before each read-out.

    Attributes:
        layer: The layer it moves, which must be the model's last.

    """

    layer: int

    def __call__(self, step: int, state: torch.Tensor) -> torch.Tensor:
        """Return the moved state from which token ``step`` is read out.

        Args:
            step: Index of the token about to be drawn (>= 1: token 0 is read out from the
                prompt, which is not nudged).
            state: Float tensor of size (batch, hidden_size): the last layer's state after the
                previous generated token (the input of the model's output layer).

        Returns:
            Float tensor of size (batch, hidden_size).

        """

    def describe(self) -> dict[str, Any]:
        """Return a JSON-serialisable description (recorded in the trajectories' metadata)."""
