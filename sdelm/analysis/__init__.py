"""Analyses of fitted SDEs on held-out trajectories (chapters 4 onwards)."""

from sdelm.analysis import branching, drift_diffusion, kramers_moyal, phase, properties

__all__ = ["branching", "drift_diffusion", "kramers_moyal", "phase", "properties"]
