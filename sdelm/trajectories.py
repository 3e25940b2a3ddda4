"""`Trajectories`: the one hand-over format between extraction and everything after it.

A trajectory is the sequence of an LLM's hidden states X_1, ..., X_T at successive tokens (token
time) or successive layers (layer time). Generated and human (teacher-forced) text share the
format; a per-row table says which is which.

Conventions (token time):
    Step ``k`` of a row belongs to token ``y_k``. ``states[:, :, k]`` is the hidden state at
    ``y_k``'s position, i.e. *after* the model has read ``y_k``; ``logprobs[:, k]`` and
    ``entropies[:, k]`` describe the next-token distribution that ``y_k`` was drawn from (the one
    computed at the previous position), and ``untempered_logprobs[:, k]`` is ``y_k``'s
    log-probability under the model itself (temperature 1, no top-p). The last generated
    token's state is included.

Files are safetensors (tensors) with the row table and metadata as JSON in the header: no pickle.
"""

from __future__ import annotations

import json
import math
import operator
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError, safe_open

from sdelm.checks import check_time_step
from sdelm.files import save_atomically

__all__ = [
    "ROW_COLUMNS",
    "Trajectories",
    "TrajectoryFileError",
    "check_shard",
]

FORMAT = "sdelm.trajectories/1"
ROW_COLUMNS = ("prompt_id", "prompt", "category", "temperature", "sample", "source", "text")
_TENSORS = (
    "states",
    "mask",
    "tokens",
    "logprobs",
    "entropies",
    "temperatures",
    "untempered_logprobs",
)
#: Tensors that files written by earlier versions may lack (filled on loading).
_OPTIONAL_TENSORS = ("temperatures", "untempered_logprobs")
_HEADER_FIELDS = ("format", "layers", "dt", "time_axis", "rows", "meta")
_FLOAT_TENSORS = ("states", "logprobs", "entropies", "temperatures", "untempered_logprobs")
#: A shard file of a folder written by :func:`sdelm.generation.extract_shards` (see _shard_name).
_SHARD = re.compile(r"shard-(\d+)\.safetensors")


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


def _shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


#: What every shard of one sharded extraction shares: its meta entries of these names.
_SHARED_META = ("model", "hidden_size", "layers", "seed", "max_new_tokens", "temperatures",
                "samples_per_prompt", "top_p")  # fmt: skip


def _plain(value: object) -> object:
    """Return ``value`` as JSON reads it back: tuples become lists."""
    return json.loads(json.dumps(value))


def check_shard(part: Trajectories, index: int, manifest: dict[str, Any], path: Path) -> None:
    """Check that a loaded shard is shard ``index`` of the extraction ``manifest`` records.

    Its prompts must be the manifest's for that index, in order; its model, and every
    argument of the extraction that the manifest records (other than None, a default that
    the extraction resolves), must be the manifest's.

    Args:
        part: The shard, loaded.
        index: Its index in the folder.
        manifest: The folder's ``manifest.json``, read.
        path: The shard's file, for the message.

    Raises:
        TrajectoryFileError: If the shard belongs to another shard index or another run.

    """
    advice = (
        "Delete that file and run the extraction again with the same arguments: it writes "
        "only the missing shards."
    )
    size, prompts = manifest.get("shard_size"), manifest.get("prompts")
    if isinstance(size, int) and isinstance(prompts, list):
        expected = [str(p[0]) for p in prompts[index * size : (index + 1) * size]]
        found = list(dict.fromkeys(part.rows["prompt_id"].astype(str)))
        if found != expected:
            raise TrajectoryFileError(
                f"{path} holds the prompts {found[:3]}, but shard {index} of the manifest is "
                f"{expected[:3]}: a shard copied or renamed from elsewhere. {advice}"
            )
    recorded = {k: v for k, v in (manifest.get("extract") or {}).items() if v is not None}
    if "model" in manifest:
        recorded["model"] = manifest["model"]
    differ = [
        f"{key} {part.meta.get(key)!r} (manifest: {recorded[key]!r})"
        for key in _SHARED_META
        if key in recorded and key in part.meta and _plain(part.meta[key]) != _plain(recorded[key])
    ]  # 1 == 1.0: the manifest keeps the arguments as given, the meta as used
    if differ:
        raise TrajectoryFileError(
            f"{path} comes from another extraction than its folder's manifest: "
            f"{'; '.join(differ)}. {advice}"
        )


