"""The growth of the layer-time noise, α·e^{λt}, as effects that resample pieces of text.

Lines of Thought fit one linear map per layer and the law α·e^{λt} to the variance of the
maps' residuals, in coordinates that keep the states' scale. State norms grow about 100-fold
through a model's layers, so a λ > 0 there may only say that everything grows. Each λ is
therefore measured twice (:func:`residual_frame`):

- ``variance``: the held-out residual variance per dimension, in the states' own scale (Lines
  of Thought's procedure);
- ``normalised``: the same divided by the variance of the held-out states at the layer the
  step arrives at: the share of a layer's spread that its map leaves unexplained.

λ is the slope of log mean residual variance on the layer, and its interval resamples the
held-out pieces (:func:`growth_effects`), not the 29 correlated layers of one OLS fit. The
nulls (gibberish, an untrained twin) read the same pieces, so a difference of λ between a set
and a null resamples the pieces of both together.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from sdelm.data import prepare
from sdelm.lines_of_thought import LayerLinear
from sdelm.stats import cluster_bootstrap
from sdelm.trajectories import Trajectories

__all__ = ["COLUMNS", "growth_effects", "growth_rate", "residual_frame"]

#: The two readings of the residual variance: in the states' scale, and per-layer normalised.
COLUMNS = ("variance", "normalised")


def residual_frame(layer_trajs: Trajectories, *, dim: int, seed: int = 0) -> pd.DataFrame:
    """Held-out residual variance of a Lines-of-Thought fit, per piece and layer.

    One linear map per layer is fitted by least squares on half of the pieces, in PCA
    coordinates that keep the states' scale; its residuals are measured on the other 40% (the
    split is by piece, seeded, so sets of the same pieces hold out the same ones).

    Args:
        layer_trajs: Layer-time trajectories (steps are layers).
        dim: PCA dimension.
        seed: Seed of the piece split.

    Returns:
        One row per held-out piece and layer t of the law (blocks 1 to L − 2, as in the
        layer-time chapter): ``prompt_id``, ``layer``, ``variance`` (per dimension) and
        ``normalised`` (``variance`` over the held-out states' variance per dimension at
        layer t + 1).

    """
    data = prepare(layer_trajs, dim=dim, standardise=False, split=(0.5, 0.1, 0.4), seed=seed)
    n_steps = data.train.states.shape[1]
    law = range(1, n_steps - 2)
    model = LayerLinear(dim, n_steps).fit_least_squares(data.train, law_steps=law)
    test = data.test
    frames = []
    with torch.no_grad():
        for layer in law:
            valid = test.mask[:, layer] & test.mask[:, layer + 1]
            x = test.states[valid, layer]
            t = torch.full((len(x),), layer * test.dt)
            predicted = x + model.drift(x, t) * test.dt
            arrived = test.states[valid, layer + 1]
            variance = (arrived - predicted).pow(2).mean(-1)
            spread = (arrived - arrived.mean(0)).pow(2).mean()
            ids = test.rows["prompt_id"].to_numpy()[valid.numpy()]
            frames.append(
                pd.DataFrame(
                    {
                        "prompt_id": ids,
                        "layer": layer,
                        "variance": variance.numpy(),
                        "normalised": (variance / spread).numpy(),
                    }
                )
            )
    return pd.concat(frames, ignore_index=True)


def growth_rate(frame: pd.DataFrame, column: str = "variance") -> float:
    """λ: the slope of the log of the mean ``column`` over pieces against the layer."""
    means = frame.groupby("layer")[column].mean()
    return float(np.polyfit(means.index.to_numpy(float), np.log(means.to_numpy()), 1)[0])


def _rate(values: np.ndarray, layers: np.ndarray) -> float:
    return float(np.polyfit(layers, np.log(values.mean(0)), 1)[0])


def growth_effects(
    frames: dict[str, pd.DataFrame],
    *,
    reference: str = "human",
    compared: tuple[str, ...] = ("gibberish", "untrained"),
    seed: int = 0,
) -> pd.DataFrame:
    """λ of every set in both readings, and the reference set's λ minus each other set's.

    Args:
        frames: :func:`residual_frame` of each set, by name.
        reference: The set the ``compared`` sets are compared with.
        compared: Sets that hold out the same pieces as ``reference`` (nulls made from its
            texts).
        seed: Seed of the bootstrap.

    Returns:
        One row per effect, indexed by ``set`` (a name, or ``"{reference} − {name}"``) and
        ``reading`` (:data:`COLUMNS`): :func:`sdelm.stats.cluster_bootstrap`'s ``estimate``,
        ``low``, ``high``, ``p_value`` (against λ = 0) and ``n_clusters`` (pieces).

    Raises:
        ValueError: If a compared set holds out other pieces or layers than ``reference``.

    """
    arrays = {}
    for name, frame in frames.items():
        wide = {c: frame.pivot(index="prompt_id", columns="layer", values=c) for c in COLUMNS}
        arrays[name] = wide
    base = arrays[reference]["variance"]
    pieces = pd.DataFrame({"prompt_id": base.index, "row": np.arange(len(base))})
    layers = base.columns.to_numpy(float)
    rows = []
    for name, wide in arrays.items():
        for column in COLUMNS:
            values = wide[column].to_numpy()
            own = pd.DataFrame({"prompt_id": wide[column].index, "row": np.arange(len(values))})
            measured = cluster_bootstrap(
                own, lambda r, v=values: _rate(v[r["row"].to_numpy()], layers), seed=seed
            )
            rows.append({"set": name, "reading": column, **measured})
            if name not in compared:
                continue
            if not (wide[column].index.equals(base.index) and wide[column].columns.equals(
                    base.columns)):  # fmt: skip
                raise ValueError(f"{name!r} holds out other pieces or layers than {reference!r}.")
            ref = arrays[reference][column].to_numpy()

            def difference(r: pd.DataFrame, ref=ref, values=values) -> float:
                rows_drawn = r["row"].to_numpy()
                return _rate(ref[rows_drawn], layers) - _rate(values[rows_drawn], layers)

            measured = cluster_bootstrap(pieces, difference, seed=seed)
            rows.append({"set": f"{reference} − {name}", "reading": column, **measured})
    return pd.DataFrame(rows).set_index(["set", "reading"])
