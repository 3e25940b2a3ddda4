"""Preparing trajectories for fitting: splits by prompt, a PCA projection, standardisation.

:func:`prepare` turns :class:`~sdelm.Trajectories` into train, validation and test sets of
projected states. All samples of one prompt (or one human passage) land in one split, so a
model is always judged on prompts it never saw. The projection is fitted on the training split
only and kept, so fitted quantities can be mapped back to hidden-state space.

Time: step ``k`` sits at time ``t_k = k · dt``. The default ``dt = 1`` measures time in tokens,
so a drift is "change per token" and a diffusion "standard deviation per square-root token".
Another ``dt`` rescales both (μ by 1/dt, σ by 1/√dt) and leaves likelihoods in nats unchanged
up to the constant ``½ log dt``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from sdelm.checks import check_time_step
from sdelm.trajectories import Trajectories

__all__ = ["PreparedData", "Projection", "SDEData", "Transitions", "prepare", "project"]


@dataclass(frozen=True)
class Transitions:
    """All one-step transitions of a data set, flattened.

    Attributes:
        x: Float tensor of size (n_transitions, dim): the state before the step.
        t: Float tensor of size (n_transitions,): the time before the step.
        dx: Float tensor of size (n_transitions, dim): the increment.
        dt: The time step.

    """

    x: torch.Tensor
    t: torch.Tensor
    dx: torch.Tensor
    dt: float

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def to(self, device: torch.device | str) -> Transitions:
        """Return a copy on ``device``."""
        return Transitions(self.x.to(device), self.t.to(device), self.dx.to(device), self.dt)


@dataclass(frozen=True)
class SDEData:
    """One split of prepared trajectories.

    Attributes:
        states: Float tensor of size (n_sequences, n_steps, dim), projected (and standardised).
        mask: Bool tensor of size (n_sequences, n_steps).
        dt: Time step.
        rows: Row table of the sequences (from :class:`~sdelm.Trajectories`).
        name: ``"train"``, ``"val"`` or ``"test"``.
        entropies: Float tensor of size (n_sequences, n_steps): next-token entropies recorded
            at extraction (NaN where unknown), or ``None``.

    """

    states: torch.Tensor
    mask: torch.Tensor
    dt: float
    rows: pd.DataFrame
    name: str = ""
    entropies: torch.Tensor | None = None

    @property
    def dim(self) -> int:
        """Dimension of a state."""
        return int(self.states.shape[-1])

    @property
    def times(self) -> torch.Tensor:
        """Float tensor of size (n_steps,): ``t_k = k · dt``."""
        return torch.arange(self.states.shape[1], dtype=torch.float32) * self.dt

    def transitions(self) -> Transitions:
        """Return every (X_k, t_k, X_{k+1} − X_k) whose two steps are both valid."""
        both = self.mask[:, :-1] & self.mask[:, 1:]
        seq, step = both.nonzero(as_tuple=True)
        x = self.states[seq, step]
        return Transitions(x=x, t=self.times[step], dx=self.states[seq, step + 1] - x, dt=self.dt)

    def transition_prompts(self) -> np.ndarray:
        """Return the ``prompt_id`` of each transition, in :meth:`transitions`' order: (n,)."""
        both = self.mask[:, :-1] & self.mask[:, 1:]
        return self.rows["prompt_id"].to_numpy()[both.nonzero(as_tuple=True)[0].numpy()]

    def __len__(self) -> int:
        return int(self.states.shape[0])

    @classmethod
    def concat(cls, parts: Sequence[SDEData], name: str = "") -> SDEData:
        """Join splits of the same projection into one, e.g. validation and test.

        Args:
            parts: Splits with the same number of steps, dimension and time step.
            name: Name of the joined split.

        Returns:
            The joined split (entropies kept only when every part has them).

        Raises:
            ValueError: If there are no parts or their shapes or time steps differ.

        """
        if not parts:
            raise ValueError("SDEData.concat needs at least one split.")
        first = parts[0]
        for part in parts[1:]:
            if part.states.shape[1:] != first.states.shape[1:] or part.dt != first.dt:
                raise ValueError(
                    "Splits to join must share steps, dimension and dt; got "
                    f"{tuple(first.states.shape[1:])}, dt={first.dt} and "
                    f"{tuple(part.states.shape[1:])}, dt={part.dt}."
                )
        entropies = [part.entropies for part in parts]
        return cls(
            states=torch.cat([part.states for part in parts]),
            mask=torch.cat([part.mask for part in parts]),
            dt=first.dt,
            rows=pd.concat([part.rows for part in parts], ignore_index=True),
            name=name,
            entropies=None if any(e is None for e in entropies) else torch.cat(entropies),
        )


