"""Controlled generation: steering the LLM with its fitted SDE while it generates.

A fitted SDE predicts, from the state ``X_k`` after the last token, how large the random kick
of the next token will be: ``tr σσᵀ(X_k, t_k) Δt``. :class:`DiffusionTemperature` turns that
prediction into the next token's temperature, cooling where the SDE expects a large kick and
warming where it expects a small one:

    T_{k+1} = clip(T_base · (D(X_k) / D_ref)^(−strength), low, high),   D = tr σσᵀ.

:class:`EntropyTemperature` is the same law driven by the language model's own next-token
entropy instead of the SDE: the baseline that needs no SDE. Pass either to
:func:`sdelm.extract` as ``control``; :mod:`sdelm.analysis.steering` scores what each run
wrote. The laws implement the protocols of :mod:`sdelm.generation.hooks`; this module holds the
laws only, and imports no scoring.

:class:`DriftNudge` acts on the state instead of the temperature: before the next token is read
out, the last hidden state moves along the fitted drift, ``X_k + strength · μ(X_k, t_k) Δt``
(mapped back from the fitted coordinates), and the next-token logits are computed from the
moved state. Pass it to :func:`sdelm.extract` as ``nudge``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from sdelm.data import Projection
from sdelm.models import SDEModel
from sdelm.trajectories import Trajectories

__all__ = [
    "DiffusionTemperature",
    "DriftNudge",
    "EntropyTemperature",
]


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
