"""`Trajectories`: the one hand-over format between extraction and everything after it.

A trajectory is the sequence of an LLM's hidden states X_1, ..., X_T at successive tokens (token
time) or successive layers (layer time). Generated and human (teacher-forced) text share the
format; a per-row table says which is which.

Conventions (token time):
    Step ``k`` of a row belongs to token ``y_k``. ``states[:, :, k]`` is the hidden state at
    ``y_k``'s position, i.e. *after* the model has read ``y_k``; ``logprobs[:, k]`` and
    ``entropies[:, k]`` describe the next-token distribution that ``y_k`` was drawn from (the one
    computed at the previous position). The last generated token's state is included.

Files are safetensors (tensors) with the row table and metadata as JSON in the header: no pickle.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from sdelm.files import save_atomically

__all__ = ["ROW_COLUMNS", "Trajectories", "TrajectoryFileError"]

FORMAT = "sdelm.trajectories/1"
ROW_COLUMNS = ("prompt_id", "prompt", "category", "temperature", "sample", "source", "text")
_TENSORS = ("states", "mask", "tokens", "logprobs", "entropies", "temperatures")


class TrajectoryFileError(ValueError):
    """A trajectory file is missing, truncated, or not in sdelm's format."""


def _empty_rows(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "prompt_id": [f"seq-{i:05d}" for i in range(n)],
            "prompt": [""] * n,
            "category": [""] * n,
            "temperature": [math.nan] * n,
            "sample": [0] * n,
            "source": ["synthetic"] * n,
            "text": [""] * n,
        }
    )


