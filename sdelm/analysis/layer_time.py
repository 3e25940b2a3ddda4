"""Layer-time effects that resample pieces of text: the noise law, its last layer, the ensembles.

Lines of Thought fit one linear map per layer and the law α·e^{λt} to the variance of the
maps' residuals, in coordinates that keep the states' scale. State norms grow about 100-fold
through a model's layers, so a λ > 0 there may only say that everything grows. Each λ is
therefore measured twice (:func:`residual_frame`):

- ``variance``: the held-out residual variance per dimension, in the states' own scale (Lines
  of Thought's procedure);
- ``normalised``: the same divided by the variance of the held-out states at the layer the
  step arrives at: the share of a layer's spread that its map leaves unexplained.

λ is the slope of log mean residual variance on the layer, and its interval resamples the
pieces (:func:`growth_effects`), not the 29 correlated layers of one OLS fit. The maps are
cross-fitted: each piece's residuals come from maps fitted on the other folds of pieces, so
every piece is held out once and no one split of the pieces decides λ. The
nulls (gibberish, an untrained twin) read the same pieces, so a difference of λ between a set
and a null resamples the pieces of both together.

The same held-out residuals (:func:`held_out_residuals`) give the shape of the noise
(:func:`anisotropy_effect`: is it isotropic?) and the last step, into the final normalisation
(:func:`last_layer_effect`: does it follow the law?). :func:`ensemble_effect` compares two
simulated ensembles with the real one, layer by layer, and :func:`gain_difference` compares
per-prompt cross-validated gains on two time axes. Every interval resamples whole pieces (or
prompts) with :func:`sdelm.stats.cluster_bootstrap`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from sdelm.data import PreparedData, SDEData, prepare
from sdelm.energy import energy_distance_effect
from sdelm.models.lines_of_thought import LayerLinear
from sdelm.models.zoo import NEURAL, RANDOM_WALK
from sdelm.stats import cluster_bootstrap, pair_weights
from sdelm.trajectories import Trajectories

__all__ = [
    "COLUMNS",
    "HeldOutResiduals",
    "anisotropy_effect",
    "ensemble_effect",
    "gain_difference",
    "growth_effects",
    "growth_rate",
    "held_out_residuals",
    "last_layer_effect",
    "residual_frame",
    "sphericity",
]

#: The two readings of the residual variance: in the states' scale, and per-layer normalised.
COLUMNS = ("variance", "normalised")


@dataclass(frozen=True)
class HeldOutResiduals:
    """Residuals of a Lines-of-Thought fit on held-out pieces, at every transition.

    Attributes:
        residuals: Float tensor (n_pieces, n_steps − 1, dim): ``x_{k+1}`` minus the map's
            prediction from ``x_k``, for transition ``k``, in the coordinates of the piece's
            fold.
        valid: Bool tensor (n_pieces, n_steps − 1): whether both states of the transition
            exist.
        spread: Float tensor (n_pieces, n_steps − 1): the variance per dimension of the
            held-out states of the piece's fold at the layer transition ``k`` arrives at.
        prompt_ids: Array (n_pieces,) of each held-out sequence's piece (or prompt).
        law: The transitions the law α·e^{λt} was fitted on (blocks 1 to L − 2).
        folds: Int array (n_pieces,): the fold that held each piece out (its maps and
            coordinates); default all 0 (one split).

    """

    residuals: torch.Tensor
    valid: torch.Tensor
    spread: torch.Tensor
    prompt_ids: np.ndarray
    law: range
    folds: np.ndarray | None = None

    def same_fold(self) -> torch.Tensor:
        """Bool tensor (n_pieces, n_pieces): whether two pieces were held out by one fold."""
        folds = np.zeros(len(self.prompt_ids)) if self.folds is None else self.folds
        return torch.from_numpy(folds[:, None] == folds[None, :])


def _fold_residuals(data: PreparedData) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fit the maps on a fold's training and validation pieces; residuals on its test pieces.

    Returns:
        Residuals (n_test, n_steps − 1, dim), their validity (n_test, n_steps − 1) and the
        test states' spread per layer (n_steps − 1,).

    """
    n_steps = data.train.states.shape[1]
    fitted_on = SDEData.concat([data.train, data.val], name="train")
    model = LayerLinear(data.dim, n_steps).fit_least_squares(
        fitted_on, law_steps=range(1, n_steps - 2)
    )
    test = data.test
    states, valid = test.states, test.mask[:, :-1] & test.mask[:, 1:]
    times = torch.arange(n_steps - 1, dtype=states.dtype) * test.dt
    with torch.no_grad():
        x = states[:, :-1].reshape(-1, data.dim)
        drift = model.drift(x, times.repeat(len(states))).reshape(len(states), -1, data.dim)
    residuals = torch.where(valid[..., None], states[:, 1:] - states[:, :-1] - drift * test.dt, 0)
    spread = torch.stack(
        [
            (states[v, k + 1] - states[v, k + 1].mean(0)).pow(2).mean()
            for k, v in enumerate(valid.T)
        ]
    )
    return residuals, valid, spread


