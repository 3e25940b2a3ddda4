"""Branches: many continuations sampled from the same prefixes, as one hand-over format.

:func:`sdelm.generation.branch` records them; the analyses read them
(:mod:`sdelm.analysis.branching`). Like :class:`~sdelm.trajectories.Trajectories`, a
:class:`Branches` is saved as one safetensors file with its tables in the header.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load

from sdelm.files import save_atomically

__all__ = ["BRANCH_TENSORS", "FORMAT", "PREFIX_COLUMNS", "Branches"]


FORMAT = "sdelm-branches-1"


BRANCH_TENSORS = ("prefix_states", "states", "tokens", "logprobs", "entropies", "top_mass")


PREFIX_COLUMNS = ("prompt_id", "prompt", "category", "temperature", "sample", "sequence", "step")


@dataclass
class Branches:
    """Next-step states of many continuations drawn from the same prefixes.

    Prefix ``p`` is the prompt of a recorded sequence and its generated tokens ``y_0 … y_k``;
    its state ``X_k`` is the state after reading ``y_k``. Branch ``b`` at temperature ``T``
    draws ``y_{k+1}`` from the model's next-token distribution at ``T`` and records the state
    ``X_{k+1}`` after reading it.

    Attributes:
        prefix_states: Float tensor of size (n_prefixes, n_layers, hidden): ``X_k``.
        states: Float tensor of size (n_prefixes, n_temperatures, n_branches, n_layers,
            hidden): ``X_{k+1}`` of each branch.
        tokens: Long tensor of size (n_prefixes, n_temperatures, n_branches): the drawn tokens.
        logprobs: Float tensor of the same size: each drawn token's untempered log-probability.
        entropies: Float tensor of size (n_prefixes, n_temperatures): entropy in nats of the
            distribution the branches were drawn from.
        top_mass: Long tensor of size (n_prefixes, n_temperatures): how many tokens carry 90%
            of that distribution's mass.
        prefixes: One row per prefix: ``prompt_id``, ``prompt``, ``category``, ``temperature``
            and ``sample`` of the recorded sequence, its index ``sequence`` and ``step`` k.
        temperatures: The branching temperatures.
        layers: Hidden-state layers recorded.
        meta: Model name, seed, number of branches, top-p.

    """

    prefix_states: torch.Tensor
    states: torch.Tensor
    tokens: torch.Tensor
    logprobs: torch.Tensor
    entropies: torch.Tensor
    top_mass: torch.Tensor
    prefixes: pd.DataFrame
    temperatures: tuple[float, ...]
    layers: tuple[int, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n, n_temps, n_branches, n_layers, hidden = self.states.shape
        expected = {
            "prefix_states": (n, n_layers, hidden),
            "tokens": (n, n_temps, n_branches),
            "logprobs": (n, n_temps, n_branches),
            "entropies": (n, n_temps),
            "top_mass": (n, n_temps),
        }
        for name, shape in expected.items():
            if tuple(getattr(self, name).shape) != shape:
                raise ValueError(
                    f"{name} has size {tuple(getattr(self, name).shape)}, not {shape}."
                )
        if len(self.prefixes) != n or len(self.temperatures) != n_temps:
            raise ValueError("prefixes and temperatures must match the states' first two axes.")
        if len(self.layers) != n_layers:
            raise ValueError(f"{len(self.layers)} layer labels for {n_layers} recorded layers.")

    @property
    def n_prefixes(self) -> int:
        """Number of prefixes."""
        return int(self.states.shape[0])

    @property
    def n_branches(self) -> int:
        """Branches per prefix and temperature."""
        return int(self.states.shape[2])

    def layer(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(X_k, X_{k+1})`` at one layer: sizes (P, hidden) and (P, T, B, hidden)."""
        if layer not in self.layers:
            raise KeyError(f"Layer {layer} was not recorded; recorded: {list(self.layers)}.")
        i = self.layers.index(layer)
        return self.prefix_states[:, i], self.states[:, :, :, i]

    def save(self, path: str | os.PathLike) -> Path:
        """Write to one safetensors file, atomically."""
        header = {
            "format": FORMAT,
            "temperatures": list(self.temperatures),
            "layers": list(self.layers),
            "prefixes": self.prefixes.to_dict(orient="list"),
            "meta": self.meta,
        }
        tensors = {name: getattr(self, name) for name in BRANCH_TENSORS}
        return save_atomically(tensors, path, {"sdelm_branches": json.dumps(header)})

    @classmethod
    def load(cls, path: str | os.PathLike) -> Branches:
        """Read a file written by :meth:`save` into memory.

        Raises:
            ValueError: If the file is missing, damaged or not a branches file.

        """
        path = Path(path)
        try:
            with safe_open(str(path), framework="pt") as handle:
                header = json.loads((handle.metadata() or {})["sdelm_branches"])
            tensors = load(path.read_bytes())
            if header["format"] != FORMAT:
                raise ValueError(f"format {header['format']!r}, expected {FORMAT!r}")
            return cls(
                **{name: tensors[name] for name in BRANCH_TENSORS},
                prefixes=pd.DataFrame(header["prefixes"], columns=list(PREFIX_COLUMNS)),
                temperatures=tuple(header["temperatures"]),
                layers=tuple(header["layers"]),
                meta=header["meta"],
            )
        except (OSError, SafetensorError, KeyError, TypeError, ValueError) as error:
            raise ValueError(
                f"{path} is not a readable branches file ({error}); delete it and branch again."
            ) from error
