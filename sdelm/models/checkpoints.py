"""Checkpoints: a model's weights, class and constructor arguments in one safetensors file.

The class and arguments are JSON in the file's header.
:func:`load_checkpoint` rebuilds the model without any of the training code's state; it knows
every model class of :mod:`sdelm.models` (each registers itself in
:data:`~sdelm.models.base.MODEL_CLASSES`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from sdelm.data import Projection
from sdelm.files import save_atomically
from sdelm.models import linear, lines_of_thought, neural  # noqa: F401  (they register)
from sdelm.models.base import MODEL_CLASSES, SDEModel

__all__ = ["CheckpointError", "load_checkpoint", "load_projection", "save_checkpoint"]


def save_checkpoint(
    model: SDEModel, path: str | os.PathLike, *, projection: Projection | None = None
) -> Path:
    """Write a model's weights and constructor arguments to one safetensors file, atomically.

    Args:
        model: A fitted model.
        path: Destination, conventionally ``*.safetensors``.
        projection: The map from hidden states to the model's coordinates, stored with the
            weights (``projection.*`` tensors) so that :func:`load_projection` can place new
            trajectories in the model's coordinates.

    Returns:
        The path written.

    """
    header = {"class": type(model).__name__, "config": model.config}
    tensors = dict(model.state_dict())
    metadata = {"sdelm_model": json.dumps(header)}
    if projection is not None:
        for name in ("mean", "components", "scale", "explained_variance"):
            tensors[f"projection.{name}"] = getattr(projection, name).contiguous()
        metadata["sdelm_projection_layer"] = str(projection.layer)
    return save_atomically(tensors, path, metadata)


class CheckpointError(ValueError):
    """A checkpoint file is missing, damaged, or not what :func:`save_checkpoint` writes."""


def _check_projection(parts: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Refuse a stored projection whose sizes disagree or whose scales are not positive."""
    components, mean, scale = parts["components"], parts["mean"], parts["scale"]
    problems = []
    if components.ndim != 2 or mean.shape != components.shape[1:]:
        problems.append(
            f"components of size {tuple(components.shape)} do not map states of the mean's "
            f"size {tuple(mean.shape)} (they should be (dim, hidden size))"
        )
    elif scale.shape != components.shape[:1]:
        problems.append(f"{len(scale)} scales for {len(components)} components")
    elif not (torch.isfinite(scale).all() and (scale > 0).all()):
        problems.append("its scales are not all positive and finite")
    if problems:
        raise CheckpointError(
            f"{path}: the stored projection is damaged: {problems[0]}. Fit the model again."
        )


def load_projection(path: str | os.PathLike) -> Projection:
    """Read the projection stored with a checkpoint by ``save_checkpoint(..., projection=)``.

    Args:
        path: The checkpoint file.

    Returns:
        The projection.

    Raises:
        CheckpointError: If the file is missing, damaged or holds no projection.

    """
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if "sdelm_projection_layer" not in metadata:
                raise CheckpointError(
                    f"{path} holds no projection; save it with "
                    "save_checkpoint(..., projection=...)."
                )
            parts = {
                name: handle.get_tensor(f"projection.{name}")
                for name in ("mean", "components", "scale", "explained_variance")
            }
        _check_projection(parts, path)
        return Projection(**parts, layer=int(metadata["sdelm_projection_layer"]))
    except CheckpointError:
        raise
    except (OSError, SafetensorError, ValueError) as error:
        raise CheckpointError(
            f"{path} is not a readable sdelm checkpoint with a projection ({error}); write it "
            "again with `sdelm fit` or save_checkpoint(..., projection=...)."
        ) from error


def _check_weights(
    cls: type[SDEModel],
    dim: int,
    config: dict[str, Any],
    stored: dict[str, tuple[int, ...]],
    path: str | os.PathLike,
) -> None:
    """Check that ``cls(dim, **config)`` has exactly the stored tensors' names and sizes.

    The model is built on the ``meta`` device, so a config that asks for a huge model allocates
    nothing.

    Args:
        cls: The model class named in the checkpoint.
        dim: The state dimension from its config.
        config: The other constructor arguments from its config.
        stored: Size of every model tensor in the file, by name.
        path: The checkpoint, for the message.

    Raises:
        CheckpointError: If the config does not build a model, or its weights differ.

    """
    try:
        with torch.device("meta"):
            skeleton = cls(dim, **config)
    except (TypeError, ValueError, RuntimeError, OverflowError) as error:
        raise CheckpointError(
            f"{path}: its config does not build a {cls.__name__} ({error})."
        ) from error
    expected = {name: tuple(t.shape) for name, t in skeleton.state_dict().items()}
    problems = [f"{name} is missing" for name in sorted(set(expected) - set(stored))]
    problems += [f"{name} is unexpected" for name in sorted(set(stored) - set(expected))]
    problems += [
        f"{name} has size {stored[name]}, the config needs {shape}"
        for name, shape in sorted(expected.items())
        if name in stored and stored[name] != shape
    ]
    if problems:
        raise CheckpointError(
            f"{path}: the model config {dict(config, dim=dim)} does not match the stored "
            f"weights ({'; '.join(problems[:3])}). The file is damaged or was edited; write it "
            "again with `sdelm fit` or save_checkpoint."
        )


def load_checkpoint(path: str | os.PathLike) -> SDEModel:
    """Rebuild a model saved by :func:`save_checkpoint`.

    The config in the file's header is checked against the stored tensors' sizes before the
    model is built.

    Args:
        path: The checkpoint file.

    Returns:
        The model, on the CPU, in eval mode.

    Raises:
        CheckpointError: If the file is missing, damaged, not an sdelm checkpoint, names an
            unknown model class, its config does not match its weights, or a weight is NaN
            or infinite.

    """
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = json.loads((handle.metadata() or {})["sdelm_model"])
            stored = {
                name: tuple(handle.get_slice(name).get_shape())
                for name in handle.keys()
                if not name.startswith("projection.")
            }
        name = str(header["class"])
        config = dict(header["config"])
        dim = config.pop("dim")
    except (KeyError, OSError, SafetensorError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path} is not an sdelm model checkpoint ({error}).") from error
    cls = MODEL_CLASSES.get(name)
    if cls is None:
        raise CheckpointError(f"{path} holds an unknown model class {name!r}.")
    _check_weights(cls, dim, config, stored, path)
    model = cls(dim, **config)
    try:
        weights = {
            k: v for k, v in load_file(str(path)).items() if not k.startswith("projection.")
        }
    except SafetensorError as error:
        raise CheckpointError(f"{path} is damaged ({error}); write it again.") from error
    cast = [name for name, value in weights.items() if not value.is_floating_point()]
    if cast:
        raise CheckpointError(
            f"{path}: the weights {cast[:3]} are not floating-point numbers; the file was "
            "edited. Fit the model again."
        )
    broken = [name for name, value in weights.items() if not torch.isfinite(value).all()]
    if broken:
        raise CheckpointError(
            f"{path}: the weights {broken[:3]} hold NaN or infinite values; the model would "
            "give NaN everywhere. Fit it again (a fit that diverged keeps its last good "
            "weights)."
        )
    model.load_state_dict(weights)
    return model.eval()