def held_out_residuals(
    layer_trajs: Trajectories, *, dim: int, seed: int = 0, folds: int = 5
) -> HeldOutResiduals:
    """Residuals of one linear map per layer on pieces it was not fitted on, every piece once.

    The pieces are dealt into ``folds`` groups (seeded, by piece, so sets of the same pieces
    are dealt alike); each group's residuals come from maps fitted by least squares on the
    other groups, in PCA coordinates (fitted on those pieces) that keep the states' scale;
    the law on blocks 1 to L − 2. Cross-fitting matters: with one split, which pieces the
    maps are fitted on moves λ more than its interval over the held-out pieces says (the
    normalised λ of SmolLM2 ranged from −0.08 to +0.02 over four splits of the same pieces;
    over five folds, −0.06 to −0.05).

    Args:
        layer_trajs: Layer-time trajectories (steps are layers).
        dim: PCA dimension.
        seed: Seed of the piece folds.
        folds: Number of folds (at least 2).

    Returns:
        The held-out residuals of every piece at every transition, the last one (into the
        final normalisation) included.

    """
    parts = []
    for i in range(folds):
        data = prepare(
            layer_trajs,
            dim=dim,
            standardise=False,
            split=(0.85, 0.15, 0.0),
            seed=seed,
            fold=(i, folds),
        )
        residuals, valid, spread = _fold_residuals(data)
        ids = data.test.rows["prompt_id"].to_numpy()
        parts.append((residuals, valid, spread.expand(len(ids), -1), ids, np.full(len(ids), i)))
    n_steps = layer_trajs.n_steps
    return HeldOutResiduals(
        torch.cat([part[0] for part in parts]),
        torch.cat([part[1] for part in parts]),
        torch.cat([part[2] for part in parts]),
        np.concatenate([part[3] for part in parts]),
        range(1, n_steps - 2),
        np.concatenate([part[4] for part in parts]),
    )


def residual_frame(
    layer_trajs: Trajectories, *, dim: int, seed: int = 0, folds: int = 5
) -> pd.DataFrame:
    """Held-out residual variance of a Lines-of-Thought fit, per piece and layer.

    The residuals of :func:`held_out_residuals` (one linear map per layer, cross-fitted over
    ``folds`` groups of pieces, in PCA coordinates that keep the states' scale).

    Args:
        layer_trajs: Layer-time trajectories (steps are layers).
        dim: PCA dimension.
        seed: Seed of the piece folds.
        folds: Number of folds.

    Returns:
        One row per piece and layer t of the law (blocks 1 to L − 2, as in the
        layer-time chapter): ``prompt_id``, ``layer``, ``variance`` (per dimension) and
        ``normalised`` (``variance`` over the variance per dimension of the held-out states
        of the piece's fold at layer t + 1).

    """
    held = held_out_residuals(layer_trajs, dim=dim, seed=seed, folds=folds)
    variance = held.residuals.pow(2).mean(-1)
    normalised = variance / held.spread
    frames = [
        pd.DataFrame(
            {
                "prompt_id": held.prompt_ids[held.valid[:, layer].numpy()],
                "layer": layer,
                "variance": variance[held.valid[:, layer], layer].numpy(),
                "normalised": normalised[held.valid[:, layer], layer].numpy(),
            }
        )
        for layer in held.law
    ]
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


