"""A chapter of the book: its source, its parameters cell, its claims and its ledger record.

The only module that knows what a chapter is. A chapter opens itself with one call,

    chapter = sdelm.book.Chapter.open("drift_diffusion", globals())

which reads the chapter's defaults from its own parameters cell (so they cannot drift from it)
and enforces the claims exactly when the parameters in force equal them. The same object
builds the chapter's data from those parameters, ``trajs, data, neural = chapter.setup()``
(:mod:`sdelm.book.setup`). Its last hidden cell
calls :meth:`Chapter.finish`: the claims are verified and, at the defaults, recorded for the
claims ledger (:mod:`sdelm.book.ledger`). :func:`sdelm.book.execution.execute` runs a
chapter with papermill, as ``sdelm chapter`` and the ledger do.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdelm.book.claims import Claims
from sdelm.book.record import read_robustness
from sdelm.book.setup import (
    Setup,
    standard_folds,
    standard_neural,
    standard_setup,
    standard_trajectories,
)

if TYPE_CHECKING:
    from sdelm.data import PreparedData
    from sdelm.models import SDEModel
    from sdelm.trajectories import Trajectories

__all__ = [
    "ANY",
    "IGNORED",
    "Chapter",
    "ChapterError",
    "book_root",
    "chapter_names",
    "parameter_defaults",
    "record_path",
    "source_path",
]

#: A parameter default that is not a Python literal: any value goes.
ANY = object()
#: Parameters that say where a chapter runs, not what it computes: they never stop enforcement.
IGNORED = frozenset({"device"})
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]


class ChapterError(ValueError):
    """A chapter, its book or its parameters cell cannot be found or read."""


def book_root(root: str | Path | None = None) -> Path:
    """Return the folder holding ``_toc.yml`` and ``book/``.

    Args:
        root: Where to look; default the working folder, its parent (a chapter runs in
            ``book/``), then the repository sdelm was installed from.

    Raises:
        ChapterError: If none of them holds a book.

    """
    if root is not None:
        candidates = [Path(root)]
    else:
        candidates = [Path.cwd(), Path.cwd().parent, _PACKAGE_ROOT]
    for candidate in candidates:
        if (candidate / "_toc.yml").is_file() and (candidate / "book").is_dir():
            return candidate.resolve()
    raise ChapterError(
        "No book found (a folder with _toc.yml and book/); run from the repository or pass "
        "its folder as root."
    )


def chapter_names(root: Path) -> list[str]:
    """Return the executable chapters of the book at ``root``, in table-of-contents order."""
    import yaml

    toc = yaml.safe_load((root / "_toc.yml").read_text())
    entries = [*toc.get("chapters", []), *(e for p in toc.get("parts", []) for e in p["chapters"])]
    names = [Path(f).name for f in [toc["root"], *(e["file"] for e in entries)]]
    return [n for n in names if "kernelspec:" in (root / "book" / f"{n}.md").read_text()]


def source_path(name: str, root: Path) -> Path:
    """Return the MyST source of chapter ``name``.

    Raises:
        ChapterError: If the book has no such chapter (the message lists the chapters).

    """
    source = root / "book" / f"{name}.md"
    if not source.is_file():
        names = sorted(p.stem for p in (root / "book").glob("*.md") if p.stem != "api")
        raise ChapterError(f"No chapter {name!r}; chapters: {', '.join(names)}.")
    return source


def parameter_defaults(source: Path) -> dict[str, object]:
    """Return the names a chapter's parameters cell assigns, with their literal defaults.

    Args:
        source: The chapter's MyST file.

    Returns:
        Default value by name, in the cell's order; :data:`ANY` where the value is not a
        Python literal.

    Raises:
        ChapterError: If the chapter has no parameters cell, or it is not Python.

    """
    import jupytext

    notebook = jupytext.read(source)
    tagged = [c for c in notebook.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if not tagged:
        raise ChapterError(f"Chapter {source.stem!r} has no parameters cell.")
    try:
        tree = ast.parse(tagged[0].source)
    except SyntaxError as error:
        raise ChapterError(
            f"The parameters cell of {source.stem} is not Python ({error})."
        ) from error
    defaults: dict[str, object] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        try:
            default = ast.literal_eval(value)
        except (ValueError, TypeError, SyntaxError):
            default = ANY
        defaults.update({t.id: default for t in targets if isinstance(t, ast.Name)})
    return defaults


def _is_literal(value: object) -> bool:
    """Whether a value could come from a parameters cell: numbers, strings, None, lists."""
    if isinstance(value, (list, tuple)):
        return all(_is_literal(v) for v in value)
    return value is None or isinstance(value, (str, int, float))


def _normalised(value: object) -> object:
    return [_normalised(v) for v in value] if isinstance(value, (list, tuple)) else value


def record_path(name: str, overrides: Mapping[str, Any] | None = None) -> Path:
    """Where the claims of chapter ``name`` are recorded.

    Args:
        name: The chapter's file name without ``.md``.
        overrides: The parameters that differ from the defaults; none for the defaults' run,
            whose record the claims ledger reads.

    Returns:
        ``claims/KERNELS/NAME.json`` in the sdelm cache at the defaults, else
        ``claims/KERNELS/runs/NAME-DIGEST.json`` with a digest of the overrides; ``KERNELS``
        names the CPU kernels in force (:func:`sdelm.numerics.kernels`), so that runs on other
        kernels are kept beside each other.

    """
    from sdelm.files import cache_dir
    from sdelm.numerics import kernels

    folder = cache_dir() / "claims" / re.sub(r"[^a-z0-9]+", "-", kernels().lower())
    if not overrides:
        return folder / f"{name}.json"
    text = json.dumps({k: _normalised(v) for k, v in overrides.items()}, sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return folder / "runs" / f"{name}-{digest}.json"


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Chapter:
    """One execution of a chapter.

    Attributes:
        name: The chapter's file name without ``.md``.
        parameters: The parameters in force, by name (the parameters cell's names).
        defaults: The parameters cell's defaults; empty when the source was not found.
        source: The chapter's MyST file, or None when it was not found (a downloaded
            notebook): the claims are then computed but not enforced.
        claims: The chapter's claims, enforced exactly at the defaults.
        namespace: What :meth:`trajectories` and :meth:`setup` read: the parameters, or
            for a chapter whose source was not found, the notebook's public globals with
            literal values (never a module such as ``sdelm.control`` that shares a name with
            an argument).

    """

    name: str
    parameters: dict[str, Any]
    defaults: dict[str, Any]
    source: Path | None
    claims: Claims = field(repr=False)
    namespace: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, name: str, namespace: Mapping[str, Any], root: Path | None = None) -> Chapter:
        """Read the chapter's defaults and compare them with the parameters in ``namespace``.

        Args:
            name: The chapter's file name without ``.md``, e.g. ``"drift_diffusion"``.
            namespace: The notebook's globals (after the parameters cell, and papermill's
                injected cell, ran).
            root: The book's folder; default found by :func:`book_root`.

        Returns:
            The chapter, with claims enforced exactly when every parameter (but those in
            :data:`IGNORED`) equals its default.

        Raises:
            ChapterError: If the source is found but a parameter of its cell is not defined.

        """
        try:
            source = source_path(name, book_root(root))
        except ChapterError:  # a downloaded notebook: its literal globals stand in
            literals = {
                k: v for k, v in namespace.items() if not k.startswith("_") and _is_literal(v)
            }
            return cls(name, {}, {}, None, Claims(enforce=False), literals)
        defaults = parameter_defaults(source)
        missing = [key for key in defaults if key not in namespace]
        if missing:
            raise ChapterError(f"The parameters {missing} of {name} are not defined.")
        parameters = {key: namespace[key] for key in defaults}
        enforce = all(
            _normalised(parameters[key]) == _normalised(value)
            for key, value in defaults.items()
            if value is not ANY and key not in IGNORED
        )
        claims = Claims(enforce=enforce, chapter=name, record=read_robustness(book_root(root)))
        return cls(name, parameters, defaults, source, claims, parameters)

    def trajectories(self, **data: Any) -> Trajectories:
        """Collect the chapter's trajectories (:func:`~sdelm.book.setup.standard_trajectories`).

        Every parameter named like an argument of :func:`sdelm.collect_trajectories`
        (``model``, ``n_prompts``, ``temperatures``, ...) is that argument; cached.

        Args:
            **data: Arguments that replace the parameters of the same name, for a chapter
                that reads a second data set (``n_prompts=sweep_prompts``, say).

        """
        return standard_trajectories({**self.namespace, **data})

    def setup(
        self,
        *,
        source: str | None = "generated",
        split: tuple[float, float, float] | None = None,
        fit: bool = True,
    ) -> Setup:
        """Return the chapter's trajectories, prepared data and fitted neural SDE: one call.

        Args:
            source: Prepare only the rows of this source, or every row with None.
            split: Train/validation/test shares of the prompts; default that of
                :func:`sdelm.prepare`.
            fit: Fit (or load from the cache) the neural SDE.

        Returns:
            ``(trajectories, data, neural)``: see :func:`sdelm.book.setup.standard_setup`.

        """
        return standard_setup(self.namespace, source=source, split=split, fit=fit)

    def folds(
        self, k: int, *, source: str | None = "generated", **data: Any
    ) -> list[PreparedData]:
        """Prepare the chapter's rows of ``source`` (every row with None) in ``k`` folds.

        See :func:`~sdelm.book.setup.standard_folds`; fold ``i`` holds out the i-th group of
        prompts (and passages). ``**data`` replaces parameters as in :meth:`trajectories`:
        chapters that ask for the same data get the same folds, and share their fits.
        """
        return standard_folds({**self.namespace, **data}, k, source=source)

    def refit(
        self, data: PreparedData, *, seed: int | None = None, correlated: bool = False
    ) -> SDEModel:
        """Fit (or load) the chapter's neural SDE on other data, e.g. a surrogate.

        The same model and fit as :meth:`setup`'s (:func:`~sdelm.book.setup.standard_neural`),
        from the chapter's ``seed`` or, to measure the randomness of fitting, another one;
        with ``correlated``, the neural SDE with correlated noise.
        """
        namespace = self.namespace if seed is None else {**self.namespace, "seed": seed}
        return standard_neural(namespace, data, correlated=correlated)

    @property
    def overrides(self) -> dict[str, Any]:
        """The parameters in force that differ from the defaults.

        Those in :data:`IGNORED` and computed defaults (:data:`ANY`) never count.
        """
        return {
            key: self.parameters[key]
            for key, value in self.defaults.items()
            if value is not ANY
            and key not in IGNORED
            and _normalised(self.parameters[key]) != _normalised(value)
        }

    def finish(self) -> str:
        """Verify the claims and record them: at the defaults for the ledger, else as a run.

        A run at other parameters (another extraction ``seed``, say) is recorded under
        :func:`record_path` of its overrides, with them, so that
        :func:`sdelm.book.robustness.seed_robustness` can set it beside the defaults.

        The run is recorded before its claims are verified: a run whose asserted claim fails
        still shows what it measured (the robustness record reads it; the build fails anyway).

        Returns:
            :meth:`Claims.verify`'s summary.

        Raises:
            ClaimFailedError: If an asserted claim reverses (after recording the run).

        """
        from sdelm.cache import source_fingerprint
        from sdelm.files import write_json_atomically
        from sdelm.numerics import kernels

        if self.source is not None:
            table = self.claims.table()
            overrides = self.overrides  # none exactly when the claims are enforced
            record = {
                "chapter": self.name,
                "source_sha256": _file_digest(self.source),
                "sdelm": source_fingerprint(),
                "kernels": kernels(),
                "parameters": {k: _normalised(v) for k, v in overrides.items()},
                "claims": table.astype(object).where(table.notna(), None).to_dict("records"),
            }
            write_json_atomically(record, record_path(self.name, overrides))
        return self.claims.verify()
