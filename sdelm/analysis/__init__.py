"""Analyses: the statistics of trajectories, fitted models and their comparison.

One concept per module: descriptives of the trajectories (chapter 1), K-fold comparison of
models (chapter 3), and the analyses of chapters 4 onwards, down to the headline findings
measured again on a second model (:mod:`~sdelm.analysis.findings`). They take tensors, models
and frames and return numbers and frames; none imports the language model or the book.
"""

from sdelm.analysis import (
    branching,
    comparison,
    contraction,
    descriptives,
    drift_diffusion,
    findings,
    kramers_moyal,
    layer_time,
    lyapunov,
    phase,
    properties,
    property_effects,
    pull_back,
    scoring,
    steering,
    surrogates,
)

__all__ = [
    "branching",
    "comparison",
    "contraction",
    "descriptives",
    "drift_diffusion",
    "findings",
    "kramers_moyal",
    "layer_time",
    "lyapunov",
    "phase",
    "properties",
    "property_effects",
    "pull_back",
    "scoring",
    "steering",
    "surrogates",
]