@dataclass(frozen=True)
class Projection:
    """The map from hidden states to the fitted coordinates: ``z = (x − mean) Cᵀ / scale``.

    Attributes:
        mean: Float tensor of size (hidden_dim,).
        components: Float tensor of size (dim, hidden_dim), orthonormal rows (identity when
            there is no projection).
        scale: Float tensor of size (dim,): standard deviations of the projected training
            states (ones when not standardised).
        explained_variance: Float tensor of size (dim,): fraction of the training variance along
            each component.
        layer: The hidden-state layer.

    """

    mean: torch.Tensor
    components: torch.Tensor
    scale: torch.Tensor
    explained_variance: torch.Tensor
    layer: int

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """Map hidden states (..., hidden_dim) to coordinates (..., dim)."""
        return (states - self.mean) @ self.components.T / self.scale

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        """Map coordinates (..., dim) back to hidden states (..., hidden_dim)."""
        return (z * self.scale) @ self.components + self.mean


@dataclass(frozen=True)
class PreparedData:
    """Train, validation and test splits with the projection that produced them."""

    train: SDEData
    val: SDEData
    test: SDEData
    projection: Projection

    @property
    def dim(self) -> int:
        """Dimension of the fitted coordinates."""
        return self.train.dim

    @property
    def dt(self) -> float:
        """Time step."""
        return self.train.dt

    def summary(self) -> pd.DataFrame:
        """Return sequences, prompts and transitions per split."""
        return pd.DataFrame(
            {
                split.name: {
                    "sequences": len(split),
                    "prompts": split.rows["prompt_id"].nunique(),
                    "transitions": len(split.transitions()),
                }
                for split in (self.train, self.val, self.test)
            }
        ).T


def prepare(
    trajs: Trajectories,
    *,
    layer: int | None = None,
    dim: int | None = 16,
    split: Sequence[float] = (0.7, 0.15, 0.15),
    standardise: bool = True,
    dt: float | None = None,
    seed: int = 0,
    fold: tuple[int, int] | None = None,
) -> PreparedData:
    """Split trajectories by prompt, project them with PCA fitted on the training split.

    Args:
        trajs: Trajectories (generated, human, or both).
        layer: Recorded layer to use; default the last recorded one.
        dim: Number of PCA components; ``None`` keeps every hidden dimension (no projection,
            only centring). It cannot exceed the number of directions the training states span
            (their rank after centring, at most the number of valid training steps minus one).
        split: Fractions of prompts in train, validation and test (they must sum to 1).
        standardise: Divide each component by its training standard deviation.
        dt: Time step, a positive finite number; default ``trajs.dt`` (1 token).
        seed: Seed of the prompt shuffle, a non-negative integer.
        fold: ``(i, k)`` for K-fold cross-validation by prompt: the shuffled prompts are dealt
            into ``k`` folds and fold ``i`` is the test split; of the others, the validation
            split takes the share ``split[1] / (split[0] + split[1])`` (at least one prompt)
            and the training split the rest. ``split[2]`` is then not used. Over ``i = 0 …
            k − 1`` every prompt is tested exactly once.

    Returns:
        The three splits and the projection.

    Raises:
        ValueError: If a split would be empty, the fractions are invalid, ``dim`` is not a
            positive integer in 1..hidden_dim or exceeds the rank of the training states
            (the message gives the largest usable ``dim``), ``dim=None`` with
            ``standardise=True`` meets a hidden coordinate that is constant on the training
            split, ``dt`` or ``seed`` is invalid, a valid step of the layer holds NaN or inf,
            or there are fewer than two steps.

    """
    fractions = np.asarray(split, dtype=float)
    if fractions.shape != (3,) or (fractions < 0).any() or not np.isclose(fractions.sum(), 1):
        raise ValueError(f"split must be three non-negative fractions summing to 1, got {split}.")
    if trajs.n_steps < 2:
        raise ValueError("Trajectories need at least two steps to have transitions.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
    step = check_time_step(trajs.dt if dt is None else dt)
    layer = trajs.layers[-1] if layer is None else layer
    trajs.check_finite(layer)
    states = trajs.layer(layer).double()
    hidden_dim = states.shape[-1]
    if dim is not None:
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
            raise ValueError(f"dim must be a positive integer or None, got {dim!r}.")
        if not 0 < dim <= hidden_dim:
            raise ValueError(
                f"dim must be in 1..{hidden_dim} (the hidden size) or None, got {dim}."
            )

    ids = np.array(sorted(trajs.rows["prompt_id"].unique()))
    order = np.random.default_rng(seed).permutation(ids)
    groups = _split_prompts(order, fractions, fold)
    masks = [torch.tensor(trajs.rows["prompt_id"].isin(g).to_numpy()) for g in groups]

    train_states = states[masks[0]][trajs.mask[masks[0]]]  # (n_valid, hidden_dim)
    if len(train_states) < 2:
        raise ValueError(
            f"The training split has {len(train_states)} valid states; a projection needs at "
            "least two. Use more prompts or another split."
        )
    mean = train_states.mean(dim=0)
    centred = train_states - mean
    total = (centred**2).sum()
    if total == 0:
        raise ValueError(
            f"The {len(centred)} valid training states of layer {layer} are all identical: "
            "there is nothing to project or fit. Check the extraction (or use another layer)."
        )
    # Below this fraction of the largest, a direction is rounding noise of the float states.
    resolution = torch.finfo(trajs.states.dtype).eps
    if dim is None:
        components = torch.eye(hidden_dim, dtype=states.dtype)
    else:
        _, singular, right = torch.linalg.svd(centred, full_matrices=False)
        rank = int((singular > resolution * singular[0]).sum())
        if dim > rank:
            raise ValueError(
                f"dim={dim} is more than the training split supports: its {len(centred)} valid "
                f"states of layer {layer} span only {rank} directions after centring, so "
                f"components beyond {rank} are numerical noise. Use dim <= {rank}, or more "
                "prompts or longer trajectories."
            )
        components = right[:dim]
    along = centred @ components.T
    explained = (along**2).sum(dim=0) / total
    scale = (
        along.std(dim=0) if standardise else torch.ones(components.shape[0], dtype=states.dtype)
    )
    if dim is None and standardise:
        flat = (scale <= resolution * scale.max()).nonzero().flatten().tolist()
        if flat:
            raise ValueError(
                f"dim=None with standardise=True: hidden coordinates {flat[:5]} "
                f"({len(flat)} in all) are constant on the training split, so standardising "
                "would divide by zero. Use dim=k (PCA onto k <= rank components) or "
                "standardise=False."
            )
    projection = Projection(
        mean=mean.float(),
        components=components.float(),
        scale=scale.float(),
        explained_variance=explained.float(),
        layer=layer,
    )
    splits = [
        project(trajs[rows], projection, dt=step, name=name)
        for name, rows in zip(("train", "val", "test"), masks, strict=True)
    ]
    return PreparedData(*splits, projection=projection)


def _split_prompts(
    order: np.ndarray, fractions: np.ndarray, fold: tuple[int, int] | None
) -> list[np.ndarray]:
    """Deal shuffled prompt ids into train, validation and test groups (see :func:`prepare`)."""
    if fold is None:
        counts = np.floor(fractions * len(order)).astype(int)
        counts[0] = len(order) - counts[1:].sum()
        if (counts[fractions > 0] == 0).any() or (counts == 0).any():
            raise ValueError(
                f"{len(order)} prompts cannot fill the splits {tuple(fractions)}: a split "
                "would be empty. Use more prompts (n_prompts) or other fractions."
            )
        return np.split(order, np.cumsum(counts)[:-1])
    if (
        not isinstance(fold, tuple)
        or len(fold) != 2
        or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in fold)
        or not 0 <= fold[0] < fold[1]
    ):
        raise ValueError(f"fold must be (i, k) with integers 0 <= i < k, got {fold!r}.")
    index, k = fold
    if not 2 <= k <= len(order) - 2 or fractions[:2].sum() == 0:
        raise ValueError(
            f"K-fold needs 2 <= k <= prompts - 2 ({len(order)} prompts, k={k}) and a training "
            "or validation share in split; use fewer folds or more prompts."
        )
    test = order[index::k]
    rest = np.array([p for j, p in enumerate(order) if j % k != index])
    n_val = max(1, round(len(rest) * fractions[1] / fractions[:2].sum()))
    return [rest[n_val:], rest[:n_val], test]


