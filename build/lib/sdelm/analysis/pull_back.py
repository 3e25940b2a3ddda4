"""Whether far-out states are pulled back, and whether that is specific to the data.

The one-step Lyapunov drift of a fitted chain, ``ΔV(x) = E|X'|² − |x|²``
(:func:`sdelm.theory.discrete_generator`), is negative where the chain pulls a state towards
the centre in one step. Any mean-reverting process pulls its outer states back: for an AR(1)
with lag-one correlation ρ and stationary variance v, ``ΔV < 0`` wherever
``x² > (1 + ρ) v / 2``, and i.i.d. data (ρ = 0) qualify too. So the share of outer held-out
states that a model fitted to the data pulls back is compared with the same share on
surrogates of the same sequences (:mod:`sdelm.analysis.surrogates`), each with the same kind
of model refitted to it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from sdelm.analysis import surrogates
from sdelm.data import PreparedData
from sdelm.models import SDEModel
from sdelm.theory import discrete_generator

__all__ = ["OUTER", "pull_back_effects", "pull_back_frame"]

#: Held-out states whose distance from the centre is above this quantile are "outer".
OUTER = 0.75


def pull_back_frame(
    data: PreparedData,
    fitted: SDEModel,
    refit: Callable[[PreparedData], SDEModel],
    *,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per held-out transition's starting state, on the data and on each surrogate.

    Args:
        data: Prepared data (standardised coordinates: the centre is the origin).
        fitted: The model fitted to ``data``.
        refit: Fits the same kind of model to a surrogate's prepared data.
        seed: Seed of the surrogates.

    Returns:
        Columns ``series`` (``"data"`` and :data:`surrogates.KINDS`), ``prompt_id``, ``radius``
        (the distance from the centre), ``outer`` (radius above the series' :data:`OUTER`
        quantile) and ``pulled`` (ΔV < 0 under the series' model).

    """
    frames = []
    for series, prepared, model in surrogates.refitted(data, fitted, refit, seed=seed):
        moves = prepared.test.transitions()
        radius = moves.x.norm(dim=1).numpy()
        frames.append(
            pd.DataFrame(
                {
                    "series": series,
                    "prompt_id": prepared.test.transition_prompts(),
                    "radius": radius,
                    "outer": radius >= np.quantile(radius, OUTER),
                    "pulled": discrete_generator(model, moves.x, moves.t, dt=prepared.dt) < 0,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def pull_back_effects(frame: pd.DataFrame, *, seed: int = 0) -> dict[str, dict[str, float]]:
    """Measure the share of outer states pulled back, and its excess over each surrogate.

    Prompts are resampled, data and surrogates together
    (:func:`sdelm.analysis.surrogates.surrogate_effects`).

    Args:
        frame: From :func:`pull_back_frame`.
        seed: Seed of the bootstrap.

    Returns:
        ``{"data": ..., "var1": ..., ...}``: :func:`sdelm.stats.cluster_bootstrap` results;
        ``"data"`` is the share against the null ½, each surrogate kind the share on the data
        minus the share on that surrogate, against 0.

    """
    outer = frame[frame["outer"]]
    return surrogates.surrogate_effects(outer, "pulled", null=0.5, seed=seed)
