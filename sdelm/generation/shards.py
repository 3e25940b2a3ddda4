"""Sharded, resumable extraction across processes and GPUs (Hugging Face ``accelerate``).

The prompts are cut into shards of ``shard_size`` prompts. Process ``r`` of ``n`` (as
``accelerate launch`` or ``torchrun`` starts them; one process when run plainly) extracts shards
``r, r + n, r + 2n, …`` on its own device and writes each to ``shard-00042.safetensors``
atomically. A shard whose file exists is skipped, so an interrupted run resumes where it
stopped, and no sequence is lost or written twice. Every sequence's random stream is keyed by
its prompt's position in the whole list, so the shards together hold exactly what one
un-sharded run would (with a batch size that divides the shard). ``manifest.json`` records the
arguments; :meth:`sdelm.Trajectories.load` reads the folder as one set, and checks every shard
against it (:func:`sdelm.trajectories.check_shard`). A shard file that does not load
(truncated or damaged, e.g. copied over by another program) or holds another shard's prompts or
another run's is extracted again.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState

from sdelm.corpus import Prompt
from sdelm.files import write_json_atomically
from sdelm.generation.arguments import as_prompts
from sdelm.generation.sampling import extract
from sdelm.lm import load_lm
from sdelm.trajectories import Trajectories, TrajectoryFileError, check_shard

__all__ = ["MANIFEST", "extract_shards", "shard_paths"]

#: Name of the manifest in a shard folder.
MANIFEST = "manifest.json"


def shard_paths(folder: str | os.PathLike, n_shards: int) -> list[Path]:
    """Return the file of every shard of a folder, in order."""
    return [Path(folder) / f"shard-{i:05d}.safetensors" for i in range(n_shards)]


def _check_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Raise unless the manifest at ``path`` records the same extraction as ``manifest``.

    Only the two are compared: nothing is sized from the file's content.

    Args:
        path: An existing ``manifest.json``.
        manifest: The manifest of this run.

    Raises:
        ValueError: If the file is not JSON, or records a different extraction.

    """
    try:
        recorded = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(
            f"{path} is not a JSON manifest ({error}); delete the folder {path.parent} or use "
            "another one."
        ) from error
    if recorded != json.loads(json.dumps(manifest, sort_keys=True)):
        raise ValueError(
            f"{path.parent} holds shards of a different extraction (see its {MANIFEST}); use "
            "another folder or delete this one."
        )


def _is_done(path: Path, index: int, manifest: dict[str, Any]) -> bool:
    """Return whether shard ``index`` exists, loads and is this run's; warn when it is not."""
    if not path.is_file():
        return False
    try:
        check_shard(Trajectories.load(path), index, json.loads(json.dumps(manifest)), path)
    except TrajectoryFileError as error:
        warnings.warn(f"Extracting a damaged or foreign shard again: {error}", stacklevel=2)
        return False
    return True


def extract_shards(
    model: str,
    prompts: Sequence[str | Prompt],
    folder: str | os.PathLike,
    *,
    shard_size: int = 8,
    device: str = "auto",
    replace: bool = False,
    progress: bool = False,
    **extract_args: Any,
) -> list[Path]:
    """Extract trajectories into a folder of shards, this process's share only.

    Args:
        model: Model name for :func:`sdelm.load_lm` (each process loads it on its own device).
        prompts: All prompts of the run (every process passes the same list).
        folder: Output folder; re-running with the same arguments resumes.
        shard_size: Prompts per shard.
        device: ``"cpu"`` keeps every process on the CPU; otherwise each process uses the
            device ``accelerate`` gives it (its GPU where there are GPUs).
        replace: Delete the shards and manifest of a different extraction in ``folder``
            instead of refusing it.
        progress: Show progress bars.
        **extract_args: Passed to :func:`sdelm.extract` (``temperatures``, ``seed``, …).

    Returns:
        The shard files this process wrote (empty when its shards were all done and load).

    Raises:
        ValueError: If ``shard_size`` is not positive, ``folder`` is a file, or the folder
            holds a different run (without ``replace``).

    """
    if not isinstance(shard_size, int) or shard_size <= 0:
        raise ValueError(f"shard_size must be a positive integer, got {shard_size!r}.")
    for reserved in ("first_index", "progress"):
        if reserved in extract_args:
            raise ValueError(f"{reserved} is set by extract_shards; do not pass it.")
    items = as_prompts(prompts)
    n_shards = -(-len(items) // shard_size)
    manifest = {
        "model": model,
        "prompts": [[p.id, p.text, p.category] for p in items],
        "shard_size": shard_size,
        "n_shards": n_shards,
        "extract": extract_args,
    }
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(
            f"{folder} is a file, but a sharded extraction writes a folder; name a new folder "
            "(or the folder of the run to resume)."
        )
    existing = folder / MANIFEST
    if existing.is_file():
        try:
            _check_manifest(existing, manifest)
        except ValueError:
            if not replace:
                raise
            for old in [existing, *folder.glob("shard-*.safetensors")]:
                old.unlink()
    write_json_atomically(manifest, existing)  # every process writes the same content

    # Without CUDA, accelerate only recognises several processes when told to use the CPU.
    state = PartialState(cpu=device == "cpu" or not torch.cuda.is_available())
    paths = shard_paths(folder, n_shards)
    mine = [i for i in range(state.process_index, n_shards, state.num_processes)]
    pending = [i for i in mine if not _is_done(paths[i], i, manifest)]
    if not pending:
        return []
    lm = load_lm(model, device=state.device)
    written = []
    for i in pending:
        start = i * shard_size
        trajs = extract(
            lm,
            items[start : start + shard_size],
            first_index=start,
            progress=progress,
            **extract_args,
        )
        written.append(trajs.save(paths[i]))
    return written
