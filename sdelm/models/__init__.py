"""SDE models, and checkpoints that rebuild any of them.

The base class (:mod:`~sdelm.models.base`), the paper's neural SDE (:mod:`~sdelm.models.neural`),
the linear baselines (:mod:`~sdelm.models.linear`) and the layer-time model of "Lines of
Thought" (:mod:`~sdelm.models.lines_of_thought`).
"""

from sdelm.models.base import SILU_LIPSCHITZ, SDEModel
from sdelm.models.checkpoints import (
    CheckpointError,
    load_checkpoint,
    load_projection,
    save_checkpoint,
)
from sdelm.models.neural import NeuralSDE

__all__ = [
    "SILU_LIPSCHITZ",
    "CheckpointError",
    "NeuralSDE",
    "SDEModel",
    "load_checkpoint",
    "load_projection",
    "save_checkpoint",
]
