"""The energy distance and the energy score: how far apart two clouds of states are.

The energy distance ``2E d(X, Y) − E d(X, X') − E d(Y, Y')`` (Euclidean ``d``) is 0 exactly
when the two distributions are equal, in any dimension. Three estimators of it serve three
questions:

- :func:`energy_distance`: two samples, every pair (the V-statistic);
- :func:`energy_effect`: two groups of units, pairs within or across clusters only, with an
  interval over clusters;
- :func:`energy_distance_effect`: simulated ensembles against real states, step by step, with
  an interval over prompts.

:func:`energy_score` is the related proper scoring rule ``E|X − y| − ½ E|X − X'|`` of a
simulated cloud ``X`` for one observed sequence ``y``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from sdelm.stats import cluster_bootstrap, pair_weights

__all__ = [
    "energy_distance",
    "energy_distance_effect",
    "energy_effect",
    "energy_score",
]


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Energy distance between two samples: ``2 E|X − Y| − E|X − X'| − E|Y − Y'|`` (≥ 0).

    Zero exactly when the two distributions are equal; works in any dimension.

    Args:
        x: Float tensor of size (n, dim).
        y: Float tensor of size (m, dim).

    Returns:
        The (V-statistic) energy distance.

    """
    x, y = x.double(), y.double()
    return float(
        2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean()
    )


