"""Nonparametric Kramers–Moyal estimates of drift and diffusion, binned in coordinate pairs.

The first two Kramers–Moyal coefficients are conditional moments of the increments,

    D1(x) = E[ΔX | X = x] / Δt,    D2(x) = E[(ΔX − D1(X) Δt)² | X = x] / Δt,

estimated here by averaging over the transitions that fall into each cell of a grid
(Friedrich et al. 2011; Rydin Gorjão & Meirinhos 2019). They need no model, so they cross-check
the neural estimates, where there are enough data.

Three choices make the estimates comparable with a fitted SDE:

- **Every coordinate.** The coordinates are binned in pairs ``(0, 1), (2, 3), …`` (the last
  pair wraps around for an odd dimension), each pair on its own grid, so every coordinate's
  drift and diffusion are read on a grid in which that coordinate varies.
- **Held-out transitions.** The grid's edges are quantiles of the states of one split (the
  training split, :meth:`Grid.fit`); the moments are then read on any split (the test split).
- **The drift is subtracted from the second moment.** With Δt = 1 the variance of the
  increments in a cell is ``E[σ² | cell] Δt + Var(μ | cell) Δt²``: the drift's variation
  inside the cell inflates it. The increments are first detrended by a least-squares linear
  drift fitted to the same transitions, then centred in each cell, so that only the non-linear
  drift's variation inside a cell remains (exactly zero for a linear drift).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from sdelm.data import SDEData, Transitions
from sdelm.models import SDEModel

__all__ = [
    "DriftSums",
    "Grid",
    "agreement",
    "binned_moments",
    "cell_moments",
    "compare_with_model",
    "populated_cells",
    "transition_table",
]


def _pairs(dim: int) -> tuple[tuple[int, int], ...]:
    pairs = [(i, i + 1) for i in range(0, dim - 1, 2)]
    if dim % 2:
        pairs.append((dim - 1, 0) if dim > 1 else (0, 0))
    return tuple(pairs)


@dataclass(frozen=True)
class Grid:
    """Equal-count bins per coordinate, and the coordinate pairs binned together.

    Attributes:
        edges: Float array of size (dim, bins + 1): quantile edges of each coordinate.
        pairs: The coordinate pairs, one grid of ``bins × bins`` cells each.

    """

    edges: np.ndarray
    pairs: tuple[tuple[int, int], ...]

    @property
    def bins(self) -> int:
        """Bins per coordinate."""
        return self.edges.shape[1] - 1

    @classmethod
    def fit(
        cls, states: torch.Tensor, bins: int = 6, pairs: tuple[tuple[int, int], ...] | None = None
    ) -> Grid:
        """Place equal-count edges at the quantiles of some states (e.g. the training split's).

        Args:
            states: Float tensor of size (n, dim).
            bins: Bins per coordinate.
            pairs: Coordinate pairs; default ``(0, 1), (2, 3), …``.

        Raises:
            ValueError: With fewer than two bins or no states.

        """
        if bins < 2 or len(states) == 0:
            raise ValueError(f"A grid needs bins >= 2 and some states; got bins={bins}.")
        x = states.double().numpy()
        edges = np.quantile(x, np.linspace(0, 1, bins + 1), axis=0).T
        return cls(edges, _pairs(x.shape[1]) if pairs is None else tuple(pairs))

    def cells(self, states: np.ndarray) -> np.ndarray:
        """Cell index of each state in each pair's grid: (n, dim) -> (n, n_pairs) ints."""
        index = np.stack(
            [
                np.clip(np.searchsorted(e, states[:, i], side="right") - 1, 0, self.bins - 1)
                for i, e in enumerate(self.edges)
            ],
            axis=1,
        )
        return np.stack([index[:, a] * self.bins + index[:, b] for a, b in self.pairs], axis=1)


def _transitions(data: SDEData | Transitions) -> tuple[Transitions, np.ndarray | None]:
    if isinstance(data, Transitions):
        return data, None
    return data.transitions(), data.transition_prompts()


@torch.no_grad()
def transition_table(
    data: SDEData | Transitions, grid: Grid, model: SDEModel | None = None
) -> pd.DataFrame:
    """One row per transition: its cells, state, increment and (optionally) a model's field.

    Args:
        data: A split (its prompts label the rows) or bare transitions.
        grid: The grid (usually fitted on the training split).
        model: A fitted SDE whose drift and diffusion are evaluated at every transition.

    Returns:
        Columns ``prompt_id`` (when ``data`` is a split), ``cell0 … cell{P−1}`` (one per pair),
        ``x0 … x{d−1}``, ``dx0 … dx{d−1}`` and, with a model, ``mu0 …`` (drift) and ``var0 …``
        (σ², the diagonal of σσᵀ). The time step is in ``table.attrs["dt"]``.

    """
    tr, prompts = _transitions(data)
    x = tr.x.double().numpy()
    dim = x.shape[1]
    columns: dict[str, np.ndarray] = {}
    if prompts is not None:
        columns["prompt_id"] = prompts
    cells = grid.cells(x)
    columns.update({f"cell{p}": cells[:, p] for p in range(cells.shape[1])})
    columns.update({f"x{j}": x[:, j] for j in range(dim)})
    dx = tr.dx.double().numpy()
    columns.update({f"dx{j}": dx[:, j] for j in range(dim)})
    if model is not None:
        mu = model.drift(tr.x, tr.t).double().numpy()
        var = model.diffusion(tr.x, tr.t).double().pow(2).numpy()
        columns.update({f"mu{j}": mu[:, j] for j in range(dim)})
        columns.update({f"var{j}": var[:, j] for j in range(dim)})
    table = pd.DataFrame(columns)
    table.attrs["dt"] = tr.dt
    return table


def _matrix(table: pd.DataFrame, prefixes: tuple[str, ...], dim: int) -> np.ndarray:
    """Columns ``{prefix}0 … {prefix}{dim−1}`` of each prefix, side by side: (rows, len·dim)."""
    return table[[f"{p}{j}" for p in prefixes for j in range(dim)]].to_numpy(dtype=float)


def _correlation(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson r of two vectors of equal length; None for fewer than three values or a constant."""
    if len(a) < 3:
        return None
    a, b = a - a.mean(), b - b.mean()
    scale = np.sqrt((a @ a) * (b @ b))
    return float(a @ b / scale) if scale > 0 else None


def populated_cells(table: pd.DataFrame, grid: Grid, *, min_count: int = 30) -> np.ndarray:
    """Cells with at least ``min_count`` transitions of a table, for each pair of coordinates.

    A bootstrap of a statistic over cells reads the cells populated in the data: a resample
    that repeats prompts repeats their transitions, so selecting cells by its own counts would
    admit cells the data leave sparse, whose noisier moments bias the resampled statistic.

    Args:
        table: From :func:`transition_table`.
        grid: The grid the table was binned on.
        min_count: Minimum transitions per cell (at least 2).

    Returns:
        Bool array of size (n_pairs, bins²).

    """
    n_cells = grid.bins**2
    return np.stack(
        [
            np.bincount(table[f"cell{p}"].to_numpy(), minlength=n_cells) >= max(min_count, 2)
            for p in range(len(grid.pairs))
        ]
    )


def _per_coordinate(
    table: pd.DataFrame, grid: Grid, min_count: int, read: np.ndarray | None = None
):
    """Yield each coordinate's kept cells and their moments as arrays (the fast core).

    ``read`` (from :func:`populated_cells` of the data) fixes the cells read; a cell is then
    dropped only where the table has fewer than two of its transitions.
    """
    if len(table) < min_count:
        raise ValueError(f"{len(table)} transitions are fewer than min_count={min_count}.")
    dt = table.attrs.get("dt", 1.0)
    dim = len(grid.edges)
    has_model = "mu0" in table.columns
    # One copy out of the frame for every column read (this runs once per bootstrap resample).
    block = _matrix(table, ("x", "dx", "mu", "var") if has_model else ("x", "dx"), dim)
    x, dx, mu, var = (block[:, k * dim : (k + 1) * dim] for k in range(4))
    cells = table[[f"cell{p}" for p in range(len(grid.pairs))]].to_numpy()
    design = np.column_stack([x, np.ones(len(x))])
    # Least squares by its normal equations: (d + 1)² numbers to solve, once per resample.
    residual = dx - design @ np.linalg.lstsq(design.T @ design, design.T @ dx, rcond=None)[0]
    n_cells = grid.bins**2
    for p, pair in enumerate(grid.pairs):
        cell = cells[:, p]
        count = np.bincount(cell, minlength=n_cells).astype(float)
        populated = count >= max(min_count, 2) if read is None else read[p] & (count >= 2)
        kept = np.flatnonzero(populated)

        def mean(values: np.ndarray, cell=cell, count=count, kept=kept) -> np.ndarray:
            return (np.bincount(cell, values, minlength=n_cells) / np.maximum(count, 1))[kept]

        for j in dict.fromkeys(pair):  # one coordinate once, also for a (0, 0) pair
            centred = mean(residual[:, j] ** 2) - mean(residual[:, j]) ** 2
            within = centred * count[kept] / (count[kept] - 1)
            row = {
                "coordinate": j,
                "pair": p,
                "cell": kept,
                "count": count[kept].astype(int),
                "centre": mean(x[:, j]),
                "drift": mean(dx[:, j]) / dt,
                "diffusion": np.sqrt(np.maximum(within, 0) / dt),
            }
            if has_model:
                row["model_drift"] = mean(mu[:, j])
                row["model_diffusion"] = np.sqrt(mean(var[:, j]))
            yield row


def cell_moments(table: pd.DataFrame, grid: Grid, *, min_count: int = 30) -> pd.DataFrame:
    """Kramers–Moyal drift and diffusion of every coordinate, cell by cell.

    Args:
        table: From :func:`transition_table` (the model's columns are averaged when present).
        grid: The grid the table was binned on.
        min_count: Cells with fewer transitions are dropped.

    Returns:
        One row per (coordinate, kept cell of that coordinate's pair): ``coordinate``,
        ``pair``, ``cell``, ``count``, ``centre`` (the coordinate's mean state in the cell),
        ``drift`` (D1), ``diffusion`` (√D2, drift subtracted: comparable with σ) and, with a
        model, ``model_drift`` (mean μ) and ``model_diffusion`` (√ of the mean σ²).

    Raises:
        ValueError: If there are fewer transitions than ``min_count``.

    """
    rows = list(_per_coordinate(table, grid, min_count))
    return pd.concat([pd.DataFrame(row) for row in rows], ignore_index=True)


def agreement(
    table: pd.DataFrame,
    grid: Grid,
    *,
    kind: str = "drift",
    min_count: int = 30,
    cells: np.ndarray | None = None,
) -> float:
    """Mean over coordinates of the across-cell Pearson r of Kramers–Moyal and model.

    Args:
        table: From :func:`transition_table`, with a model's columns.
        grid: The grid the table was binned on.
        kind: ``"drift"`` or ``"diffusion"``.
        min_count: Minimum transitions per cell.
        cells: Read these cells (:func:`populated_cells` of the data, for a resample of it);
            default those of ``table`` with ``min_count`` transitions.

    Returns:
        The mean r (coordinates with fewer than three kept cells, or a constant column, are
        left out); NaN if none is left.

    """
    rs = [
        _correlation(row[kind], row[f"model_{kind}"])
        for row in _per_coordinate(table, grid, min_count, cells)
    ]
    rs = [r for r in rs if r is not None]
    return float(np.mean(rs)) if rs else float("nan")


def binned_moments(
    data: SDEData | Transitions,
    *,
    bins: int = 8,
    min_count: int = 30,
    dims: tuple[int, int] = (0, 1),
    grid: Grid | None = None,
) -> pd.DataFrame:
    """Kramers–Moyal drift and diffusion of two coordinates on one grid.

    Args:
        data: A split or its transitions.
        bins: Bins per coordinate (equal-count quantile edges of ``data``'s states), when no
            ``grid`` is given.
        min_count: Cells with fewer transitions are dropped.
        dims: The two coordinates.
        grid: A grid fitted elsewhere (e.g. on the training split); its ``pairs`` are replaced
            by ``dims``.

    Returns:
        One row per kept cell: ``x0, x1`` (cell centres: the mean state), ``count``,
        ``drift0, drift1`` (D1), ``diffusion0, diffusion1`` (√D2 with the drift subtracted,
        comparable with σ).

    Raises:
        ValueError: If there are too few transitions for one cell.

    """
    tr, _ = _transitions(data)
    if len(tr) < min_count:
        raise ValueError(f"{len(tr)} transitions are fewer than min_count={min_count}.")
    grid = Grid.fit(tr.x, bins) if grid is None else grid
    grid = Grid(grid.edges, (tuple(dims),))
    moments = cell_moments(transition_table(tr, grid), grid, min_count=min_count)
    wide = {}
    for i, j in enumerate(dims):
        part = moments[moments["coordinate"] == j].set_index("cell")
        wide.update(
            {
                f"x{i}": part["centre"],
                f"drift{i}": part["drift"],
                f"diffusion{i}": part["diffusion"],
            }
        )
        wide["count"] = part["count"]
    out = pd.DataFrame(wide)
    return out[["x0", "x1", "count", "drift0", "drift1", "diffusion0", "diffusion1"]].reset_index(
        drop=True
    )


def compare_with_model(
    model: SDEModel,
    data: SDEData | Transitions,
    grid: Grid,
    *,
    min_count: int = 30,
) -> pd.DataFrame:
    """Kramers–Moyal and model estimates side by side, for every coordinate and kept cell.

    Both are averaged over the same transitions of each cell, so both see the same states.

    Args:
        model: A fitted SDE.
        data: A (held-out) split or its transitions.
        grid: The grid, fitted on another split (usually the training split).
        min_count: Minimum transitions per cell.

    Returns:
        The table of :func:`cell_moments`, with ``model_drift`` and ``model_diffusion``.

    """
    return cell_moments(transition_table(data, grid, model), grid, min_count=min_count)


@dataclass(frozen=True)
class DriftSums:
    """A transition table reduced, per cluster (prompt), to what the drift agreement needs.

    A resample of clusters only adds rows of these arrays, so a bootstrap of
    :func:`agreement` (``kind="drift"``) costs no pass over the transitions.

    Attributes:
        clusters: The cluster labels, sorted (row order of the arrays).
        count: Float array (clusters, pairs, cells): transitions per cell.
        increments: Float array (clusters, pairs, cells, 2): Σ ΔX of each coordinate of the
            pair (the second slot repeats the first for a pair (j, j)).
        drift: The same sums of the model's drift μ.
        pairs: The grid's coordinate pairs.
        dt: The time step.

    """

    clusters: np.ndarray
    count: np.ndarray
    increments: np.ndarray
    drift: np.ndarray
    pairs: tuple[tuple[int, int], ...]
    dt: float

    @classmethod
    def of(cls, table: pd.DataFrame, grid: Grid, clusters: np.ndarray) -> DriftSums:
        """Reduce a :func:`transition_table` with a model's columns, by ``prompt_id``.

        Args:
            table: The table (``prompt_id``, cells, ``dx…`` and ``mu…`` columns).
            grid: The grid it was binned on.
            clusters: Sorted labels that include every ``prompt_id`` of the table.

        """
        dim, n_pairs, n_cells = len(grid.edges), len(grid.pairs), grid.bins**2
        row = np.searchsorted(clusters, table["prompt_id"].to_numpy())
        values = _matrix(table, ("dx", "mu"), dim)
        count = np.zeros((len(clusters), n_pairs, n_cells))
        sums = np.zeros((2, len(clusters), n_pairs, n_cells, 2))
        for p, pair in enumerate(grid.pairs):
            cell = table[f"cell{p}"].to_numpy()
            np.add.at(count[:, p], (row, cell), 1.0)
            for slot, j in enumerate(pair):
                for k in range(2):  # increments, drift
                    np.add.at(sums[k, :, p, :, slot], (row, cell), values[:, k * dim + j])
        return cls(
            clusters, count, sums[0], sums[1], tuple(grid.pairs), table.attrs.get("dt", 1.0)
        )

    def agreement(self, rows: np.ndarray, *, min_count: int = 30) -> float:
        """Return :func:`agreement` (drift) of the clusters at ``rows`` (repeats count).

        The cells read are those every cluster together populates (:func:`populated_cells`),
        as for a bootstrap of :func:`agreement`.

        Args:
            rows: Row indices into :attr:`clusters`, with repetition.
            min_count: Minimum transitions per cell.

        """
        populated = self.count.sum(0) >= max(min_count, 2)
        count = self.count[rows].sum(0)
        increments, drift = self.increments[rows].sum(0), self.drift[rows].sum(0)
        rs = []
        for p, pair in enumerate(self.pairs):
            kept = populated[p] & (count[p] >= 2)
            for slot in range(len(dict.fromkeys(pair))):
                a = increments[p, kept, slot] / count[p, kept] / self.dt
                b = drift[p, kept, slot] / count[p, kept]
                r = _correlation(a, b)
                if r is not None:
                    rs.append(r)
        return float(np.mean(rs)) if rs else float("nan")
