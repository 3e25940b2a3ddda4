"""Whether the drift map contracts, and whether that is specific to the data.

The largest finite-time Lyapunov exponent of a fitted drift map, along its own noise-free
orbits (:func:`~sdelm.analysis.lyapunov.drift_orbits`,
:func:`~sdelm.analysis.lyapunov.map_lyapunov`), is negative where nearby states converge
without noise. Any stable linear map contracts too: a Gaussian VAR(1) ``x ↦ Ax + b`` has
exponents ``log|eig(A)|``, all negative, and a model fitted to states without memory (shuffled
in time, or i.i.d.) pulls every state to the mean within a token. So the exponent of the model
fitted to the data is compared with that of the same kind of model refitted to each surrogate
of the same sequences (:mod:`sdelm.analysis.surrogates`).
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from sdelm.analysis import lyapunov, surrogates
from sdelm.data import PreparedData
from sdelm.models import SDEModel

__all__ = ["largest_exponent_effects", "largest_exponent_frame"]


def largest_exponent_frame(
    data: PreparedData,
    fitted: SDEModel,
    refit: Callable[[PreparedData], SDEModel],
    *,
    horizon: int,
    seed: int = 0,
) -> pd.DataFrame:
    """Measure the largest exponent of each series' drift map from held-out first states.

    Args:
        data: Prepared data (e.g. one cross-validation fold: its test prompts are read).
        fitted: The model fitted to ``data``.
        refit: Fits the same kind of model to a surrogate's prepared data.
        horizon: Tokens of the map over which the exponents are measured.
        seed: Seed of the surrogates.

    Returns:
        One row per test sequence of each series: ``series``
        (``"data"`` and :data:`~sdelm.analysis.surrogates.KINDS`), ``prompt_id`` and
        ``largest`` (per token).

    """
    frames = []
    for series, prepared, model in surrogates.refitted(data, fitted, refit, seed=seed):
        held_out = prepared.test
        orbits = lyapunov.drift_orbits(model, held_out.states[:, 0], horizon)
        frames.append(
            pd.DataFrame(
                {
                    "series": series,
                    "prompt_id": held_out.rows["prompt_id"].to_numpy(),
                    "largest": lyapunov.map_lyapunov(model, orbits)[:, 0],
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def largest_exponent_effects(frame: pd.DataFrame, *, seed: int = 0) -> dict[str, dict[str, float]]:
    """Measure the mean largest exponent on the data, and its excess over each surrogate.

    Args:
        frame: From :func:`largest_exponent_frame`.
        seed: Seed of the bootstrap (prompts, data and surrogates together).

    Returns:
        ``{"data": ..., "var1": ..., ...}``: :func:`sdelm.stats.cluster_bootstrap` results;
        ``"data"`` is the mean against 0 (no contraction), each surrogate kind the data's mean
        minus that surrogate's.

    """
    return surrogates.surrogate_effects(frame, "largest", null=0.0, seed=seed)