def _fold_blocks(
    real: torch.Tensor, simulated: dict[str, torch.Tensor], steps: list[int]
) -> tuple[torch.Tensor, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Per step, the mean distances between sequences' real states and paths: (S, n, n)."""
    n = len(real)
    real_pairs, means = [], {name: ([], []) for name in simulated}
    for k in steps:
        x = real[:, k].double()
        real_pairs.append(torch.cdist(x, x))
        for name, paths in simulated.items():
            per = len(paths) // n
            p = paths[:, k].double()
            means[name][0].append(torch.cdist(p, p).reshape(n, per, n, per).mean((1, 3)))
            means[name][1].append(torch.cdist(p, x).reshape(n, per, n).mean(1))
    return torch.stack(real_pairs), {
        name: (torch.stack(a), torch.stack(b)) for name, (a, b) in means.items()
    }


def energy_distance_effect(
    real: torch.Tensor,
    mask: torch.Tensor,
    simulated: dict[str, torch.Tensor],
    prompts: Sequence[object],
    statistic: Callable[[pd.DataFrame], float],
    *,
    steps: Sequence[int],
    folds: Sequence[int] | None = None,
    refits: Mapping[str, Sequence[str]] | None = None,
    null: float = 0.0,
    seed: int = 0,
) -> dict[str, float]:
    """Measure a statistic of simulated ensembles' energy distances to the real states.

    At each of ``steps`` the cloud of every model's paths is compared with the cloud of real
    states by the energy distance (:func:`energy_distance`). With cross-validation folds
    (each in its own coordinates) the distance is taken within each fold and averaged over
    the folds, weighted by their held-out sequences. A bootstrap resample of prompts takes
    their real sequences and the paths simulated from those sequences' first states
    together: a sequence drawn twice weighs twice, each copy paired with itself but not with
    the other copy (:func:`sdelm.stats.pair_weights`), so that a resample keeps the data's
    share of pairs of a sequence with itself; every resample reuses the distance matrices
    of the full sample.

    Args:
        real: Float tensor of size (n, K + 1, dim): held-out sequences.
        mask: Bool tensor of size (n, K + 1): their valid steps.
        simulated: Model name → float tensor of size (n · n_paths, K + 1, dim), as
            :func:`simulate` returns from the sequences' first states (row ``i · n_paths + j``
            is the j-th path from sequence i).
        prompts: Size (n,): each sequence's prompt, the unit resampled.
        statistic: Maps a table of energy distances (index ``steps``, one column per model)
            to the effect, e.g. the mean over steps of one model's minus another's.
        steps: Positions compared (each with a valid real state).
        folds: Size (n,): each sequence's cross-validation fold; default one fold.
        refits: Model name → the names in ``simulated`` of the same model fitted again with
            other seeds. Its distance is then, in each fold, the mean over its fits; in a
            bootstrap resample, each fold's distance is that of one of its fits drawn at
            random, so that the interval also holds the randomness of fitting, which a
            resample of prompts alone leaves out. The refits' own columns are not passed to
            ``statistic``.
        null: The statistic's value under no effect.
        seed: Seed of the bootstrap.

    Returns:
        :func:`sdelm.stats.cluster_bootstrap`'s ``estimate``, ``low``, ``high``, ``p_value``
        and ``n_clusters``.

    Raises:
        ValueError: If the sizes disagree.

    """
    n = len(real)
    folds = np.zeros(n, dtype=int) if folds is None else np.asarray(folds)
    sizes = {name: len(paths) for name, paths in simulated.items()}
    if (
        mask.shape != real.shape[:2]
        or len(prompts) != n
        or len(folds) != n
        or any(s % n for s in sizes.values())
    ):
        raise ValueError(
            f"real (n, K + 1, dim), mask (n, K + 1), prompts and folds (n,) and simulated "
            f"(n · n_paths, K + 1, dim) must agree; got {tuple(real.shape)}, "
            f"{tuple(mask.shape)}, {len(prompts)} prompts, {len(folds)} folds and path "
            f"counts {sizes}."
        )
    steps = list(steps)
    parts = []  # per fold: its sequences, valid steps (S, n_f) and distance blocks
    for fold in np.unique(folds):
        rows = np.flatnonzero(folds == fold)
        paths = {
            name: p.reshape(n, -1, *p.shape[1:])[rows].flatten(0, 1)
            for name, p in simulated.items()
        }
        parts.append(
            (rows, mask[rows][:, steps].T.double(), *_fold_blocks(real[rows], paths, steps))
        )

    fits = {name: [name] for name in simulated}  # each model's fits, itself first
    for name, others in (refits or {}).items():
        unknown = [o for o in [name, *others] if o not in simulated]
        if unknown:
            raise ValueError(f"refits names {unknown}, which simulated lacks.")
        fits[name] = [name, *others]
    names = [n for n in simulated if not any(n in f[1:] for f in fits.values())]
    draws = np.random.default_rng([seed, 1])  # which fit a fold takes in a resample

    def mean(distances: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        return (distances * pairs).sum((-2, -1)) / pairs.sum((-2, -1))

    def distances(counts: torch.Tensor, resample: bool) -> pd.DataFrame:
        total, weights = torch.zeros(len(steps), len(names), dtype=torch.float64), 0.0
        for rows, valid, real_pairs, blocks in parts:
            drawn = counts[rows]
            size = float(drawn.sum())
            if size == 0:
                continue
            weight = drawn * valid  # (S, n_f): sequences drawn, where their real state exists
            own = mean(real_pairs, pair_weights(weight, weight, weight))
            across_pairs = pair_weights(drawn.expand_as(weight), weight, weight)
            among_pairs = pair_weights(drawn, drawn, drawn)
            for column, name in enumerate(names):
                taken = fits[name]
                if resample and len(taken) > 1:
                    taken = [taken[draws.integers(len(taken))]]
                total[:, column] += size * torch.stack(
                    [
                        2 * mean(blocks[fit][1], across_pairs)
                        - mean(blocks[fit][0], among_pairs)
                        - own
                        for fit in taken
                    ]
                ).mean(0)
            weights += size
        return pd.DataFrame(
            (total / weights).numpy(), index=pd.Index(steps, name="step"), columns=names
        )

    frame = pd.DataFrame({"prompt_id": list(prompts), "row": np.arange(n)})

    def resampled(f: pd.DataFrame) -> float:
        counts = np.bincount(f["row"].to_numpy(), minlength=n).astype(np.float64)
        # cluster_bootstrap reads the estimate off ``frame`` itself, resamples off copies
        return statistic(distances(torch.from_numpy(counts), resample=f is not frame))

    return cluster_bootstrap(frame, resampled, null=null, seed=seed)


def _energy(distances: np.ndarray, first: np.ndarray, pairs: np.ndarray) -> float:
    """2·mean d(A, B) − mean d(A, A) − mean d(B, B) over the allowed ``pairs`` (n, n)."""
    cross = pairs & (first[:, None] != first[None, :])
    own_a = pairs & first[:, None] & first[None, :]
    own_b = pairs & ~first[:, None] & ~first[None, :]
    return float(2 * distances[cross].mean() - distances[own_a].mean() - distances[own_b].mean())


def energy_effect(
    points: np.ndarray | torch.Tensor,
    groups: Sequence[object] | np.ndarray,
    clusters: Sequence[object] | np.ndarray,
    *,
    paired: bool = False,
    strata: Sequence[object] | np.ndarray | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Energy distance between two groups of points, with an interval over clusters.

    The energy distance ``2E d(X, Y) − E d(X, X') − E d(Y, Y')`` (Euclidean ``d``) is 0
    exactly when the two groups share one distribution. It is estimated from pairs of points
    of *different* clusters only (``paired=False``: the groups are made of different units,
    e.g. human passages and generated prompts), or of the *same* cluster only
    (``paired=True``: every cluster holds both groups, e.g. one prompt's samples at two
    temperatures; each cluster's own distance, averaged over clusters). Either way no point is
    paired with itself or with its copy in a bootstrap resample, so the estimate is unbiased
    for 0 under no difference, and so are its resamples. With ``strata`` (unpaired), pairs are
    also taken within a stratum only: points that are comparable only there, such as
    held-out sequences in the plane of the cross-validation fold that held them out.

    Args:
        points: Array of size (n, dim): one point per independent unit of observation (e.g. a
            sequence's mean state).
        groups: Array of size (n,) with exactly two distinct labels.
        clusters: Array of size (n,): the units resampled together (prompts, passages).
        paired: Whether pairs are taken within clusters (see above).
        strata: Optional array of size (n,): unpaired, pairs only within a stratum (a
            cluster may span strata, e.g. a passage projected in every fold's plane).
        seed: Seed of the bootstrap.

    Returns:
        :func:`sdelm.stats.cluster_bootstrap`'s ``estimate``, ``low``, ``high``, ``p_value``
        (against 0) and ``n_clusters``.

    Raises:
        ValueError: On sizes that disagree, other than two groups, strata with paired
            clusters, or too few pairs: fewer than two clusters with two points of each group
            (paired), or a group within fewer than two clusters (unpaired).

    """
    points = np.asarray(points, dtype=np.float64)
    groups, clusters = np.asarray(groups), np.asarray(clusters)
    labels = np.unique(groups)
    if points.ndim != 2 or not len(points) == len(groups) == len(clusters) or len(labels) != 2:
        raise ValueError(
            "energy_effect needs points of size (n, dim), and groups and clusters of size "
            f"(n,) with two group labels; got {points.shape}, {groups.shape} ({len(labels)} "
            f"labels) and {clusters.shape}."
        )
    if strata is not None and (paired or len(strata) != len(points)):
        raise ValueError(
            "strata need unpaired clusters (paired=False) and one stratum per point; got "
            f"paired={paired} and {len(strata)} strata for {len(points)} points."
        )
    first = groups == labels[0]
    distances = np.linalg.norm(points[:, None] - points[None], axis=-1)
    if paired:
        values = {}
        for key in np.unique(clusters):
            rows = np.flatnonzero(clusters == key)
            if min(first[rows].sum(), (~first[rows]).sum()) >= 2:
                own = ~np.eye(len(rows), dtype=bool)
                values[key] = _energy(distances[np.ix_(rows, rows)], first[rows], own)
        if len(values) < 2:
            raise ValueError(
                "A paired energy distance needs two clusters with two points of each group."
            )
        frame = pd.DataFrame({"cluster": list(values), "value": list(values.values())})
        return cluster_bootstrap(
            frame, lambda f: float(f["value"].mean()), cluster="cluster", seed=seed
        )
    for side in (first, ~first):
        if len(np.unique(clusters[side])) < 2:
            raise ValueError("Each group needs points from two clusters at least.")
    frame = pd.DataFrame({"cluster": clusters, "row": np.arange(len(points))})
    stratum = np.zeros(len(points)) if strata is None else pd.factorize(np.asarray(strata))[0]

    def statistic(f: pd.DataFrame) -> float:
        rows, keys = f["row"].to_numpy(), f["cluster"].to_numpy()
        apart = (keys[:, None] != keys[None, :]) & (stratum[rows, None] == stratum[None, rows])
        return _energy(distances[np.ix_(rows, rows)], first[rows], apart)

    return cluster_bootstrap(frame, statistic, cluster="cluster", seed=seed)


def energy_score(paths: torch.Tensor, real: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Energy score of simulated paths against each real sequence, averaged over its steps.

    The energy score E|X − y| − ½ E|X − X'| of a forecast sample X for an observation y is a
    proper scoring rule (lower is better): it rewards a simulated cloud centred on the real
    state and as wide as the real uncertainty.

    Args:
        paths: Float tensor of size (n_sequences, n_paths, n_steps, dim): simulated from each
            sequence's first state (step 0 is the start).
        real: Float tensor of size (n_sequences, n_steps, dim).
        mask: Bool tensor of size (n_sequences, n_steps).

    Returns:
        Float tensor of size (n_sequences,): the mean score over each sequence's valid steps
        after the start (NaN for a sequence without one).

    """
    to_real = (paths - real[:, None]).norm(dim=-1).mean(1)  # (n, steps)
    spread = (paths[:, :, None] - paths[:, None]).norm(dim=-1).mean((1, 2))  # (n, steps)
    score = (to_real - 0.5 * spread)[:, 1:]
    valid = mask[:, 1:]
    score = torch.where(valid, score, torch.zeros_like(score))
    return score.sum(1) / valid.sum(1)
