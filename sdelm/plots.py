"""Seaborn figures shared by the chapters. Each function draws on a given or new axes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes

if TYPE_CHECKING:
    from sdelm.analysis.phase import PlaneField

__all__ = [
    "VERDICT_COLOURS",
    "effects_by_model",
    "explained_variance_plot",
    "phase_portrait",
    "quality_diversity",
    "step_profile",
    "use_book_style",
    "verdict_counts",
    "verdict_evidence",
]


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
        steps: A table from :func:`sdelm.analysis.descriptives.step_statistics`.
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
        spectrum: A table from :func:`sdelm.analysis.descriptives.explained_variance`
            (optionally with a ``layer`` column, used as hue).
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


def phase_portrait(field: PlaneField, *, ax: Axes | None = None) -> Axes:
    """Streamlines of the drift over a heat map of the noise, in a coordinate plane.

    Args:
        field: From :func:`sdelm.analysis.phase.plane_field`.
        ax: Axes to draw on.

    Returns:
        The axes (with a colour bar for tr σσᵀ).

    """
    ax = _axes(ax)
    mesh = ax.pcolormesh(field.x, field.y, field.diffusion, cmap="magma_r", shading="gouraud")
    speed = np.hypot(field.u, field.v)
    ax.streamplot(
        field.x,
        field.y,
        field.u,
        field.v,
        color="steelblue",
        linewidth=0.6 + 1.8 * speed / max(float(speed.max()), 1e-12),
        density=1.1,
        arrowsize=0.9,
    )
    ax.figure.colorbar(mesh, ax=ax, label="tr σσᵀ (per token)")
    i, j = field.components
    ax.set(
        xlabel=f"PC {i + 1} (standardised)",
        ylabel=f"PC {j + 1} (standardised)",
        xlim=(field.x[0], field.x[-1]),
        ylim=(field.y[0], field.y[-1]),
    )
    return ax


#: One colour per verdict, shared by the ledger's figures.
VERDICT_COLOURS = {
    "as expected": "#029e73",
    "opposite": "#d55e00",
    "inconclusive": "#949494",
}


def verdict_evidence(claims: pd.DataFrame, *, alpha: float = 0.05, ax: Axes | None = None) -> Axes:
    """Each effect's Holm-adjusted evidence, signed by the direction expected before looking.

    Args:
        claims: The claims ledger (:func:`sdelm.book.ledger`): ``chapter``, ``name``,
            ``estimate``, ``null``, ``expected``, ``p_holm``, ``verdict``.
        alpha: The family-wise error rate, drawn as the verdict thresholds.
        ax: Axes to draw on.

    Returns:
        The axes: one bar per effect, −log10(Holm p), positive where the estimate lies on the
        expected side of its null.

    """
    effects = claims.copy()
    side = np.where(effects["expected"] == "greater", 1.0, -1.0)
    effects["evidence"] = (
        np.sign(effects["estimate"] - effects["null"]) * side * -np.log10(effects["p_holm"])
    )
    effects["claim"] = effects["chapter"] + ": " + effects["name"]
    ax = ax if ax is not None else plt.subplots(figsize=(7, 0.3 * len(effects) + 1))[1]
    sns.barplot(
        data=effects,
        y="claim",
        x="evidence",
        hue="verdict",
        palette=VERDICT_COLOURS,
        dodge=False,
        ax=ax,
    )
    for threshold in (-np.log10(alpha), np.log10(alpha)):
        ax.axvline(threshold, color="grey", linestyle=":")
    ax.set(xlabel="± −log10(Holm p)  (+: on the expected side)", ylabel="")
    return ax


def verdict_counts(claims: pd.DataFrame, *, ax: Axes | None = None) -> Axes:
    """Count each chapter's claims by verdict.

    Args:
        claims: The claims ledger (:func:`sdelm.book.ledger`).
        ax: Axes to draw on.

    Returns:
        The axes: one stacked bar per chapter.

    """
    counts = pd.crosstab(claims["chapter"], claims["verdict"]).reindex(
        index=claims["chapter"].unique(),
        columns=[v for v in VERDICT_COLOURS if v in set(claims["verdict"])],
    )
    ax = _axes(ax)
    colours = [VERDICT_COLOURS[label] for label in counts.columns]
    counts.plot.barh(stacked=True, color=colours, ax=ax)
    ax.set(xlabel="claims", ylabel="")
    ax.invert_yaxis()
    ax.legend(title="verdict", loc="upper left", bbox_to_anchor=(1.01, 1))
    return ax


def effects_by_model(
    effects: pd.DataFrame, *, columns: int = 4, height: float = 2.6
) -> plt.Figure:
    """Each finding's estimate and interval per model, one panel per finding.

    Args:
        effects: One row per (finding, model): ``finding``, ``model``, ``estimate``, ``low``,
            ``high``, ``null`` and ``verdict``.
        columns: Panels per row.
        height: Height of a row of panels (inches).

    Returns:
        The figure; the null is a dotted line, the colour is the verdict.

    """
    names = list(dict.fromkeys(effects["finding"]))
    rows = -(-len(names) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.4 * columns, height * rows), squeeze=False)
    models = list(dict.fromkeys(effects["model"]))
    for ax, name in zip(axes.flat, names, strict=False):
        part = effects[effects["finding"] == name].set_index("model").loc[models]
        for y, (_, row) in enumerate(part.iterrows()):
            colour = VERDICT_COLOURS[row["verdict"]]
            ax.errorbar(
                row["estimate"],
                y,
                xerr=[[row["estimate"] - row["low"]], [row["high"] - row["estimate"]]],
                fmt="o",
                color=colour,
                capsize=3,
            )
        ax.axvline(part["null"].iloc[0], color="grey", linestyle=":")
        ax.set(yticks=range(len(models)), yticklabels=models, ylim=(-0.7, len(models) - 0.3))
        ax.set_title(name, fontsize="small")
    for ax in axes.flat[len(names) :]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def quality_diversity(
    scores: pd.DataFrame,
    constant: Sequence[str],
    colours: Mapping[str, object],
    *,
    markers: Sequence[str] = ("s", "P", "D", "^", "v", "X"),
    ax: Axes | None = None,
) -> Axes:
    """Place sampling runs on the quality–diversity plane, with standard errors.

    Args:
        scores: One row per (arm, prompt): ``arm``, ``logprob`` (mean log-probability per
            token, nats) and ``distinct`` (distinct bigrams across the prompt's samples), as
            :func:`sdelm.analysis.steering.score_arms` returns.
        constant: The arms sampled at a constant temperature, in order: drawn as one line,
            each point labelled with its name.
        colours: Colour by controlled arm; each is drawn as one marker, in this order.
        markers: Marker of each controlled arm, in order; arms beyond the last marker are
            not drawn.
        ax: Axes to draw on.

    Returns:
        The axes: mean quality (x) against mean diversity (y) per arm.

    """
    ax = _axes(ax)
    means = scores.groupby("arm", sort=False)[["logprob", "distinct"]].agg(["mean", "sem"])
    line = means.loc[list(constant)]
    ax.errorbar(
        line[("logprob", "mean")],
        line[("distinct", "mean")],
        xerr=line[("logprob", "sem")],
        yerr=line[("distinct", "sem")],
        color="0.4",
        marker="o",
        label="constant temperature",
    )
    for name in constant:
        ax.annotate(
            name,
            (line.loc[name, ("logprob", "mean")], line.loc[name, ("distinct", "mean")]),
            textcoords="offset points",
            xytext=(6, -12),
        )
    for name, marker in zip(colours, markers, strict=False):
        ax.errorbar(
            means.loc[name, ("logprob", "mean")],
            means.loc[name, ("distinct", "mean")],
            xerr=means.loc[name, ("logprob", "sem")],
            yerr=means.loc[name, ("distinct", "sem")],
            marker=marker,
            linestyle="none",
            color=colours[name],
            label=name,
        )
    ax.set(
        xlabel="quality: mean log-probability per token at T = 1 (nats)",
        ylabel="diversity: distinct bigrams across samples",
    )
    ax.legend(fontsize=8)
    return ax
