"""Writing files atomically, and the cache folder that every layer writes to.

The cache folder is :func:`cache_dir`. A file is written under a temporary name in the same
folder, then renamed.
A reader never sees a half-written file, and a target that exists is only replaced once its
new content is complete, and only if it is a regular file (never a device, a pipe or a
socket). A target claimed by :func:`never_replace` is not replaced at all: the last step links
the new file under the target's name, which fails if another writer took the name meanwhile.

The temporary file is ``.NAME.HOST.PID.RANDOM.tmp`` next to the target
``NAME``. A process killed while writing leaves it behind; the next write of the same target
removes such leftovers when they are stale: written on this machine (HOST) by a process (PID)
that no longer runs, or older than :data:`STALE_AFTER_S` seconds (a file from another machine
sharing the folder, or of a PID that has been reused). A file another live process is still
writing is left alone.
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

__all__ = [
    "STALE_AFTER_S",
    "atomic_path",
    "cache_dir",
    "never_replace",
    "save_atomically",
    "write_json_atomically",
]

#: Age after which any temporary sibling of a target is stale, whoever wrote it (one day).
STALE_AFTER_S = 24 * 3600.0
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def _pid_alive(pid: int) -> bool:
    """Return whether process ``pid`` runs on this machine (True when it cannot be told)."""
    if pid == os.getpid() or os.name == "nt":  # on Windows os.kill(pid, 0) would end it
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process: it exists
        return True
    return True


def _remove_stale_temporaries(path: Path) -> None:
    """Delete temporary siblings of ``path`` left by killed writers (see the module's rule).

    Besides ``.NAME.HOST.PID.RANDOM.tmp``, the ``.NAME.RANDOM.tmp`` files of older versions of
    sdelm count, by their age only. A temporary file of another target (say ``NAME.x``) has
    another number of dot-separated parts after ``.NAME.``, so it is not removed while in use.
    """
    prefix = f".{path.name}."
    pattern = re.compile(
        rf"{re.escape(prefix)}(?:(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.)?[A-Za-z0-9_]+\.tmp"
    )
    with os.scandir(path.parent) as entries:
        candidates = [entry.name for entry in entries if entry.name.startswith(prefix)]
    for name in candidates:
        match = pattern.fullmatch(name)
        if match is None:
            continue
        candidate = path.parent / name
        try:
            stale = (
                match["host"] == _HOST and not _pid_alive(int(match["pid"]))
            ) or time.time() - candidate.stat().st_mtime > STALE_AFTER_S
            if stale:
                candidate.unlink()
        except FileNotFoundError:  # its writer renamed or removed it meanwhile
            continue


#: Targets that must not replace a file (:func:`never_replace`), per context.
_KEEP: ContextVar[frozenset[Path]] = ContextVar("sdelm_never_replace", default=frozenset())
#: Errors of os.link on a file system without hard links.
_NO_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.EXDEV}


def never_replace(path: str | os.PathLike) -> None:
    """Make every later write of ``path`` in this context fail rather than replace a file.

    For outputs written without ``--force``: checking up front that the name is free leaves a
    race with another writer of the same name; the write itself then refuses to replace the
    file that writer made. Run the work in :func:`contextvars.copy_context` to scope it.
    """
    _KEEP.set(_KEEP.get() | {Path(path).absolute()})


def _check_replaceable(path: Path) -> None:
    """Refuse a target that exists but is not a regular file (a device, pipe or socket)."""
    if path.exists() and not path.is_file():
        raise FileExistsError(
            errno.EEXIST, "Not a regular file: sdelm replaces only regular files", str(path)
        )


def _place(tmp: Path, path: Path) -> None:
    """Give the finished ``tmp`` the name ``path``: replace it, or take it if it is free."""
    _check_replaceable(path)
    if path.absolute() not in _KEEP.get():
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # fails if the name exists: no reader sees a partial file
    except FileExistsError as error:
        raise FileExistsError(
            errno.EEXIST,
            "Another writer created it meanwhile; nothing was replaced (pass --force to "
            "overwrite)",
            str(path),
        ) from error
    except OSError as error:
        if error.errno not in _NO_LINKS:
            raise
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))  # take the name
        os.replace(tmp, path)


def _file_mode() -> int:
    """Return the mode a new file gets here, ``0o666`` less the umask (mkstemp's is 0o600)."""
    try:  # Linux states the umask without changing it
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _naming(error: OSError, path: Path) -> OSError:
    """Return ``error`` re-worded to name the target ``path`` instead of a temporary file."""
    if error.errno is None:
        return OSError(f"Could not write {path}: {error}")
    return type(error)(error.errno, error.strerror, str(path))


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Give a temporary sibling of ``path`` to write; rename it to ``path`` once the block ends.

    If the block raises, the temporary file is removed and ``path`` is left as it was. Stale
    temporary siblings of ``path`` (see the module's documentation) are removed first.

    Args:
        path: The target file; its folder is created.

    Yields:
        The temporary path (an empty file) to write.

    Raises:
        IsADirectoryError: If ``path`` is a folder.
        FileExistsError: If ``path`` is not a regular file, or is claimed by
            :func:`never_replace` and another writer created it.
        OSError: If the folder cannot be created or written; the message names ``path``.

    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "Is a folder; name a file to write", str(path))
    _check_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)  # an error names the folder at fault
    try:
        _remove_stale_temporaries(path)
        handle, name = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.{_HOST}.{os.getpid()}.", suffix=".tmp"
        )
        os.close(handle)
    except OSError as error:
        raise _naming(error, path) from error
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, _file_mode())  # as any new file here, not mkstemp's owner-only mode
        _place(tmp, path)
    except OSError as error:
        if tmp.name in {Path(str(error.filename)).name, Path(str(error.filename2)).name}:
            raise _naming(error, path) from error
        raise
    finally:
        tmp.unlink(missing_ok=True)


def save_atomically(
    tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str]
) -> Path:
    """Write tensors and string metadata to ``path``; a reader never sees a half-written file.

    Args:
        tensors: Named tensors (made contiguous and moved to the CPU).
        path: Destination; its folder is created.
        metadata: Header entries (strings).

    Returns:
        The path written.

    Raises:
        OSError: If the file cannot be written (a folder in its place, no permission, a full
            disk); the message names ``path``.

    """
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        try:
            save_file(tensors, tmp, metadata=metadata)
        except SafetensorError as error:  # I/O failures arrive without a file name
            raise OSError(f"Could not write {path}: {error}") from error
    return path


def write_json_atomically(value: object, path: str | os.PathLike) -> Path:
    """Write ``value`` as indented JSON to ``path`` through a temporary file and a rename.

    Args:
        value: A JSON-serialisable value.
        path: Destination; its folder is created.

    Returns:
        The path written.

    Raises:
        OSError: If the file cannot be written; the message names ``path``.

    """
    path = Path(path)
    with atomic_path(path) as tmp, tmp.open("w") as stream:
        json.dump(value, stream, indent=2, sort_keys=True)
    return path


def cache_dir() -> Path:
    """Return the cache folder (not created)."""
    if os.environ.get("SDELM_CACHE"):
        return Path(os.environ["SDELM_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sdelm"
