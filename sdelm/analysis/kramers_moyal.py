"""Nonparametric Kramers–Moyal estimates of drift and diffusion, binned in two coordinates.

The first two Kramers–Moyal coefficients are conditional moments of the increments,

    D1(x) = E[ΔX | X = x] / Δt,    D2(x) = E[ΔX² | X = x] / Δt,

estimated here by averaging over the transitions that fall into each cell of a grid in the
first two coordinates (Friedrich et al. 2011; Rydin Gorjão & Meirinhos 2019). They need no
model, so they cross-check the neural estimates, where there are enough data.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from sdelm.data import SDEData, Transitions
from sdelm.models import SDEModel

__all__ = ["binned_moments", "compare_with_model"]


def _transitions(data: SDEData | Transitions) -> Transitions:
    return data.transitions() if isinstance(data, SDEData) else data


def _cells(x: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Cell indices of states (n, 2) on a grid of equal-count (quantile) bins per coordinate."""
    edges = [np.quantile(x[:, i], np.linspace(0, 1, bins + 1)) for i in range(2)]
    c0, c1 = (
        np.clip(np.searchsorted(edge, x[:, i], side="right") - 1, 0, bins - 1)
        for i, edge in enumerate(edges)
    )
    return c0, c1


def binned_moments(
    data: SDEData | Transitions,
    *,
    bins: int = 8,
    min_count: int = 30,
    dims: tuple[int, int] = (0, 1),
) -> pd.DataFrame:
    """Kramers–Moyal drift and diffusion of two coordinates on a grid of bins.

    Args:
        data: A split or its transitions.
        bins: Bins per coordinate (equal-count quantile edges).
        min_count: Cells with fewer transitions are dropped.
        dims: The two coordinates.

    Returns:
        One row per kept cell: ``x0, x1`` (cell centres: the mean state), ``count``,
        ``drift0, drift1`` (D1), ``diffusion0, diffusion1`` (√D2 of the centred increments,
        comparable with σ).

    Raises:
        ValueError: If there are too few transitions for one cell.

    """
    tr = _transitions(data)
    if len(tr) < min_count:
        raise ValueError(f"{len(tr)} transitions are fewer than min_count={min_count}.")
    x = tr.x[:, list(dims)].double().numpy()
    dx = tr.dx[:, list(dims)].double().numpy()
    cell = _cells(x, bins)
    frame = pd.DataFrame(
        {
            "c0": cell[0],
            "c1": cell[1],
            "x0": x[:, 0],
            "x1": x[:, 1],
            "d0": dx[:, 0],
            "d1": dx[:, 1],
        }
    )
    grouped = frame.groupby(["c0", "c1"])
    out = grouped.agg(
        x0=("x0", "mean"),
        x1=("x1", "mean"),
        count=("d0", "size"),
        m0=("d0", "mean"),
        m1=("d1", "mean"),
        v0=("d0", "var"),
        v1=("d1", "var"),
    )
    out = out[out["count"] >= min_count].reset_index(drop=True)
    return pd.DataFrame(
        {
            "x0": out["x0"],
            "x1": out["x1"],
            "count": out["count"],
            "drift0": out["m0"] / tr.dt,
            "drift1": out["m1"] / tr.dt,
            "diffusion0": np.sqrt(out["v0"] / tr.dt),
            "diffusion1": np.sqrt(out["v1"] / tr.dt),
        }
    )


@torch.no_grad()
def compare_with_model(
    model: SDEModel, data: SDEData | Transitions, *, bins: int = 8, min_count: int = 30
) -> pd.DataFrame:
    """Kramers–Moyal and model estimates side by side, averaged over the same cells.

    The model's drift and diffusion are averaged over the transitions of each cell (in all
    coordinates, reported for the first two), so both estimates see the same states.

    Args:
        model: A fitted SDE.
        data: A (held-out) split or its transitions.
        bins: Bins per coordinate.
        min_count: Minimum transitions per cell.

    Returns:
        The table of :func:`binned_moments` with ``model_drift0, model_drift1,
        model_diffusion0, model_diffusion1`` added.

    """
    tr = _transitions(data)
    km = binned_moments(tr, bins=bins, min_count=min_count)
    x = tr.x.double().numpy()
    mu = model.drift(tr.x, tr.t).double().numpy()
    sigma = model.diffusion(tr.x, tr.t).double().numpy()
    cell = _cells(x[:, :2], bins)
    frame = pd.DataFrame(
        {
            "c0": cell[0],
            "c1": cell[1],
            "mu0": mu[:, 0],
            "mu1": mu[:, 1],
            "s0": sigma[:, 0] ** 2,
            "s1": sigma[:, 1] ** 2,
        }
    )
    grouped = frame.groupby(["c0", "c1"]).agg(["mean", "size"])
    kept = grouped[grouped[("mu0", "size")] >= min_count].reset_index(drop=True)
    km["model_drift0"] = kept[("mu0", "mean")].to_numpy()
    km["model_drift1"] = kept[("mu1", "mean")].to_numpy()
    km["model_diffusion0"] = np.sqrt(kept[("s0", "mean")].to_numpy())
    km["model_diffusion1"] = np.sqrt(kept[("s1", "mean")].to_numpy())
    return km
