"""A disk cache for trajectories and fitted models that knows the code behind each entry.

Everything lives under one folder: ``$SDELM_CACHE`` if set, else ``$XDG_CACHE_HOME/sdelm``, else
``~/.cache/sdelm``. Nothing here is ever committed to the repository.

An entry is keyed by the parameters that produced it, the sdelm version, a fingerprint of the
package's source (its syntax trees: comments and formatting do not count) and the code of the
``compute`` function itself, and the CPU kernels in force (:func:`sdelm.numerics.kernels`). A
change of any parameter, of any sdelm function, of the body of the function that fills the
entry, or of the kernels therefore computes afresh: the cache never serves a result that the
current code would not produce.

Each entry is a safetensors file plus a JSON record beside it that repeats the parameters and
fingerprints and holds the file's SHA-256. A load checks all of them, so a damaged, truncated,
swapped or copied entry is recomputed, not served. Both files are written atomically, the record
last. A process that misses an entry holds a lock file beside it while it computes; a second
process that misses the same entry waits for the lock and is then served the first one's
result, so chapters executed side by side (``sdelm book --jobs 2``) compute each entry once.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import json
import shutil
import types
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import torch
from filelock import FileLock
from safetensors import SafetensorError

from sdelm.data import PreparedData
from sdelm.devices import resolve_device
from sdelm.files import cache_dir, write_json_atomically
from sdelm.fit import fit
from sdelm.models import SDEModel, load_checkpoint, save_checkpoint
from sdelm.numerics import kernels
from sdelm.trajectories import Trajectories

__all__ = [
    "cache_key",
    "cached",
    "cached_fit",
    "cached_model",
    "cached_trajectories",
    "code_fingerprint",
    "source_fingerprint",
]

#: The package whose source keys every entry.
SOURCE_ROOT = Path(__file__).resolve().parent

_Entry = TypeVar("_Entry")
_parsed: dict[tuple[str, int, int], tuple[str, frozenset[str]]] = {}


def _version() -> str:
    from sdelm import __version__  # the package imports this module: import at call time

    return __version__


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _parse(path: Path) -> tuple[str, frozenset[str]]:
    """Return a Python file's syntax-tree hash and the sdelm modules it imports (memoised).

    The hash ignores line numbers, comments and formatting. The imports are read statically,
    anywhere in the file (also inside functions): ``from sdelm.x import y`` gives ``sdelm.x``
    (and ``sdelm.x.y`` where that is a module), ``import sdelm.x`` gives ``sdelm.x``, and a bare
    ``import sdelm`` gives ``sdelm`` (the whole package, through its ``__init__``).
    """
    stat = path.stat()
    memo = (str(path), stat.st_mtime_ns, stat.st_size)
    if memo not in _parsed:
        tree = ast.parse(path.read_bytes(), filename=str(path))
        imported: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported.update(a.name for a in node.names if a.name.split(".")[0] == "sdelm")
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if node.module.split(".")[0] == "sdelm":
                    names = [a.name for a in node.names if not a.name.startswith("__")]
                    imported.update(f"{node.module}.{name}" for name in names)
                    if node.module != "sdelm":
                        imported.add(node.module)
        digest = hashlib.sha256(ast.dump(tree).encode()).hexdigest()
        _parsed[memo] = (digest, frozenset(imported))
    return _parsed[memo]


def _module_file(name: str, root: Path) -> Path | None:
    """Return the file of sdelm module ``name`` under the package folder ``root``, if any."""
    if name.split(".")[0] != "sdelm":
        return None
    parts = name.split(".")[1:]
    package = root.joinpath(*parts, "__init__.py")
    if package.is_file():
        return package
    module = root.joinpath(*parts).with_suffix(".py") if parts else None
    return module if module is not None and module.is_file() else None


def _module_closure(modules: Iterable[str], root: Path) -> list[Path]:
    """Return the files of ``modules`` and of every sdelm module they import, transitively."""
    seen: set[Path] = set()
    todo = [f for f in (_module_file(m, root) for m in modules) if f is not None]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        todo.extend(f for f in (_module_file(n, root) for n in _parse(path)[1]) if f is not None)
    return sorted(seen)


def source_fingerprint(
    root: Path | None = None,
    modules: Iterable[str] | None = None,
    *,
    exclude: Iterable[str] = (),
) -> str:
    """Return a fingerprint of the package under ``root``, or of the part that ``modules`` use.

    Python modules count by their syntax trees: two source trees that differ only in comments or
    formatting share a fingerprint; any change of a statement, name or constant gives another.
    Data files (the bundled prompts) always count, byte for byte.

    Args:
        root: The package folder; default: the installed sdelm.
        modules: Count only these modules (e.g. ``["sdelm.collect"]``) and the sdelm modules
            they import, transitively (read statically); default every module.
        exclude: Top-level files or folders of the package left out (e.g. ``["book"]``).

    Returns:
        A 64-character hex digest.

    """
    root = SOURCE_ROOT if root is None else root
    left_out = set(exclude)
    files = [
        p
        for p in root.rglob("*")
        if p.is_file()
        and "__pycache__" not in p.parts
        and p.relative_to(root).parts[0] not in left_out
    ]
    if modules is not None:
        files = [p for p in files if p.suffix != ".py"] + _module_closure(modules, root)
    digest = hashlib.sha256()
    for path in sorted(set(files)):
        content = _parse(path)[0] if path.suffix == ".py" else _file_hash(path)
        digest.update(f"{path.relative_to(root).as_posix()}:{content}\n".encode())
    return digest.hexdigest()


def _code_parts(code: types.CodeType) -> list[object]:
    parts: list[object] = [code.co_code.hex(), list(code.co_names)]
    for const in code.co_consts:
        parts.append(_code_parts(const) if isinstance(const, types.CodeType) else repr(const))
    return parts


_PLAIN = (bool, int, float, str, type(None))


def _plain(value: object) -> bool:
    """Whether a value is a number, string, None, or a list/tuple of those."""
    if isinstance(value, (list, tuple)):
        return all(isinstance(item, _PLAIN) for item in value)
    return isinstance(value, _PLAIN)


def code_fingerprint(function: Callable[..., object]) -> str:
    """Return a fingerprint of a function's own code and the plain values it reads.

    The code counts by its bytecode, names and constants; line numbers and file names do not,
    so the same cell executed again (or in another notebook) keeps its fingerprint, and a
    changed argument or call inside it changes it. Numbers, strings and lists of them that the
    function reads from its globals, closure or default arguments (a chapter's parameters, such
    as ``dim`` or ``seed``) count by value.

    Args:
        function: A Python function or lambda (other callables give a fingerprint of their type).

    Returns:
        A 64-character hex digest.

    """
    code = getattr(function, "__code__", None)
    if code is None:
        parts: list[object] = [type(function).__qualname__]
    else:
        namespace = getattr(function, "__globals__", {})
        read = {name: namespace[name] for name in code.co_names if name in namespace}
        cells = getattr(function, "__closure__", None) or ()
        for name, cell in zip(code.co_freevars, cells, strict=True):
            try:
                read[name] = cell.cell_contents
            except ValueError:  # a cell not filled yet
                continue
        values = {name: repr(value) for name, value in sorted(read.items()) if _plain(value)}
        defaults = [
            *(getattr(function, "__defaults__", None) or ()),
            *(getattr(function, "__kwdefaults__", None) or {}).items(),
        ]
        parts = [_code_parts(code), values, [repr(d) for d in defaults if _plain(d)]]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def _reached(compute: Callable[..., object], uses: Iterable[str]) -> list[str] | None:
    """Return the sdelm modules an entry's code depends on; None (all of sdelm) if unknown."""
    module = getattr(compute, "__module__", None) or ""
    if module.split(".")[0] != "sdelm":
        return None
    return [module, *uses]


