"""Build the book: its chapters executed side by side, then the HTML, as ``sdelm book`` does.

Jupyter Book executes a book's notebooks one after another. With ``execute_notebooks: cache``
(this book's ``_config.yml``) it first looks each chapter up in its jupyter-cache
(``_build/.jupyter_cache``) and executes only what it does not find. :func:`build` fills that
cache first: it executes the chapters the cache lacks, two at a time by default
(:func:`sdelm.book.execution.execute_chapters`), and adds them in the form Jupyter Book looks
for; the build then executes nothing. A cached chapter counts only if the current sdelm code
executed it, so a change of the package re-executes the book, as a change of a chapter
re-executes that chapter. A chapter that cannot be added (or a book that does not use the
cache) is left to Jupyter Book, which executes it itself.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from sdelm.book.chapter import book_root, chapter_names, source_path
from sdelm.book.execution import ChaptersFailedError, execute_chapters

if TYPE_CHECKING:
    import nbformat

__all__ = ["LEDGER", "LONGEST_FIRST", "build", "execute_book", "stale_chapters"]

#: The claims ledger's page: executed after every other chapter, whose records it reads.
LEDGER = "verdicts"
#: The chapters that took longest to execute (cell times of the CI run at 7d3f69e: 259, 112,
#: 100, 112 and 85 s), started first so that side-by-side workers finish together.
LONGEST_FIRST = ("applications", "other_model", "branching", "fitting", "layer_time")


def _longest_first(names: list[str]) -> list[str]:
    return [n for n in LONGEST_FIRST if n in names] + [n for n in names if n not in LONGEST_FIRST]


def execute_book(
    folder: Path,
    names: list[str] | None = None,
    *,
    jobs: int = 2,
    root: Path | None = None,
    parameters: Mapping[str, object] | None = None,
    failed_folder: Path | None = None,
) -> dict[str, Path]:
    """Execute chapters, ``jobs`` at a time, the longest first and the claims ledger last.

    Args:
        folder: Where the executed notebooks go.
        names: Chapters to execute; default every chapter of the book.
        jobs: Chapters executed at once.
        root: The book's folder; default found by :func:`sdelm.book.book_root`.
        parameters: Overrides of every chapter's parameters cell; default none (the
            defaults). The ledger takes none: it reads the runs at the defaults.
        failed_folder: Where a failed chapter's notebook is kept (``NAME.ipynb``); default
            ``folder/failed``.

    Returns:
        Chapter name -> executed notebook.

    Raises:
        ChaptersFailedError: If a chapter failed (after all have run; the ledger is then not
            executed). It carries the chapters that ran.

    """
    root = book_root(root)
    names = chapter_names(root) if names is None else list(names)
    others = _longest_first([n for n in names if n != LEDGER])
    kept = {"root": root, "failed_folder": failed_folder}
    executed = (
        execute_chapters(others, folder, jobs=jobs, parameters=parameters, **kept)
        if others
        else {}
    )
    if LEDGER in names:
        try:
            executed |= execute_chapters([LEDGER], folder, **kept)
        except ChaptersFailedError as error:
            raise ChaptersFailedError(str(error), executed, error.failed) from None
    return executed


def _cache_config(root: Path) -> bool:
    import yaml

    config = yaml.safe_load((root / "_config.yml").read_text()) or {}
    return (config.get("execute") or {}).get("execute_notebooks") == "cache"


def _as_read(name: str, root: Path) -> nbformat.NotebookNode:
    """Read a chapter as Jupyter Book does (MyST-NB): the notebook its cache is keyed by."""
    from myst_nb.core.read import read_myst_markdown_notebook

    return read_myst_markdown_notebook(source_path(name, root).read_text(), add_source_map=True)


def stale_chapters(root: Path, cache_path: Path) -> list[str]:
    """Return the chapters that Jupyter Book's cache lacks, or holds from other sdelm code.

    Args:
        root: The book's folder.
        cache_path: The jupyter-cache folder (``<out>/_build/.jupyter_cache``).

    Returns:
        Chapter names, in table-of-contents order, with the claims ledger whenever another
        chapter is stale (the ledger shows their claims). Records of other code are removed.

    """
    from jupyter_cache import get_cache

    from sdelm.cache import source_fingerprint

    cache = get_cache(str(cache_path))
    code = source_fingerprint()
    names = chapter_names(root)
    stale = set()
    # The ledger last, wherever the table of contents puts it: it is stale with any other.
    for name in sorted(names, key=lambda n: n == LEDGER):
        try:
            record = cache.match_cache_notebook(_as_read(name, root))
        except KeyError:
            stale.add(name)
            continue
        if record.data.get("sdelm") != code or (name == LEDGER and stale):
            cache.remove_cache_record(record.pk)
            stale.add(name)
    return [name for name in names if name in stale]


def _add_to_cache(name: str, executed: Path, root: Path, cache_path: Path) -> None:
    """Cache a papermill-executed chapter under the key Jupyter Book will look up."""
    import nbformat
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn

    from sdelm.cache import source_fingerprint

    notebook = _as_read(name, root)
    ran = nbformat.read(executed, as_version=4)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    ran_code = [c for c in ran.cells if c.cell_type == "code"]
    if [c.source for c in code] != [c.source for c in ran_code]:
        return  # not the same cells: Jupyter Book executes this chapter itself
    for cell, ran_cell in zip(code, ran_code, strict=True):
        cell.outputs, cell.execution_count = ran_cell.outputs, ran_cell.execution_count
    seconds = ran.metadata.get("papermill", {}).get("duration")
    cache = get_cache(str(cache_path))
    uri = str(source_path(name, root))
    bundle = CacheBundleIn(
        notebook, uri, data={"execution_seconds": seconds, "sdelm": source_fingerprint()}
    )
    cache.cache_notebook_bundle(bundle, check_validity=False, overwrite=True)


def build(root: Path | None = None, out: Path | None = None, *, jobs: int = 2) -> Path:
    """Execute the chapters the book's cache lacks, ``jobs`` at a time, then build the HTML.

    Args:
        root: The book's folder; default found by :func:`sdelm.book.book_root`.
        out: The folder that gets ``_build``; default ``root``.
        jobs: Chapters executed at once.

    Returns:
        The HTML folder, ``out/_build/html``.

    Raises:
        ChaptersFailedError: If a chapter failed. The chapters that ran are in the cache all
            the same (the next build does not execute them again), and each failed notebook is
            kept as ``out/_build/failed/NAME.ipynb``; the error names it.
        RuntimeError: If ``jupyter-book build`` failed.

    """
    root = book_root(root)
    out = root if out is None else Path(out)
    cache_path = out / "_build" / ".jupyter_cache"
    if _cache_config(root):
        stale = stale_chapters(root, cache_path)
        failed_folder = out / "_build" / "failed"
        for old in failed_folder.glob("*.ipynb"):
            if old.stem in stale:  # executed again now: its old failure no longer tells
                old.unlink()
        if stale:
            print(f"sdelm: executing {len(stale)} chapter(s), {jobs} at a time", flush=True)
        with tempfile.TemporaryDirectory() as folder:
            try:
                executed = execute_book(
                    Path(folder), stale, jobs=jobs, root=root, failed_folder=failed_folder
                )
            except ChaptersFailedError as error:
                for name, path in error.executed.items():  # what ran is kept
                    _add_to_cache(name, path, root, cache_path)
                raise
            for name, path in executed.items():
                _add_to_cache(name, path, root, cache_path)
    executable = Path(sys.executable).with_name("jupyter-book")
    command = [
        str(executable) if executable.is_file() else "jupyter-book",
        "build",
        str(root),
        "--warningiserror",
        "--keep-going",
        "--path-output",
        str(out),
    ]
    result = subprocess.run(command, check=False)
    if result.returncode:
        raise RuntimeError(f"jupyter-book build exited with {result.returncode}.")
    return out / "_build" / "html"
