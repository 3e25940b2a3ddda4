"""Seaborn figures shared by the chapters. Each function draws on a given or new axes."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes

__all__ = ["explained_variance_plot", "step_profile", "use_book_style"]


def use_book_style() -> None:
    """Apply the book's seaborn theme (call once per chapter)."""
    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind")
    plt.rcParams["figure.dpi"] = 96


def _axes(ax: Axes | None) -> Axes:
    return ax if ax is not None else plt.subplots(figsize=(6, 3.5))[1]


def step_profile(
    steps: pd.DataFrame, y: str, *, ylabel: str, hue: str = "group", ax: Axes | None = None
) -> Axes:
    """Mean of ``y`` against token position, one line per ``hue`` with a 95% band.

    Args:
        steps: A table from :func:`sdelm.describe.step_statistics`.
        y: Column to plot.
        ylabel: Axis label with units.
        hue: Column that separates the lines.
        ax: Axes to draw on.

    Returns:
        The axes.

    """
    ax = _axes(ax)
    sns.lineplot(
        data=steps, x="step", y=y, hue=hue, errorbar=("ci", 95), n_boot=200, seed=0, ax=ax
    )
    ax.set(xlabel="token position k (tokens)", ylabel=ylabel)
    return ax


def explained_variance_plot(
    spectrum: pd.DataFrame, *, max_components: int = 64, ax: Axes | None = None
) -> Axes:
    """Cumulative explained variance against the number of PCA components.

    Args:
        spectrum: A table from :func:`sdelm.describe.explained_variance` (optionally with a
            ``layer`` column, used as hue).
        max_components: Components shown.
        ax: Axes to draw on.

    Returns:
        The axes.

    """
    ax = _axes(ax)
    shown = spectrum[spectrum["component"] <= max_components]
    hue = "layer" if "layer" in shown.columns else None
    sns.lineplot(data=shown, x="component", y="cumulative", hue=hue, style="split", ax=ax)
    ax.axhline(0.9, color="grey", linewidth=0.8, linestyle=":")
    ax.set(xlabel="PCA components", ylabel="cumulative explained variance", ylim=(0, 1.01))
    return ax