def _piece_frame(prompt_ids: np.ndarray) -> pd.DataFrame:
    """One row per held-out sequence: its ``prompt_id`` and ``row`` (position) to resample."""
    return pd.DataFrame({"prompt_id": prompt_ids, "row": np.arange(len(prompt_ids))})


def _counts(frame: pd.DataFrame, n: int) -> torch.Tensor:
    """How often a resample draws each of ``n`` rows: float64 tensor (n,)."""
    return torch.bincount(torch.tensor(frame["row"].to_numpy()), minlength=n).double()


def sphericity(residuals: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """How unequally the residuals' variance spreads over directions, per layer.

    The index ``d · tr(M²) / tr(M)²`` of the residuals' second-moment matrix ``M``: 1 for
    isotropic noise, ``1 + CV²`` of ``M``'s eigenvalues in general (John's sphericity
    statistic). Both traces are estimated over pairs of different pieces, ``tr(M²)`` by the
    mean of ``(r_iᵀ r_j)²`` and ``tr(M)²`` by the mean of ``‖r_i‖² ‖r_j‖²`` (U-statistics,
    Chen, Zhang & Zhong 2010), so that neither the number of residuals nor a piece repeated
    in a bootstrap resample biases the index, as they do the largest eigenvalue of a sample
    covariance. ``M`` includes the residuals' mean, which a map fitted on other pieces does
    not make exactly zero.

    Args:
        residuals: Float tensor (n_layers, n, dim).
        weights: Tensor (n_layers, n) of non-negative weights: how often each residual counts
            (a bootstrap resample's counts, 0 for a missing residual); default all 1.

    Returns:
        Float64 tensor (n_layers,).

    """
    x = residuals.double()
    w = torch.ones(x.shape[:2], dtype=x.dtype) if weights is None else weights.double()
    pairs = pair_weights(w, w, torch.zeros_like(w))
    return _sphericity(x.shape[-1], _sphericity_terms(x), pairs)


def _sphericity_terms(x: torch.Tensor) -> torch.Tensor:
    """``(r_iᵀ r_j)²`` and ``‖r_i‖² ‖r_j‖²`` of residuals (L, n, d): tensor (2, L, n, n)."""
    squared = x.pow(2).sum(-1)
    return torch.stack(
        [torch.einsum("lid,ljd->lij", x, x).pow(2), squared[..., :, None] * squared[..., None, :]]
    )


def _sphericity(dim: int, terms: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    sums = (terms * pairs).sum((-2, -1))
    return dim * sums[0] / sums[1]


def anisotropy_effect(
    held: HeldOutResiduals, *, steps: range | None = None, seed: int = 0
) -> dict[str, float]:
    """Measure the residuals' :func:`sphericity` index, averaged over layers.

    The index is read over pairs of pieces of one fold (their residuals share coordinates).

    Args:
        held: From :func:`held_out_residuals`.
        steps: Transitions averaged over; default the law's (``held.law``).
        seed: Seed of the bootstrap, which resamples held-out pieces, all layers together.

    Returns:
        :func:`sdelm.stats.cluster_bootstrap`'s result against 1 (isotropic noise).

    """
    steps = list(held.law if steps is None else steps)
    residuals = held.residuals[:, steps].transpose(0, 1).double()
    valid = held.valid[:, steps].T.double()
    terms = _sphericity_terms(residuals)
    same_fold = held.same_fold().double()  # residuals of one fold share its coordinates

    def statistic(frame: pd.DataFrame) -> float:
        weights = valid * _counts(frame, valid.shape[1])
        pairs = pair_weights(weights, weights, torch.zeros_like(weights)) * same_fold
        return float(_sphericity(residuals.shape[-1], terms, pairs).mean())

    return cluster_bootstrap(_piece_frame(held.prompt_ids), statistic, null=1.0, seed=seed)


def last_layer_effect(held: HeldOutResiduals, *, seed: int = 0) -> dict[str, float]:
    """Log of the last step's residual variance over what the law predicts for it.

    The law ``log v_t = log α + λ t`` is fitted to the held-out mean residual variance per
    dimension ``v_t`` on the law's transitions (``held.law``) and extrapolated to the last
    transition, into the final normalisation; the statistic is ``log v_last`` minus that
    prediction (0: the last step follows the law). Law and last step are both read off the
    held-out pieces, so the interval resamples them together.

    Args:
        held: From :func:`held_out_residuals`.
        seed: Seed of the bootstrap.

    Returns:
        :func:`sdelm.stats.cluster_bootstrap`'s result against 0.

    """
    variance = held.residuals.pow(2).mean(-1).double()  # (n_pieces, n_steps - 1)
    valid = held.valid.double()
    law = np.asarray(held.law, dtype=float)
    last = variance.shape[1] - 1

    def statistic(frame: pd.DataFrame) -> float:
        weights = valid * _counts(frame, len(valid))[:, None]
        log_mean = ((weights * variance).sum(0) / weights.sum(0)).log().numpy()
        slope, intercept = np.polyfit(law, log_mean[held.law], 1)
        return float(log_mean[last] - (intercept + slope * last))

    return cluster_bootstrap(_piece_frame(held.prompt_ids), statistic, seed=seed)


def ensemble_effect(
    real: torch.Tensor,
    paths: torch.Tensor,
    reference: torch.Tensor,
    prompt_ids: np.ndarray,
    *,
    steps: range | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Mean over layers of the log ratio of two ensembles' energy distances to the real one.

    At each step, ``log(ED(paths, real) / ED(reference, real))``: any common yardstick (a
    sampling floor) cancels, and below 0 means ``paths`` is the closer ensemble. A resample
    of pieces takes each piece's real states and the paths started from it together
    (:func:`sdelm.energy.energy_distance_effect`).

    Args:
        real: Float tensor (n, n_steps, dim): held-out real states.
        paths: Float tensor (n * n_paths, n_steps, dim): one model's paths, started from
            ``real[:, 0]`` (:func:`sdelm.simulate`).
        reference: The other model's paths, the same size.
        prompt_ids: Array (n,): the piece (or prompt) of each real sequence.
        steps: The steps averaged over; default all but the start.
        seed: Seed of the bootstrap.

    Returns:
        :func:`sdelm.stats.cluster_bootstrap`'s result against 0.

    """
    steps = list(range(1, real.shape[1]) if steps is None else steps)
    return energy_distance_effect(
        real,
        torch.ones(real.shape[:2], dtype=torch.bool),
        {"paths": paths, "reference": reference},
        prompt_ids,
        lambda table: float(np.log(table["paths"] / table["reference"]).mean()),
        steps=steps,
        seed=seed,
    )


def gain_difference(
    first: pd.DataFrame,
    second: pd.DataFrame,
    *,
    baseline: str = RANDOM_WALK,
    model: str = NEURAL,
    seed: int = 0,
) -> dict[str, float]:
    """Compare a model's per-prompt gain over a baseline in two cross-validations.

    The gain of a prompt is its held-out NLL under ``baseline`` minus under ``model``. Prompts
    are resampled as clusters with their rows in both tables: paired where both tables hold
    a prompt (e.g. the same generated texts in layer time and in token time), unpaired
    otherwise.

    Args:
        first: From :func:`sdelm.analysis.comparison.cross_validate`.
        second: The same, on other trajectories (another time axis).
        baseline: The model the gains are measured from.
        model: The model whose gains are compared.
        seed: Seed of the bootstrap.

    Returns:
        :func:`sdelm.stats.cluster_bootstrap`'s result for the mean gain in ``first`` minus
        the mean gain in ``second`` (nats per dimension per step), against 0.

    """

    def gains(results: pd.DataFrame, which: str) -> pd.DataFrame:
        table = results.pivot(index="prompt_id", columns="model", values="nll")
        return (table[baseline] - table[model]).rename("gain").reset_index().assign(table=which)

    frame = pd.concat([gains(first, "first"), gains(second, "second")], ignore_index=True)

    def statistic(f: pd.DataFrame) -> float:
        mean = f.groupby("table")["gain"].mean()
        return float(mean.get("first", np.nan) - mean.get("second", np.nan))

    return cluster_bootstrap(frame, statistic, seed=seed)
