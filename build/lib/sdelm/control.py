"""Controlled generation: steering the LLM with its fitted SDE while it generates.

A fitted SDE predicts, from the state ``X_k`` after the last token, how large the random kick
of the next token will be: ``tr σσᵀ(X_k, t_k) Δt``. :class:`DiffusionTemperature` turns that
prediction into the next token's temperature, cooling where the SDE expects a large kick and
warming where it expects a small one:

    T_{k+1} = clip(T_base · (D(X_k) / D_ref)^(−strength), low, high),   D = tr σσᵀ.

:class:`EntropyTemperature` is the same law driven by the language model's own next-token
entropy instead of the SDE: the baseline that needs no SDE. Pass either to
:func:`sdelm.extract` as ``control``; :func:`score_arms` measures each run's text (quality:
the model's own untempered log-probability; diversity: distinct n-grams across the samples of
a prompt; repetition within a sample) and :func:`frontier_gain` asks whether a control reaches
a better quality–diversity trade-off than plain sampling at any constant temperature.

:class:`DriftNudge` acts on the state instead of the temperature: before the next token is read
out, the last hidden state moves along the fitted drift, ``X_k + strength · μ(X_k, t_k) Δt``
(mapped back from the fitted coordinates), and the next-token logits are computed from the
moved state. Pass it to :func:`sdelm.extract` as ``nudge``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch

from sdelm.applications import repetition, sequence_mean
from sdelm.data import Projection
from sdelm.extract import untempered
from sdelm.lm import LM
from sdelm.models import SDEModel
from sdelm.stats import cluster_bootstrap
from sdelm.trajectories import Trajectories

__all__ = [
    "DiffusionTemperature",
    "DriftNudge",
    "EntropyTemperature",
    "StateNudge",
    "TemperatureControl",
    "distinct",
    "frontier_gain",
    "kicks",
    "score_arms",
]


class TemperatureControl(Protocol):
    """What :func:`sdelm.extract` calls before drawing each token.

    Attributes:
        layer: Hidden-state layer whose state the control reads (``None``: it reads none).

    """

    layer: int | None

    def __call__(
        self, step: int, state: torch.Tensor | None, logits: torch.Tensor, base: torch.Tensor
    ) -> torch.Tensor:
        """Return the temperatures of the tokens drawn at ``step``.

        Args:
            step: Index of the token about to be drawn (0 for the first generated token).
            state: Float tensor of size (batch, hidden_size): the state at :attr:`layer` after
                the previous generated token; ``None`` at step 0 or when ``layer`` is ``None``.
            logits: Float tensor of size (batch, vocab): the next-token logits.
            base: Float tensor of size (batch,): each sequence's base temperature.

        Returns:
            Float tensor of size (batch,), every entry > 0.

        """

    def describe(self) -> dict[str, Any]:
        """Return a JSON-serialisable description (recorded in the trajectories' metadata)."""


class StateNudge(Protocol):
    """What :func:`sdelm.extract` calls to move the last hidden state before each read-out.

    Attributes:
        layer: The layer it moves, which must be the model's last.

    """

    layer: int

    def __call__(self, step: int, state: torch.Tensor) -> torch.Tensor:
        """Return the moved state from which token ``step`` is read out.

        Args:
            step: Index of the token about to be drawn (>= 1: token 0 is read out from the
                prompt, which is not nudged).
            state: Float tensor of size (batch, hidden_size): the last layer's state after the
                previous generated token (the input of the model's output layer).

        Returns:
            Float tensor of size (batch, hidden_size).

        """

    def describe(self) -> dict[str, Any]:
        """Return a JSON-serialisable description (recorded in the trajectories' metadata)."""


def _weights_digest(model: SDEModel) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode() + tensor.detach().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def _check_projection(model: SDEModel, projection: Projection) -> None:
    if projection.components.shape[0] != model.dim:
        raise ValueError(
            f"The projection has {projection.components.shape[0]} components but the model "
            f"has dimension {model.dim}; use the projection its data were prepared with."
        )


def _check_law(reference: float, strength: float, bounds: Sequence[float]) -> tuple[float, float]:
    low, high = (float(b) for b in bounds)
    if not reference > 0 or not np.isfinite(reference):
        raise ValueError(f"reference must be a positive number, got {reference!r}.")
    if not 0 < low <= high:
        raise ValueError(f"bounds must be (low, high) with 0 < low <= high, got {tuple(bounds)}.")
    if not np.isfinite(strength):
        raise ValueError(f"strength must be a finite number, got {strength!r}.")
    return low, high


def _power_law(
    quantity: torch.Tensor,
    base: torch.Tensor,
    reference: float,
    strength: float,
    bounds: tuple[float, float],
) -> torch.Tensor:
    """``clip(base · (quantity / reference)^(−strength), *bounds)``; sizes (batch,)."""
    factor = (quantity.double() / reference).clamp_min(1e-12).pow(-strength)
    return (base.double().cpu() * factor.cpu()).clamp(*bounds).float()


class DiffusionTemperature:
    """Temperature from the fitted diffusion at the current state (see the module docstring).

    Args:
        model: A fitted SDE.
        projection: The projection its data were prepared with (its layer is the layer read).
        reference: ``D_ref``, the value of tr σσᵀ at which the base temperature is used.
        strength: Exponent; 0 is plain sampling, > 0 cools where the SDE expects a large kick,
            < 0 warms there.
        bounds: Lowest and highest temperature allowed.
        dt: Time step of the fitted data (token ``k`` sits at time ``k · dt``).

    Raises:
        ValueError: On a non-positive reference, bad bounds or a projection of another
            dimension than the model.

    """

    def __init__(
        self,
        model: SDEModel,
        projection: Projection,
        *,
        reference: float,
        strength: float = 0.5,
        bounds: Sequence[float] = (0.25, 2.0),
        dt: float = 1.0,
    ) -> None:
        self.bounds = _check_law(reference, strength, bounds)
        _check_projection(model, projection)
        self.model, self.projection = model.eval(), projection
        self.reference, self.strength, self.dt = float(reference), float(strength), float(dt)
        self.layer = projection.layer

    @classmethod
    def calibrated(
        cls,
        model: SDEModel,
        projection: Projection,
        trajs: Trajectories,
        *,
        strength: float = 0.5,
        bounds: Sequence[float] = (0.25, 2.0),
        dt: float = 1.0,
    ) -> DiffusionTemperature:
        """Build the control with ``D_ref`` = the median of tr σσᵀ over the states of a run.

        Args:
            model: A fitted SDE.
            projection: Its projection.
            trajs: A plain sampling run (e.g. at the base temperature) recording
                ``projection.layer``.
            strength: Exponent.
            bounds: Temperature bounds.
            dt: Time step.

        Returns:
            The control; with it, half of that run's tokens would have been drawn cooler than
            the base temperature and half warmer.

        """
        states = trajs.layer(projection.layer)
        seq, step = trajs.mask.nonzero(as_tuple=True)
        control = cls(model, projection, reference=1.0, strength=strength, bounds=bounds, dt=dt)
        traces = control.trace(states[seq, step], step)
        return cls(
            model,
            projection,
            reference=float(traces.median()),
            strength=strength,
            bounds=bounds,
            dt=dt,
        )

    @torch.no_grad()
    def trace(self, states: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """Return tr σσᵀ, the predicted size of the next kick, at hidden states.

        Args:
            states: Float tensor of size (batch, hidden_size) at the control's layer.
            steps: Long tensor of size (batch,): the step each state belongs to.

        Returns:
            Float tensor of size (batch,).

        """
        mean = self.projection.mean
        z = self.projection.forward(states.to(device="cpu", dtype=mean.dtype)).float()
        t = steps.to(torch.float32).cpu() * self.dt
        return self.model.diffusion(z, t).pow(2).sum(-1)

    def __call__(  # noqa: D102 (documented by TemperatureControl)
        self, step: int, state: torch.Tensor | None, logits: torch.Tensor, base: torch.Tensor
    ) -> torch.Tensor:
        if state is None:
            return base
        traces = self.trace(state, torch.full((state.shape[0],), step - 1))
        return _power_law(traces, base, self.reference, self.strength, self.bounds)

    def describe(self) -> dict[str, Any]:  # noqa: D102
        return {
            "kind": "diffusion",
            "reference": self.reference,
            "strength": self.strength,
            "bounds": list(self.bounds),
            "layer": self.layer,
            "dt": self.dt,
            "model": type(self.model).__name__,
            "weights_sha256": _weights_digest(self.model),
        }


class EntropyTemperature:
    """Temperature from the language model's next-token entropy (the baseline without an SDE).

    ``T = clip(T_base · (H / H_ref)^(−strength), low, high)`` with ``H`` the entropy (nats) of
    the untempered next-token distribution.

    Args:
        reference: ``H_ref`` in nats.
        strength: Exponent, as in :class:`DiffusionTemperature`.
        bounds: Lowest and highest temperature allowed.

    Raises:
        ValueError: On a non-positive reference or bad bounds.

    """

    layer = None

    def __init__(
        self, *, reference: float, strength: float = 0.5, bounds: Sequence[float] = (0.25, 2.0)
    ) -> None:
        self.bounds = _check_law(reference, strength, bounds)
        self.reference, self.strength = float(reference), float(strength)

    @classmethod
    def calibrated(
        cls, trajs: Trajectories, *, strength: float = 0.5, bounds: Sequence[float] = (0.25, 2.0)
    ) -> EntropyTemperature:
        """Build the control with ``H_ref`` = the median next-token entropy of a run.

        Args:
            trajs: A plain sampling run at temperature 1 without top-p (its recorded entropies
                are then those of the untempered distribution).
            strength: Exponent.
            bounds: Temperature bounds.

        Returns:
            The control.

        Raises:
            ValueError: If the run was not sampled at temperature 1 with top_p = 1.

        """
        used = trajs.temperatures[trajs.mask]
        if not torch.all(used == 1.0) or trajs.meta.get("top_p", 1.0) != 1.0:
            raise ValueError(
                "Calibrate EntropyTemperature on a run sampled at temperature 1 with top_p=1: "
                "only then are its recorded entropies those of the untempered distribution."
            )
        reference = float(trajs.entropies[trajs.mask].median())
        return cls(reference=reference, strength=strength, bounds=bounds)

    def __call__(  # noqa: D102 (documented by TemperatureControl)
        self, step: int, state: torch.Tensor | None, logits: torch.Tensor, base: torch.Tensor
    ) -> torch.Tensor:
        entropy = torch.distributions.Categorical(logits=logits.float()).entropy()
        return _power_law(entropy, base, self.reference, self.strength, self.bounds)

    def describe(self) -> dict[str, Any]:  # noqa: D102
        return {
            "kind": "entropy",
            "reference": self.reference,
            "strength": self.strength,
            "bounds": list(self.bounds),
        }


class DriftNudge:
    """Move the last hidden state along the fitted drift before the next token is read out.

    ``X'_k = X_k + strength · μ(Z_k, t_k) Δt`` mapped to hidden coordinates (``Z_k`` is the
    state in the fitted coordinates; the displacement is scaled back by the projection's
    standard deviations and components). Only the read-out is moved: the model's later states
    depend on the nudge only through the tokens it draws.

    Args:
        model: A fitted SDE of the last layer's states.
        projection: The projection its data were prepared with; its layer must be the model's
            last (checked by :func:`sdelm.extract`).
        strength: 1 moves the read-out by one expected drift step, −1 against it, 0 not at all.
        direction: ``"drift"``, or ``"random"``: a placebo that moves by the same distance in
            a random direction of the fitted coordinates (one direction per step, drawn from
            ``seed``).
        dt: Time step of the fitted data.
        seed: Seed of the random directions.

    Raises:
        ValueError: On an unknown direction or a projection of another dimension than the
            model.

    """

    def __init__(
        self,
        model: SDEModel,
        projection: Projection,
        *,
        strength: float = 1.0,
        direction: str = "drift",
        dt: float = 1.0,
        seed: int = 0,
    ) -> None:
        if direction not in ("drift", "random"):
            raise ValueError(f"direction must be 'drift' or 'random', got {direction!r}.")
        _check_projection(model, projection)
        self.model, self.projection = model.eval(), projection
        self.strength, self.direction, self.dt, self.seed = float(strength), direction, dt, seed
        self.layer = projection.layer

    @torch.no_grad()
    def displacement(self, step: int, state: torch.Tensor) -> torch.Tensor:
        """Return the move in hidden coordinates, size (batch, hidden_size), before scaling.

        Args:
            step: Index of the token about to be drawn; the state belongs to ``step − 1``.
            state: Float tensor of size (batch, hidden_size).

        """
        mean = self.projection.mean
        z = self.projection.forward(state.to(device="cpu", dtype=mean.dtype)).float()
        t = torch.full((z.shape[0],), float(step - 1) * self.dt)
        move = self.model.drift(z, t) * self.dt
        if self.direction == "random":
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
            unit = torch.randn(z.shape[1], generator=generator)
            move = unit / unit.norm() * move.norm(dim=1, keepdim=True)
        return (move.to(mean.dtype) * self.projection.scale) @ self.projection.components

    def __call__(self, step: int, state: torch.Tensor) -> torch.Tensor:  # noqa: D102
        move = self.displacement(step, state)
        return state + self.strength * move.to(device=state.device, dtype=state.dtype)

    def describe(self) -> dict[str, Any]:  # noqa: D102
        return {
            "kind": "drift nudge",
            "strength": self.strength,
            "direction": self.direction,
            "layer": self.layer,
            "dt": self.dt,
            "seed": self.seed,
            "model": type(self.model).__name__,
            "weights_sha256": _weights_digest(self.model),
        }


def distinct(
    tokens: torch.Tensor, mask: torch.Tensor, groups: Sequence[Any], *, n: int = 2
) -> pd.Series:
    """Return the share of distinct token n-grams of each group of sequences, pooled.

    With several samples per prompt, grouping by prompt measures how differently the model
    continues the same prompt (1: no n-gram is ever repeated, within or across samples).

    Args:
        tokens: Long tensor of size (n_sequences, n_steps).
        mask: Bool tensor of size (n_sequences, n_steps).
        groups: One label per sequence.
        n: n-gram length.

    Returns:
        ``pandas.Series`` indexed by group label.

    Raises:
        ValueError: If ``groups`` has another length than ``tokens``.

    """
    if len(groups) != tokens.shape[0]:
        raise ValueError(f"{len(groups)} group labels for {tokens.shape[0]} sequences.")
    grams: dict[Any, list[tuple[int, ...]]] = {}
    for row, keep, group in zip(tokens.tolist(), mask.tolist(), groups, strict=True):
        ids = [token for token, valid in zip(row, keep, strict=True) if valid]
        grams.setdefault(group, []).extend(tuple(ids[i : i + n]) for i in range(len(ids) - n + 1))
    return pd.Series(
        {group: len(set(g)) / len(g) if g else np.nan for group, g in grams.items()},
        name=f"distinct_{n}",
    )


def kicks(law: DiffusionTemperature, trajs: Trajectories) -> pd.DataFrame:
    """Pair what the diffusion control sees at each step with the step that followed.

    Args:
        law: A diffusion control.
        trajs: Generated trajectories recording ``law.layer``.

    Returns:
        One row per transition ``k − 1 → k`` with ``prompt_id``, ``sample``, ``step`` (k),
        ``predicted`` (tr σσᵀ at the state before token k: the kick the SDE expects),
        ``realized`` (``|Z_k − Z_{k−1}|²`` in the fitted coordinates: the kick that came) and
        ``entropy`` (of the distribution token k was drawn from, nats).

    """
    both = trajs.mask[:, 1:] & trajs.mask[:, :-1]
    seq, before = both.nonzero(as_tuple=True)
    states = trajs.layer(law.layer)
    z = law.projection.forward(states.to(law.projection.mean.dtype)).float()
    rows = trajs.rows.iloc[seq.numpy()].reset_index(drop=True)
    return pd.DataFrame(
        {
            "prompt_id": rows["prompt_id"],
            "sample": rows["sample"],
            "step": (before + 1).numpy(),
            "predicted": law.trace(states[seq, before], before).numpy(),
            "realized": (z[seq, before + 1] - z[seq, before]).pow(2).sum(-1).numpy(),
            "entropy": trajs.entropies[seq, before + 1].numpy(),
        }
    )


def score_arms(lm: LM, arms: dict[str, Trajectories]) -> pd.DataFrame:
    """Measure quality, diversity and repetition of several sampling runs, per prompt.

    Args:
        lm: The model that generated the runs (it rescores runs saved without the untempered
            record).
        arms: Name → generated trajectories; every run has the same prompts.

    Returns:
        One row per (arm, prompt_id): ``logprob`` (mean untempered log-probability per token,
        nats, from :func:`sdelm.untempered`, averaged over the prompt's samples), ``distinct``
        (share of distinct token bigrams pooled over the samples), ``repetition`` (share of
        repeated trigrams within a sample), ``temperature`` (mean temperature the tokens were
        drawn at) and ``length`` (tokens), each averaged over samples.

    """
    frames = []
    for name, trajs in arms.items():
        per_sequence = pd.DataFrame(
            {
                "prompt_id": trajs.rows["prompt_id"],
                "logprob": sequence_mean(untempered(lm, trajs), trajs.mask),
                "repetition": repetition(trajs.tokens, trajs.mask),
                "temperature": sequence_mean(trajs.temperatures, trajs.mask),
                "length": trajs.mask.sum(1).numpy(),
            }
        )
        per_prompt = per_sequence.groupby("prompt_id", sort=False).mean()
        per_prompt["distinct"] = distinct(trajs.tokens, trajs.mask, list(trajs.rows["prompt_id"]))
        frames.append(per_prompt.reset_index().assign(arm=name))
    columns = ["arm", "prompt_id", "logprob", "distinct", "repetition", "temperature", "length"]
    return pd.concat(frames, ignore_index=True)[columns]


def frontier_gain(
    per_prompt: pd.DataFrame,
    arm: str,
    constant: Sequence[str],
    *,
    quality: str = "logprob",
    diversity: str = "distinct",
    seed: int = 0,
) -> dict[str, float]:
    """Return the diversity an arm gains over constant temperature at the same quality.

    The constant-temperature arms trace a frontier of (mean quality, mean diversity) over
    prompts; linear interpolation gives the diversity plain sampling reaches at the arm's
    quality (the end segments extend it beyond the constant runs' range). Prompts are
    resampled jointly for all arms (a paired bootstrap).

    Args:
        per_prompt: One row per (arm, prompt_id) with the ``quality`` and ``diversity``
            columns; every arm has the same prompts.
        arm: The arm to evaluate.
        constant: Constant-temperature arms, at least two.
        quality: Column where higher is better (e.g. mean log-probability at temperature 1).
        diversity: Column where higher is more diverse.
        seed: Seed of the bootstrap.

    Returns:
        :func:`sdelm.stats.cluster_bootstrap`'s fields for the gain (arm diversity − frontier
        diversity at the arm's quality; null 0), and ``inside``: 1.0 where the arm's mean
        quality lies within the constant runs' range (no extrapolation), else 0.0.

    Raises:
        ValueError: If fewer than two constant arms are given or the arms' prompts differ.

    """
    if len(constant) < 2:
        raise ValueError("frontier_gain needs at least two constant-temperature arms.")
    arms = [arm, *constant]
    quality_table = per_prompt.pivot(index="prompt_id", columns="arm", values=quality)[arms]
    diversity_table = per_prompt.pivot(index="prompt_id", columns="arm", values=diversity)[arms]
    if quality_table.isna().any().any():
        raise ValueError("Every arm needs a value for every prompt; the arms' prompts differ.")
    columns = [f"q{i}" for i in range(len(arms))], [f"d{i}" for i in range(len(arms))]
    wide = pd.DataFrame(
        np.hstack([quality_table.to_numpy(), diversity_table.to_numpy()]),
        columns=[*columns[0], *columns[1]],
    ).assign(prompt_id=quality_table.index)

    def frontier(frame: pd.DataFrame) -> tuple[float, bool]:
        mean_q = frame[columns[0]].to_numpy().mean(0)
        mean_d = frame[columns[1]].to_numpy().mean(0)
        order = np.argsort(mean_q[1:])
        xs, ys = mean_q[1:][order], mean_d[1:][order]
        inside = bool(xs[0] <= mean_q[0] <= xs[-1])
        # np.interp clamps outside the range; extrapolate with the end segments instead.
        i = int(np.clip(np.searchsorted(xs, mean_q[0]) - 1, 0, len(xs) - 2))
        slope = (ys[i + 1] - ys[i]) / (xs[i + 1] - xs[i])
        return float(mean_d[0] - (ys[i] + slope * (mean_q[0] - xs[i]))), inside

    measured = cluster_bootstrap(wide, lambda frame: frontier(frame)[0], seed=seed)
    return {**measured, "inside": float(frontier(wide)[1])}