def _layer_labels(layers: Any) -> tuple[int, ...]:
    """Return layer labels as a tuple of distinct ints; raise ValueError naming a bad one."""
    if isinstance(layers, (str, bytes)) or not hasattr(layers, "__iter__"):
        raise ValueError(f"layers must be a sequence of integers, got {layers!r}.")
    labels = []
    for label in layers:
        try:
            index = None if isinstance(label, bool) else operator.index(label)
        except TypeError:
            index = None
        if index is None:
            raise ValueError(
                f"layers must be integers (layer indices), got {label!r} in {layers!r}."
            )
        labels.append(index)
    if len(set(labels)) != len(labels):
        raise ValueError(f"layers must be distinct, got {labels}.")
    return tuple(labels)


def _check_size(handle: Any, names: list[str], path: Path) -> None:
    """Refuse a file whose tensors, read and copied, would not fit in memory (before reading).

    Args:
        handle: The file, opened by :func:`safetensors.safe_open`.
        names: The tensors to read.
        path: The file, for the message.

    Raises:
        TrajectoryFileError: Naming the GiB needed and available.

    """
    from sdelm.devices import check_memory

    sizes = {"F64": 8, "I64": 8, "F32": 4, "I32": 4, "F16": 2, "BF16": 2, "I16": 2}
    need = 0
    for name in names:
        piece = handle.get_slice(name)
        need += math.prod(piece.get_shape()) * sizes.get(piece.get_dtype(), 1)
    try:
        check_memory(
            {torch.device("cpu"): 2 * need},  # read, then copied off the memory map
            "Trajectories.load",
            f"the tensors of {path}",
            "Load it on a machine with more memory, or extract in shards and load fewer.",
        )
    except ValueError as error:
        raise TrajectoryFileError(str(error)) from None


def _check_ranges(rows: dict[str, list], tensors: dict[str, torch.Tensor]) -> None:
    """Refuse a file's values that no extraction writes: each names its column or tensor.

    Temperatures are numbers > 0 (NaN or null for human text), prompt ids are text; at valid
    steps, token ids are >= 0 (or -1: none, as :meth:`Trajectories.from_states` writes),
    log-probabilities <= 0 and entropies >= 0 (up to rounding).
    """
    bad = [
        t
        for t in rows["temperature"]
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or t <= 0)
    ]
    if bad:
        raise ValueError(f"rows' 'temperature' must hold numbers > 0: {bad[:3]}.")
    bad = [p for p in rows["prompt_id"] if not isinstance(p, str)]
    if bad:
        raise ValueError(f"rows' 'prompt_id' must hold text: {bad[:3]}.")
    valid = tensors["mask"]
    rules = [("tokens", "token ids >= 0, or -1 for none"), ("logprobs", "log-probabilities <= 0"),
             ("entropies", "entropies >= 0")]  # fmt: skip
    for name, rule in rules:
        if tensors[name].shape != valid.shape:
            continue  # the constructor names the sizes
        values = tensors[name][valid]
        wrong = values < -1 if name == "tokens" else (values > 1e-4 if name == "logprobs"
                                                     else values < -1e-4)  # fmt: skip
        if wrong.any():
            raise ValueError(
                f"tensor {name!r} breaks its rule ({rule}) at {int(wrong.sum())} steps."
            )