def project(
    trajs: Trajectories, projection: Projection, *, dt: float | None = None, name: str = ""
) -> SDEData:
    """Map trajectories into fitted coordinates with an existing projection.

    Use it to place other trajectories (human text, another temperature, simulated hidden
    states) in the coordinates a model was fitted in, e.g.
    ``project(trajs.where(source="human"), data.projection)``.

    Args:
        trajs: Trajectories that record ``projection.layer``.
        projection: From :func:`prepare` (``PreparedData.projection``).
        dt: Time step, a positive finite number; default ``trajs.dt``.
        name: Name of the split.

    Returns:
        The projected split.

    Raises:
        ValueError: If the trajectories lack the layer or have another hidden size, a valid
            step of the layer holds NaN or inf, or ``dt`` is invalid.

    """
    step = check_time_step(trajs.dt if dt is None else dt)
    try:
        states = trajs.layer(projection.layer).float()
    except KeyError as error:
        raise ValueError(
            f"The projection is for layer {projection.layer}, but the trajectories record "
            f"layers {trajs.layers}; extract that layer."
        ) from error
    if trajs.dim != projection.mean.shape[0]:
        raise ValueError(
            f"The projection is for hidden size {projection.mean.shape[0]}, the trajectories "
            f"have {trajs.dim}: they come from another model."
        )
    trajs.check_finite(projection.layer)
    z = projection.forward(states)
    return SDEData(
        states=torch.where(trajs.mask[..., None], z, torch.zeros(())),
        mask=trajs.mask,
        dt=step,
        rows=trajs.rows.reset_index(drop=True),
        name=name,
        entropies=trajs.entropies,
    )
