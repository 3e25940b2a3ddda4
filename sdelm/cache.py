"""A parameter-keyed disk cache for trajectories and fitted models.

Everything lives under one folder: ``$SDELM_CACHE`` if set, else ``$XDG_CACHE_HOME/sdelm``, else
``~/.cache/sdelm``. Entries are keyed by a hash of the parameters that produced them, so a
chapter re-executed with the same parameters reuses what an earlier chapter computed, and a
change of any parameter computes afresh. Nothing here is ever committed to the repository.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sdelm.models import SDEModel, load_checkpoint, save_checkpoint
from sdelm.trajectories import Trajectories, TrajectoryFileError

__all__ = ["cache_dir", "cache_key", "cached_model", "cached_trajectories"]


def cache_dir() -> Path:
    """Return the cache folder (not created)."""
    if os.environ.get("SDELM_CACHE"):
        return Path(os.environ["SDELM_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sdelm"


def cache_key(params: dict[str, Any]) -> str:
    """Return a short, stable hash of JSON-serialisable parameters."""
    text = json.dumps(params, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cached_trajectories(
    params: dict[str, Any], compute: Callable[[], Trajectories], *, refresh: bool = False
) -> Trajectories:
    """Load trajectories computed earlier with the same parameters, or compute and store them.

    Args:
        params: Everything that determines the result (JSON-serialisable).
        compute: Produces the trajectories when they are not cached.
        refresh: Recompute even when cached.

    Returns:
        The trajectories.

    """
    path = cache_dir() / "trajectories" / f"{cache_key(params)}.safetensors"
    if path.is_file() and not refresh:
        try:
            return Trajectories.load(path)
        except TrajectoryFileError:
            path.unlink()  # a damaged entry is recomputed
    trajectories = compute()
    trajectories.save(path)
    return trajectories


def cached_model(
    params: dict[str, Any], compute: Callable[[], SDEModel], *, refresh: bool = False
) -> SDEModel:
    """Load a model fitted earlier with the same parameters, or fit and store it.

    Args:
        params: Everything that determines the fit (data, model and fit arguments).
        compute: Fits and returns the model when it is not cached.
        refresh: Refit even when cached.

    Returns:
        The fitted model (on the CPU, in eval mode).

    """
    path = cache_dir() / "fits" / f"{cache_key(params)}.safetensors"
    if path.is_file() and not refresh:
        try:
            return load_checkpoint(path)
        except ValueError:
            path.unlink()  # a damaged entry is refitted
    model = compute()
    save_checkpoint(model, path)
    return model.eval()