def _fields_from_file(header: object, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Check a file's header and tensors against each other; return the constructor arguments.

    Args:
        header: The decoded ``sdelm`` JSON header.
        tensors: The file's tensors by name.

    Returns:
        Keyword arguments of :class:`Trajectories`.

    Raises:
        ValueError: Naming the header field or tensor that is missing or of the wrong type.

    """
    if not isinstance(header, dict):
        raise ValueError(f"the sdelm header must be a JSON object, got {type(header).__name__}.")
    missing = [name for name in _HEADER_FIELDS if name not in header]
    if missing:
        raise ValueError(f"the header lacks the fields {missing}.")
    absent = [name for name in _TENSORS if name not in tensors and name not in _OPTIONAL_TENSORS]
    if absent:
        raise ValueError(f"the file lacks the tensors {absent}.")
    found = {name: tensors[name] for name in _TENSORS if name in tensors}
    for name in _FLOAT_TENSORS:
        if name in found:
            if not found[name].is_floating_point():
                raise ValueError(
                    f"tensor {name!r} has dtype {found[name].dtype}; expected a floating type."
                )
            if found[name].element_size() < 4:  # float16, bfloat16: widened
                found[name] = found[name].float()
    if found["mask"].dtype != torch.bool:
        raise ValueError(f"tensor 'mask' has dtype {found['mask'].dtype}; expected torch.bool.")
    tokens = found["tokens"]
    if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
        raise ValueError(f"tensor 'tokens' has dtype {tokens.dtype}; expected an integer type.")
    found["tokens"] = tokens.long()
    rows = header["rows"]
    if not isinstance(rows, dict):
        raise ValueError(f"header field 'rows' must be a table (column: values), got {rows!r}.")
    lacking = [column for column in ROW_COLUMNS if column not in rows]
    if lacking:
        raise ValueError(f"header field 'rows' lacks the columns {lacking}.")
    if found["states"].ndim != 4:
        raise ValueError(
            "tensor 'states' must have size (n_sequences, n_layers, n_steps, dim); got "
            f"{tuple(found['states'].shape)}."
        )
    n = found["states"].shape[0]
    for column in ROW_COLUMNS:
        if not isinstance(rows[column], list) or len(rows[column]) != n:
            raise ValueError(
                f"header field 'rows' column {column!r} must list one value per sequence ({n})."
            )
    if not isinstance(header["meta"], dict):
        raise ValueError(
            f"header field 'meta' must be a JSON object, got {type(header['meta']).__name__}."
        )
    _check_ranges(rows, found)
    return {
        **found,
        "temperatures": found.get("temperatures"),  # absent in older files: from rows
        "untempered_logprobs": found.get("untempered_logprobs"),  # absent in older: NaN
        "rows": pd.DataFrame(rows, columns=list(ROW_COLUMNS)),
        "layers": header["layers"],
        "dt": check_time_step(header["dt"], "header field 'dt'"),
        "time_axis": header["time_axis"],
        "meta": header["meta"],
    }


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
            embedding): distinct integers, equal to ``meta["layers"]`` where that is set.
        dt: Time step between consecutive steps, a positive finite number.
        time_axis: ``"token"`` (steps are generated tokens) or ``"layer"``.
        meta: Run metadata (model, seed, sdelm version, extraction arguments), a dict.
        temperatures: Float tensor of size (n_sequences, n_steps): the temperature each token
            was drawn at (NaN where unknown, e.g. for read text). It differs from the row's
            ``temperature`` only under a temperature control (:mod:`sdelm.control`); ``None``
            fills it from the row table.
        untempered_logprobs: Float tensor of size (n_sequences, n_steps): each token's
            log-probability (nats) under the model itself, at temperature 1 and without top-p,
            whatever distribution it was drawn from: the same yardstick for every run. Equal to
            ``logprobs`` for read text; NaN where unknown (``None`` means unknown everywhere,
            e.g. trajectories saved before it was recorded: :func:`sdelm.untempered` then
            rescores them).

    Raises:
        ValueError: On construction, if the parts disagree in size, a layer label or ``dt``
            is invalid, ``meta["layers"]`` contradicts ``layers``, the mask is not a prefix of
            each row, or a valid step holds NaN or inf (the message names the field).

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
    untempered_logprobs: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.layers = _layer_labels(self.layers)
        self.dt = check_time_step(self.dt)
        self.rows = self.rows.reset_index(drop=True)
        self._validate()
        if self.temperatures is None:
            per_row = torch.tensor(
                self.rows["temperature"].to_numpy(float, copy=True), dtype=torch.float32
            )
            self.temperatures = torch.where(self.mask, per_row[:, None], torch.full((), math.nan))
        if self.untempered_logprobs is None:
            self.untempered_logprobs = torch.full(self.mask.shape, math.nan)

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
            ValueError: On a wrong number of dimensions, a mask of the wrong size or that is not
                a prefix of each row, NaN/inf in a valid step, or a ``dt`` that is not a
                positive, finite number.

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
        # Valid steps keep their values (NaN/inf there is refused by the constructor).
        states = torch.where(mask[:, None, :, None], states, torch.zeros(()))
        nan = torch.full((n, n_steps), math.nan)
        return cls(
            states=states,
            mask=mask,
            tokens=torch.full((n, n_steps), -1, dtype=torch.long),
            logprobs=nan,
            entropies=nan.clone(),
            rows=_empty_rows(n),
            layers=layers if layers is not None else tuple(range(n_layers)),
            dt=dt,
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
            untempered_logprobs=torch.cat(
                [pad(p.untempered_logprobs, 1, math.nan) for p in parts]
            ),
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
            untempered_logprobs=self.untempered_logprobs[positions],
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
        """Keep only some recorded layers, in the given order (``meta["layers"]`` follows)."""
        positions = [self.layers.index(layer) for layer in layers]
        meta = {**self.meta, "layers": list(layers)} if "layers" in self.meta else self.meta
        return replace(self, states=self.states[:, positions], layers=tuple(layers), meta=meta)

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

        The tensors are copied into memory: changing or truncating the file afterwards does not
        affect the loaded trajectories. States stored in a floating type narrower than float32
        (float16, bfloat16) are widened to float32; integer tokens are widened to int64.

        Args:
            path: The file, or a folder written by :func:`sdelm.generation.extract_shards` (its
                ``manifest.json`` lists the shards, which are joined in order).

        Returns:
            The trajectories.

        Raises:
            TrajectoryFileError: If the file is missing, truncated, from another program, or
                its parts disagree (sizes, dtypes, layer labels, mask, row table, ``dt``,
                NaN/inf states); the message names the field (re-create the file, e.g. re-run
                the extraction). For a folder: if its manifest is unreadable or its shards are
                incomplete (re-run the extraction: it resumes) or disagree.

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
                # Copies: a tensor of safe_open is a view of the memory-mapped file, which
                # changes when the file is overwritten and kills the process (SIGBUS) when the
                # file is truncated.
                known = [name for name in handle.keys() if name in _TENSORS]  # others unread
                _check_size(handle, known, path)
                tensors = {name: handle.get_tensor(name).clone() for name in known}
        except TrajectoryFileError:
            raise
        except (SafetensorError, OSError, ValueError) as error:
            raise TrajectoryFileError(
                f"{path} is truncated or not a safetensors file ({error}). {advice}"
            ) from error
        try:
            header = json.loads(metadata["sdelm"])
        except (KeyError, json.JSONDecodeError, RecursionError) as error:
            raise TrajectoryFileError(
                f"{path} is not an sdelm trajectory file (missing {error}). {advice}"
            ) from error
        if isinstance(header, dict) and header.get("format", FORMAT) != FORMAT:
            raise TrajectoryFileError(
                f"{path} has format {header['format']!r}; this sdelm reads {FORMAT!r}. {advice}"
            )
        try:
            return cls(**_fields_from_file(header, tensors))
        except ValueError as error:
            raise TrajectoryFileError(f"{path} is inconsistent: {error} {advice}") from error

    @classmethod
    def _load_shards(cls, folder: Path) -> Trajectories:
        manifest = folder / "manifest.json"
        if not manifest.is_file():
            raise TrajectoryFileError(f"{folder} is a folder without a manifest.json of shards.")
        advice = "Delete the folder and run the extraction again."
        try:
            recorded = json.loads(manifest.read_text())
            n_shards = recorded["n_shards"]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
            raise TrajectoryFileError(
                f"{manifest} is not a shard manifest with an 'n_shards' entry ({error!r}). "
                + advice
            ) from error
        if isinstance(n_shards, bool) or not isinstance(n_shards, int) or n_shards <= 0:
            raise TrajectoryFileError(
                f"{manifest} says n_shards={n_shards!r}; it must be a positive integer. " + advice
            )
        prompts, size = recorded.get("prompts"), recorded.get("shard_size")
        if isinstance(prompts, list) and isinstance(size, int) and size > 0:
            if n_shards != -(-len(prompts) // size):
                raise TrajectoryFileError(
                    f"{manifest} says n_shards={n_shards}, but its {len(prompts)} prompts in "
                    f"shards of {size} make {-(-len(prompts) // size)}: it was edited. " + advice
                )
        # Compare with the files present before building anything of size n_shards.
        indices = {int(m[1]) for m in (_SHARD.fullmatch(f.name) for f in folder.iterdir()) if m}
        beyond = sorted(i for i in indices if i >= n_shards)
        if beyond:
            raise TrajectoryFileError(
                f"{folder} holds {_shard_name(beyond[0])}, beyond the {n_shards} shards its "
                f"manifest lists: the manifest or the folder was edited. " + advice
            )
        present = {i for i in indices if i < n_shards and (folder / _shard_name(i)).is_file()}
        if len(present) < n_shards:
            first_missing = []
            index = 0
            while len(first_missing) < 3 and index < n_shards:
                if index not in present:
                    first_missing.append(_shard_name(index))
                index += 1
            raise TrajectoryFileError(
                f"{folder} is incomplete: {n_shards - len(present)} of {n_shards} shards missing "
                f"({', '.join(first_missing)}…). Run the extraction again with the same "
                "arguments: it resumes and writes only the missing shards."
            )
        parts = [cls.load(folder / _shard_name(i)) for i in range(n_shards)]
        for index, part in enumerate(parts):
            check_shard(part, index, recorded, folder / _shard_name(index))
        try:
            return cls.concat(parts)
        except ValueError as error:
            raise TrajectoryFileError(
                f"The shards of {folder} do not fit together: {error} {advice}"
            ) from error

    # ------------------------------------------------------------------ checks
    def check_finite(self, layer: int | None = None) -> None:
        """Check that every valid step holds finite states (masked-out steps are not looked at).

        The constructor runs this check; call it again after changing :attr:`states` in place.

        Args:
            layer: A recorded layer (as in :meth:`layer`); ``None`` checks every layer.

        Raises:
            ValueError: If a valid step holds NaN or inf; the message names the layer and the
                first such sequence and step.
            KeyError: If ``layer`` was not recorded.

        """
        checked = (
            list(zip(self.layers, self.states.unbind(1), strict=True))
            if layer is None
            else [(layer, self.layer(layer))]
        )
        if all(torch.isfinite(states.sum()) for _, states in checked):
            return  # NaN or inf anywhere makes the sum non-finite; an overflow costs only time
        for label, states in checked:  # one layer at a time: (n_sequences, n_steps, dim)
            bad = ~torch.isfinite(states).all(dim=-1) & self.mask.bool()
            if bad.any():
                seq, step = (int(i) for i in bad.nonzero()[0])
                raise ValueError(
                    f"states contain NaN or inf at {int(bad.sum())} valid step(s) of layer "
                    f"{label} (first at sequence {seq}, step {step}). Remove those sequences, "
                    "or mark the steps as missing with mask=False."
                )

    def _validate(self) -> None:
        if self.states.ndim != 4:
            raise ValueError(
                "states must have size (n_sequences, n_layers, n_steps, dim); "
                f"got {tuple(self.states.shape)}."
            )
        n, n_layers, n_steps, _ = self.states.shape
        for name in _TENSORS[1:]:
            if getattr(self, name) is None:  # optional ones are filled afterwards
                continue
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
        if not isinstance(self.meta, dict):
            raise ValueError(f"meta must be a dict, got {type(self.meta).__name__}.")
        recorded = self.meta.get("layers", list(self.layers))
        if not isinstance(recorded, (list, tuple)) or list(recorded) != list(self.layers):
            raise ValueError(
                f"the layer labels {self.layers} contradict meta['layers'] = {recorded!r} (the "
                "layers the extraction recorded)."
            )
        if self.mask.dtype != torch.bool:
            self.mask = self.mask.bool()
        gap = self.mask[:, 1:] & ~self.mask[:, :-1]
        if gap.any():
            seq, step = (int(i) for i in gap.nonzero()[0])
            raise ValueError(
                f"mask must mark a prefix of each row (valid steps first, then padding); "
                f"sequence {seq} has a valid step {step + 1} after a missing step {step}. Cut "
                "the row at its first missing step, or split it into separate rows."
            )
        self.check_finite()
