"""Analyses of fitted SDEs on held-out trajectories (chapters 4 onwards)."""

from sdelm.analysis import drift_diffusion, kramers_moyal, phase, properties

__all__ = ["drift_diffusion", "kramers_moyal", "phase", "properties"]