@dataclass
class Trajectories:
    """Hidden-state trajectories with their tokens, probabilities and provenance.

    Attributes:
        states: Float tensor of size (n_sequences, n_layers, n_steps, dim).
        mask: Bool tensor of size (n_sequences, n_steps); ``True`` where a step exists. A row's
            valid steps are a prefix (generation stops at end-of-sequence).
        tokens: Long tensor of size (n_sequences, n_steps); token ids, -1 where unknown.
        logprobs: Float tensor of size (n_sequences, n_steps); log-probability (nats) of the
            token under the distribution it was sampled from (NaN where unknown).
        entropies: Float tensor of size (n_sequences, n_steps); entropy (nats) of that
            distribution (NaN where unknown).
        rows: One row per sequence with columns :data:`ROW_COLUMNS`.
        layers: The layer index of each entry of the second axis of ``states`` (0 is the token
            embedding).
        dt: Time step between consecutive steps.
        time_axis: ``"token"`` (steps are generated tokens) or ``"layer"``.
        meta: Run metadata (model, seed, sdelm version, extraction arguments).
        temperatures: Float tensor of size (n_sequences, n_steps): the temperature each token
            was drawn at (NaN where unknown, e.g. for read text). It differs from the row's
            ``temperature`` only under a temperature control (:mod:`sdelm.control`); ``None``
            fills it from the row table.

    """

    states: torch.Tensor
    mask: torch.Tensor
    tokens: torch.Tensor
    logprobs: torch.Tensor
    entropies: torch.Tensor
    rows: pd.DataFrame
    layers: tuple[int, ...]
    dt: float = 1.0
    time_axis: str = "token"
    meta: dict[str, Any] = field(default_factory=dict)
    temperatures: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.layers = tuple(int(layer) for layer in self.layers)
        self.rows = self.rows.reset_index(drop=True)
        if self.temperatures is None:
            per_row = torch.tensor(
                self.rows["temperature"].to_numpy(float, copy=True), dtype=torch.float32
            )
            self.temperatures = torch.where(
                self.mask.bool(), per_row[:, None], torch.full((), math.nan)
            )
        self._validate()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_states(
        cls,
        states: torch.Tensor | np.ndarray,
        mask: torch.Tensor | np.ndarray | None = None,
        dt: float = 1.0,
        *,
        layers: tuple[int, ...] | None = None,
        time_axis: str = "token",
        meta: dict[str, Any] | None = None,
    ) -> Trajectories:
        """Wrap states that did not come from an LLM (synthetic data, simulations).

        Args:
            states: Array of size (n_sequences, n_steps, dim), or (n_sequences, n_layers,
                n_steps, dim) with ``layers`` given.
            mask: Bool array of size (n_sequences, n_steps); ``None`` means every step is
                valid. Masked-out steps may hold NaN (they are set to zero).
            dt: Time step.
            layers: Layer labels when ``states`` has a layer axis; default ``(0,)``.
            time_axis: ``"token"`` or ``"layer"``.
            meta: Extra metadata.

        Returns:
            Trajectories with source ``"synthetic"`` and unknown tokens and probabilities.

        Raises:
            ValueError: On a wrong number of dimensions, a mask of the wrong size, or NaN/inf
                in a valid step.

        """
        states = torch.as_tensor(states, dtype=torch.float32)
        if states.ndim == 3:
            states = states.unsqueeze(1)
        elif states.ndim != 4:
            raise ValueError(
                "states must have size (n_sequences, n_steps, dim) or (n_sequences, n_layers, "
                f"n_steps, dim); got {tuple(states.shape)}. Add a trailing axis for 1-D data."
            )
        n, n_layers, n_steps, _ = states.shape
        mask = (
            torch.ones(n, n_steps, dtype=torch.bool)
            if mask is None
            else torch.as_tensor(mask, dtype=torch.bool)
        )
        if mask.shape != (n, n_steps):
            raise ValueError(f"mask must have size {(n, n_steps)}; got {tuple(mask.shape)}.")
        valid = mask[:, None, :, None].expand_as(states)
        bad = ~torch.isfinite(states) & valid
        if bad.any():
            seq, _, step, _ = (int(i) for i in bad.nonzero()[0])
            raise ValueError(
                f"states contain NaN or inf in {int(bad.sum())} valid entries (first at "
                f"sequence {seq}, step {step}). Remove those sequences, or mark the steps as "
                "missing with mask=False."
            )
        states = torch.where(valid, states, torch.zeros(()))
        nan = torch.full((n, n_steps), math.nan)
        return cls(
            states=states,
            mask=mask,
            tokens=torch.full((n, n_steps), -1, dtype=torch.long),
            logprobs=nan,
            entropies=nan.clone(),
            rows=_empty_rows(n),
            layers=layers if layers is not None else tuple(range(n_layers)),
            dt=float(dt),
            time_axis=time_axis,
            meta=dict(meta or {}),
        )

    @classmethod
    def concat(cls, parts: list[Trajectories]) -> Trajectories:
        """Stack trajectories row-wise, padding the step axis with masked-out zeros.

        Args:
            parts: Trajectories with the same layers, dim, dt and time axis.

        Returns:
            One set of trajectories; ``meta`` is the first part's, with ``"parts"`` listing each
            part's metadata.

        Raises:
            ValueError: If ``parts`` is empty or the parts are incompatible.

        """
        if not parts:
            raise ValueError("concat needs at least one Trajectories.")
        first = parts[0]
        for part in parts[1:]:
            same = (part.layers, part.dim, part.dt, part.time_axis) == (
                first.layers,
                first.dim,
                first.dt,
                first.time_axis,
            )
            if not same:
                raise ValueError(
                    "Cannot concatenate trajectories with different layers, dim, dt or time "
                    f"axis: {first!r} and {part!r}."
                )
        n_steps = max(part.n_steps for part in parts)

        def pad(tensor: torch.Tensor, axis: int, value: float | bool | int) -> torch.Tensor:
            missing = n_steps - tensor.shape[axis]
            if missing == 0:
                return tensor
            size = list(tensor.shape)
            size[axis] = missing
            return torch.cat([tensor, torch.full(size, value, dtype=tensor.dtype)], dim=axis)

        return cls(
            states=torch.cat([pad(p.states, 2, 0.0) for p in parts]),
            mask=torch.cat([pad(p.mask, 1, False) for p in parts]),
            tokens=torch.cat([pad(p.tokens, 1, -1) for p in parts]),
            logprobs=torch.cat([pad(p.logprobs, 1, math.nan) for p in parts]),
            entropies=torch.cat([pad(p.entropies, 1, math.nan) for p in parts]),
            rows=pd.concat([p.rows for p in parts], ignore_index=True),
            layers=first.layers,
            dt=first.dt,
            time_axis=first.time_axis,
            meta={**first.meta, "parts": [p.meta for p in parts]},
            temperatures=torch.cat([pad(p.temperatures, 1, math.nan) for p in parts]),
        )

    # ------------------------------------------------------------------ properties
    @property
    def n_sequences(self) -> int:
        """Number of sequences (rows)."""
        return int(self.states.shape[0])

    @property
    def n_steps(self) -> int:
        """Length of the step axis (the longest sequence)."""
        return int(self.states.shape[2])

    @property
    def dim(self) -> int:
        """Dimension of one hidden state."""
        return int(self.states.shape[3])

    @property
    def lengths(self) -> torch.Tensor:
        """Long tensor of size (n_sequences,): number of valid steps of each row."""
        return self.mask.sum(dim=1)

    def __len__(self) -> int:
        return self.n_sequences

    def layer(self, layer: int) -> torch.Tensor:
        """Return the states of one layer.

        Args:
            layer: A layer index present in :attr:`layers` (negative counts from the end of
                :attr:`layers`).

        Returns:
            Float tensor of size (n_sequences, n_steps, dim).

        Raises:
            KeyError: If the layer was not recorded.

        """
        if layer < 0 and -len(self.layers) <= layer:
            return self.states[:, layer]
        if layer not in self.layers:
            raise KeyError(f"Layer {layer} was not recorded; recorded layers are {self.layers}.")
        return self.states[:, self.layers.index(layer)]

    # ------------------------------------------------------------------ selection
    def __getitem__(
        self, index: int | slice | list[int] | np.ndarray | torch.Tensor
    ) -> Trajectories:
        """Select rows by position, slice, list of positions or boolean mask."""
        if isinstance(index, int):
            index = [index]
        if not isinstance(index, (slice, torch.Tensor)):
            index = torch.as_tensor(np.array(index))
        positions = torch.arange(self.n_sequences)[index]
        return replace(
            self,
            states=self.states[positions],
            mask=self.mask[positions],
            tokens=self.tokens[positions],
            logprobs=self.logprobs[positions],
            entropies=self.entropies[positions],
            temperatures=self.temperatures[positions],
            rows=self.rows.iloc[positions.numpy()],
        )

    def where(self, **criteria: Any) -> Trajectories:
        """Select rows whose attributes match, e.g. ``where(source="human")``.

        Args:
            **criteria: Column of :attr:`rows` = value, or = list of accepted values.

        Returns:
            The matching rows (possibly none).

        Raises:
            KeyError: On an unknown column.

        """
        keep = np.ones(self.n_sequences, dtype=bool)
        for column, value in criteria.items():
            if column not in self.rows.columns:
                raise KeyError(f"Unknown row attribute {column!r}; choose from {ROW_COLUMNS}.")
            values = value if isinstance(value, (list, tuple, set)) else [value]
            keep &= self.rows[column].isin(list(values)).to_numpy()
        return self[torch.from_numpy(keep)]

    def with_layers(self, layers: list[int] | tuple[int, ...]) -> Trajectories:
        """Keep only some recorded layers, in the given order."""
        positions = [self.layers.index(layer) for layer in layers]
        return replace(self, states=self.states[:, positions], layers=tuple(layers))

    def to_frame(self) -> pd.DataFrame:
        """Return one row per valid step: row attributes, step, token, log-prob and entropy."""
        seq, step = self.mask.nonzero(as_tuple=True)
        frame = self.rows.iloc[seq.numpy()].reset_index(drop=True)
        frame.insert(0, "sequence", seq.numpy())
        frame.insert(1, "step", step.numpy())
        frame["token"] = self.tokens[seq, step].numpy()
        frame["logprob"] = self.logprobs[seq, step].numpy()
        frame["entropy"] = self.entropies[seq, step].numpy()
        return frame

    # ------------------------------------------------------------------ representation
    def __repr__(self) -> str:
        sources = ", ".join(f"{k} {v}" for k, v in self.rows["source"].value_counts().items())
        temps = sorted(t for t in self.rows["temperature"].dropna().unique())
        parts = [
            f"{self.n_sequences} sequences × {self.n_steps} steps",
            f"layers {self.layers}",
            f"dim {self.dim}",
            f"{self.time_axis} time, dt={self.dt:g}",
            f"sources: {sources}" if sources else "no rows",
        ]
        if temps:
            parts.append("temperatures " + ", ".join(f"{t:g}" for t in temps))
        if "model" in self.meta:
            parts.append(f"model {self.meta['model']}")
        return "Trajectories(" + "; ".join(parts) + ")"

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> Path:
        """Write to one safetensors file, atomically (temporary name, then rename).

        Args:
            path: Destination, conventionally ending in ``.safetensors``.

        Returns:
            The path written.

        """
        header = {
            "format": FORMAT,
            "layers": list(self.layers),
            "dt": self.dt,
            "time_axis": self.time_axis,
            "rows": self.rows.to_dict(orient="list"),
            "meta": self.meta,
        }
        tensors = {name: getattr(self, name) for name in _TENSORS}
        return save_atomically(tensors, path, {"sdelm": json.dumps(header)})

    @classmethod
    def load(cls, path: str | os.PathLike) -> Trajectories:
        """Read a file written by :meth:`save`, or a folder of shards as one set.

        Args:
            path: The file, or a folder written by :func:`sdelm.shards.extract_shards` (its
                ``manifest.json`` lists the shards, which are joined in order).

        Returns:
            The trajectories.

        Raises:
            TrajectoryFileError: If the file is missing, truncated, from another program, or
                its parts disagree in size (re-create it, e.g. re-run the extraction); or if a
                folder's shards are incomplete (re-run the extraction: it resumes).

        """
        path = Path(path)
        if path.is_dir():
            return cls._load_shards(path)
        if not path.is_file():
            raise TrajectoryFileError(f"No trajectory file at {path}.")
        advice = "Delete it and re-run the extraction (or the chapter) to re-create it."
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as error:
            raise TrajectoryFileError(
                f"{path} is truncated or not a safetensors file ({error}). {advice}"
            ) from error
        try:
            header = json.loads(metadata["sdelm"])
            if header["format"] != FORMAT:
                raise TrajectoryFileError(
                    f"{path} has format {header['format']!r}; this sdelm reads {FORMAT!r}. "
                    + advice
                )
            return cls(
                **{name: tensors[name] for name in _TENSORS if name != "temperatures"},
                temperatures=tensors.get("temperatures"),  # absent in older files: from rows
                rows=pd.DataFrame(header["rows"], columns=list(ROW_COLUMNS)),
                layers=tuple(header["layers"]),
                dt=float(header["dt"]),
                time_axis=header["time_axis"],
                meta=header["meta"],
            )
        except TrajectoryFileError:
            raise
        except (KeyError, json.JSONDecodeError, TypeError) as error:
            raise TrajectoryFileError(
                f"{path} is not an sdelm trajectory file (missing {error}). {advice}"
            ) from error
        except ValueError as error:
            raise TrajectoryFileError(f"{path} is inconsistent: {error} {advice}") from error

    @classmethod
    def _load_shards(cls, folder: Path) -> Trajectories:
        manifest = folder / "manifest.json"
        if not manifest.is_file():
            raise TrajectoryFileError(f"{folder} is a folder without a manifest.json of shards.")
        n_shards = int(json.loads(manifest.read_text())["n_shards"])
        paths = [folder / f"shard-{i:05d}.safetensors" for i in range(n_shards)]
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise TrajectoryFileError(
                f"{folder} is incomplete: {len(missing)} of {n_shards} shards missing "
                f"({', '.join(missing[:3])}…). Run the extraction again with the same arguments: "
                "it resumes and writes only the missing shards."
            )
        return cls.concat([cls.load(p) for p in paths])

    # ------------------------------------------------------------------ checks
    def _validate(self) -> None:
        if self.states.ndim != 4:
            raise ValueError(
                "states must have size (n_sequences, n_layers, n_steps, dim); "
                f"got {tuple(self.states.shape)}."
            )
        n, n_layers, n_steps, _ = self.states.shape
        for name in ("mask", "tokens", "logprobs", "entropies", "temperatures"):
            shape = tuple(getattr(self, name).shape)
            if shape != (n, n_steps):
                raise ValueError(f"{name} has size {shape}, expected {(n, n_steps)}.")
        if len(self.layers) != n_layers:
            raise ValueError(f"{len(self.layers)} layer labels for {n_layers} recorded layers.")
        if len(self.rows) != n:
            raise ValueError(f"{len(self.rows)} table rows for {n} sequences.")
        missing = [c for c in ROW_COLUMNS if c not in self.rows.columns]
        if missing:
            raise ValueError(f"the row table lacks columns {missing}.")
        if self.time_axis not in ("token", "layer"):
            raise ValueError(f"time_axis must be 'token' or 'layer', got {self.time_axis!r}.")
        if self.mask.dtype != torch.bool:
            self.mask = self.mask.bool()