def cache_key(params: dict[str, Any]) -> str:
    """Return a short, stable hash of JSON-serialisable parameters."""
    text = json.dumps(params, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cached(
    kind: str,
    params: dict[str, Any],
    compute: Callable[[], _Entry],
    *,
    load: Callable[[Path], _Entry],
    save: Callable[[_Entry, Path], object],
    refresh: bool = False,
    uses: Iterable[str] = (),
) -> _Entry:
    """Serve the entry for (params, code) when its record and file check out; else compute it.

    The code in the key is ``compute``'s own, plus the sdelm modules it can reach: when
    ``compute`` is defined in an sdelm module, that module and every sdelm module it imports
    (transitively), and the modules in ``uses``; when it is defined elsewhere (a chapter), the
    whole package.

    Args:
        kind: Sub-folder of the cache, e.g. ``"trajectories"``.
        params: Everything that determines the result (JSON-serialisable).
        compute: Produces the entry when it is not cached; its code is part of the key.
        load: Reads an entry from a file; any error it raises means "recompute".
        save: Writes an entry to a file, atomically.
        refresh: Recompute even when cached.
        uses: Further sdelm modules whose code the result depends on (e.g. the module of a
            model class passed in as an object).

    Returns:
        The entry.

    """
    record = {
        "params": json.loads(json.dumps(params, sort_keys=True, default=str)),
        "sdelm": _version(),
        "source": source_fingerprint(modules=_reached(compute, uses)),
        "compute": code_fingerprint(compute),
        "kernels": kernels(),
    }
    key = cache_key(record)
    path = cache_dir() / kind / f"{key}.safetensors"
    if not refresh and (entry := _served(path, record, load)) is not None:
        return entry
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_suffix(".lock")
    if lock.is_symlink() or (lock.exists() and not lock.is_file()):
        _clear(lock)  # not a lock file of ours: it would fail every later run
    with FileLock(lock):
        # Another process may have filled the entry while this one waited for the lock.
        if not refresh and (entry := _served(path, record, load)) is not None:
            return entry
        for stale in (path.with_suffix(".json"), path):
            _clear(stale)  # damaged, swapped, from other code, or a folder in its place
        entry = compute()
        save(entry, path)
        write_json_atomically({**record, "sha256": _file_hash(path)}, path.with_suffix(".json"))
    return entry


def _clear(path: Path) -> None:
    """Remove whatever is at ``path`` in the cache: a file, a link or a folder."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _served(path: Path, record: dict[str, Any], load: Callable[[Path], _Entry]) -> _Entry | None:
    """Return the entry at ``path`` if its record matches ``record`` and its checksum; else None.

    A missing, damaged, swapped or stale entry gives None; its files are left to the caller,
    which removes them while it holds the entry's lock (a writer may be renaming them now).
    """
    record_path = path.with_suffix(".json")
    try:
        stored = json.loads(record_path.read_text())
        if stored.pop("sha256") == _file_hash(path) and stored == record:
            return load(path)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError):
        pass  # missing, damaged, swapped or from other code: computed afresh by the caller
    return None


def cached_trajectories(
    params: dict[str, Any], compute: Callable[[], Trajectories], *, refresh: bool = False
) -> Trajectories:
    """Load trajectories computed earlier by the same code and parameters, or compute them.

    Args:
        params: Everything that determines the result (JSON-serialisable).
        compute: Produces the trajectories when they are not cached; its code is part of the key.
        refresh: Recompute even when cached.

    Returns:
        The trajectories.

    """
    return cached(
        "trajectories",
        params,
        compute,
        load=Trajectories.load,
        save=Trajectories.save,
        refresh=refresh,
    )


def cached_model(
    params: dict[str, Any],
    compute: Callable[[], SDEModel],
    *,
    refresh: bool = False,
    uses: Iterable[str] = (),
) -> SDEModel:
    """Load a model fitted earlier by the same code and parameters, or fit and store it.

    Args:
        params: Everything that determines the fit (data, model and fit arguments).
        compute: Fits and returns the model when it is not cached; its code is part of the key.
        refresh: Refit even when cached.
        uses: Further sdelm modules the fit depends on (see :func:`cached`).

    Returns:
        The fitted model (on the CPU, in eval mode).

    """
    model = cached(
        "fits",
        params,
        compute,
        load=load_checkpoint,
        save=save_checkpoint,
        refresh=refresh,
        uses=uses,
    )
    return model.cpu().eval()


def _tensor_digest(*tensors: torch.Tensor) -> str:
    digest = hashlib.sha256()
    for tensor in tensors:
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{value.dtype}{tuple(value.shape)}".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def cached_fit(model: SDEModel, data: PreparedData, **fit_args: Any) -> SDEModel:
    """Fit ``model`` on ``data`` with :func:`sdelm.fit`, or load the same fit done earlier.

    The entry is named by everything the fit depends on: the model's class, constructor
    arguments and starting weights, the training and validation data themselves (their
    states, masks and time step, by checksum) and the fit's arguments. Chapters that fit the
    same model on the same data share one entry; a change of any of these fits afresh.

    Args:
        model: A model with its starting weights (it is not modified).
        data: Prepared data; the fit uses its train and validation splits.
        **fit_args: Arguments of :func:`sdelm.fit` (``progress`` is ignored for the key).

    Returns:
        The fitted model (on the CPU, in eval mode).

    """
    splits = (data.train, data.val)
    params = {
        "what": "fit",
        "class": type(model).__name__,
        "config": model.config,
        "start": _tensor_digest(*model.state_dict().values()),
        "data": _tensor_digest(*(t for s in splits for t in (s.states, s.mask))),
        "dt": data.dt,
        "fit": {k: v for k, v in sorted(fit_args.items()) if k not in ("progress", "device")},
        "device": resolve_device(fit_args.get("device", "auto")).type,
    }
    return cached_model(
        params,
        lambda: fit(copy.deepcopy(model), data, **fit_args).model,
        uses=[type(model).__module__],
    )
