"""The one registry of SDE models: a short name for the command line, a label for the tables.

Every place that builds a model by name reads it here: the command line
(``sdelm fit --model``), :func:`sdelm.analysis.comparison.standard_models` and the chapters
(through the labels below), so a label is typed once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sdelm.models.base import SDEModel
from sdelm.models.linear import (
    BrownianDrift,
    NeuralDrift,
    OrnsteinUhlenbeck,
    RandomWalk,
    VectorAutoregression,
)
from sdelm.models.lines_of_thought import LayerLinear, LinesOfThought
from sdelm.models.neural import NeuralSDE

__all__ = ["NEURAL", "NEURAL_CORRELATED", "OU", "RANDOM_WALK", "VAR", "ZOO", "Entry", "label"]


@dataclass(frozen=True)
class Entry:
    """One model of the zoo.

    Attributes:
        key: Its name on the command line, e.g. ``"ou"``.
        label: Its name in the book's tables, e.g. ``"OU / VAR(1)"``.
        build: ``build(dim, seed, time_scale, hidden, depth)`` returns a fresh model;
            ``time_scale`` is the number of steps per trajectory.
        fit: Arguments of :func:`sdelm.fit` for it; ``{"least_squares": True}`` marks a
            linear model fitted in closed form.

    """

    key: str
    label: str
    build: Callable[[int, int, float, int, int], SDEModel]
    fit: dict[str, Any] = field(default_factory=dict)


def _neural(dim: int, seed: int, time_scale: float, hidden: int, depth: int) -> SDEModel:
    return NeuralSDE(dim, hidden=hidden, depth=depth, time_scale=time_scale, seed=seed)


def _correlated(dim: int, seed: int, time_scale: float, hidden: int, depth: int) -> SDEModel:
    return NeuralSDE(
        dim, hidden=hidden, depth=depth, time_scale=time_scale, correlated=True, seed=seed
    )


def _neural_drift(dim: int, seed: int, time_scale: float, hidden: int, depth: int) -> SDEModel:
    return NeuralDrift(dim, hidden=hidden, depth=depth, time_scale=time_scale, seed=seed)


_ENTRIES = (
    Entry("random-walk", "random walk", lambda d, *_: RandomWalk(d), {"lr": 3e-2}),
    Entry("brownian-drift", "Brownian + drift", lambda d, *_: BrownianDrift(d), {"lr": 3e-2}),
    Entry("ou", "OU / VAR(1)", lambda d, *_: OrnsteinUhlenbeck(d), {"least_squares": True}),
    Entry(
        "var",
        "VAR(1), full covariance",
        lambda d, *_: VectorAutoregression(d),
        {"least_squares": True},
    ),
    Entry(
        "lines-of-thought-one-map",
        "Lines of Thought",
        lambda d, *_: LinesOfThought(d),
        {"lr": 1e-2},
    ),
    Entry("neural-drift", "neural drift + σ floor", _neural_drift),
    Entry("neural", "neural SDE", _neural),
    Entry("neural-correlated", "neural SDE, correlated noise", _correlated),
    Entry("neural-paper-loss", "neural SDE (paper loss)", _neural, {"loss": "paper"}),
    Entry(
        "lines-of-thought",
        "Lines of Thought, map per step",
        lambda d, seed, time_scale, *_: LayerLinear(d, int(time_scale)),
        {"least_squares": True},
    ),
)
#: Every model by its command-line name, in the order of the book's tables.
ZOO: dict[str, Entry] = {entry.key: entry for entry in _ENTRIES}


def label(key: str) -> str:
    """Return the table label of the model named ``key`` (e.g. ``"ou"`` → ``"OU / VAR(1)"``)."""
    return ZOO[key].label


#: The paper's model.
NEURAL = label("neural")
#: The neural SDE whose noise correlates the coordinates (:mod:`sdelm.noise`).
NEURAL_CORRELATED = label("neural-correlated")
#: The Ornstein–Uhlenbeck process, a VAR(1) with diagonal noise.
OU = label("ou")
#: The strongest linear baseline: VAR(1) with a full noise covariance.
VAR = label("var")
#: The model without drift: each step an independent Gaussian kick.
RANDOM_WALK = label("random-walk")
