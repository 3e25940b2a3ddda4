"""Analyses of fitted SDEs on held-out trajectories (chapters 4 onwards)."""

from sdelm.analysis import (
    branching,
    contraction,
    cross_model,
    drift_diffusion,
    kramers_moyal,
    phase,
    properties,
    pull_back,
    steering,
    surrogates,
)

__all__ = [
    "branching",
    "contraction",
    "cross_model",
    "drift_diffusion",
    "kramers_moyal",
    "phase",
    "properties",
    "pull_back",
    "steering",
    "surrogates",
]
