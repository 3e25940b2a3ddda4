"""Executing chapters with papermill: one, or many side by side, each failure reported.

A chapter executes at its defaults (or with overrides of its parameters) into a notebook;
:func:`execute_chapters` runs several in worker processes and raises one
:class:`ChaptersFailedError` that names every chapter that failed.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from sdelm.book.chapter import ChapterError, book_root, parameter_defaults, source_path

__all__ = ["ChaptersFailedError", "execute", "execute_chapters"]


def execute(
    name: str,
    out: Path,
    *,
    parameters: Mapping[str, object] | None = None,
    root: Path | None = None,
    progress: bool = False,
    failed: Path | None = None,
) -> Path:
    """Execute a chapter with papermill, as a reader does, writing the notebook atomically.

    Args:
        name: The chapter's file name without ``.md``.
        out: The executed notebook (``.ipynb``); written only when the run succeeds.
        parameters: Overrides of the parameters cell.
        root: The book's folder; default found by :func:`book_root`.
        progress: Show papermill's progress bar.
        failed: Where the notebook goes when a cell raises (its outputs up to the error, and
            the error), for the reader to open; default nowhere.

    Returns:
        ``out``.

    Raises:
        ChapterError: If the chapter cannot be found or has no parameters cell.
        papermill.exceptions.PapermillExecutionError: If a cell raises.

    """
    import jupytext
    import papermill

    from sdelm.files import atomic_path

    root = book_root(root)
    source = source_path(name, root)
    parameter_defaults(source)  # a clear error when the chapter has no parameters cell
    with tempfile.TemporaryDirectory() as folder, atomic_path(out) as partial:
        plain = Path(folder) / f"{name}.ipynb"
        jupytext.write(jupytext.read(source), plain)
        with warnings.catch_warnings():  # the temporary name does not end in .ipynb
            warnings.filterwarnings("ignore", "The specified file", UserWarning)
            try:
                papermill.execute_notebook(
                    str(plain),
                    str(partial),
                    parameters=dict(parameters or {}),
                    kernel_name="python3",
                    cwd=str(root / "book"),
                    progress_bar=progress,
                )
            except Exception:
                if failed is not None and partial.stat().st_size:
                    with atomic_path(failed) as kept:
                        shutil.copyfile(partial, kept)
                raise
    return out


class ChaptersFailedError(ChapterError):
    """Some chapters failed; the others ran.

    Attributes:
        executed: Chapter name -> executed notebook, for the chapters that ran.
        failed: Chapter name -> the failed notebook kept for the reader (None where none
            could be kept).

    """

    def __init__(self, message: str, executed: dict[str, Path], failed: dict[str, Path | None]):
        super().__init__(message)
        self.executed = executed
        self.failed = failed


def _execute_reporting(
    name: str,
    out: Path,
    root: Path | None,
    parameters: Mapping[str, object] | None = None,
    failed: Path | None = None,
) -> str | None:
    """Execute a chapter in a worker process; return its failure as text (None if it ran).

    Prints a line as the chapter starts and one as it ends, with its time. A cell's error is
    reported as ``cell [N] raised NAME: message`` (a failed claim names the claim), not as
    papermill's traceback.
    """
    from papermill.exceptions import PapermillExecutionError

    start = time.perf_counter()
    print(f"sdelm: {name} started", flush=True)
    try:
        execute(name, out, parameters=parameters, root=root, failed=failed)
    except PapermillExecutionError as error:
        failure = f"{name}: cell [{error.exec_count}] raised {error.ename}: {error.evalue}"
    except Exception as error:  # reported by the parent, which waits for every chapter
        failure = f"{name}: {type(error).__name__}: {error}"
    else:
        print(f"sdelm: {name} done in {time.perf_counter() - start:.0f} s", flush=True)
        return None
    print(f"sdelm: {name} FAILED after {time.perf_counter() - start:.0f} s", flush=True)
    return failure[:2000]


def execute_chapters(
    names: Sequence[str],
    folder: Path,
    *,
    jobs: int = 1,
    root: Path | None = None,
    parameters: Mapping[str, object] | None = None,
    failed_folder: Path | None = None,
) -> dict[str, Path]:
    """Execute chapters, ``jobs`` at a time, into ``folder/NAME.ipynb``.

    Chapters side by side share the sdelm cache: an entry that two of them need is computed
    once (the second waits for the first, :func:`sdelm.cached`). Each kernel gets the cores
    divided among the jobs as its torch threads (``OMP_NUM_THREADS``, unless already set): on
    two cores, two chapters with one thread each finish sooner than one after the other with
    two, because much of a chapter (bootstraps, tables, plots) runs on one core anyway.
    Chapters start in the order given: put the longest first.

    Args:
        names: Chapter file names without ``.md``.
        folder: Where the executed notebooks go (created).
        jobs: Chapters executed at once, each from its own worker process.
        root: The book's folder; default found by :func:`book_root`.
        parameters: Overrides of every chapter's parameters cell (e.g. ``{"seed": 1}``);
            default none: the chapters run at their defaults.
        failed_folder: Where a failed chapter's notebook is kept, as ``NAME.ipynb``;
            default ``folder``.

    Returns:
        Chapter name -> executed notebook, in the order given.

    Raises:
        ChaptersFailedError: If any chapter failed (raised after all have run; it names each
            one and its kept notebook, and carries the chapters that ran).

    """
    if jobs < 1:
        raise ChapterError(f"jobs must be at least 1, not {jobs}.")
    folder.mkdir(parents=True, exist_ok=True)
    outs = {name: folder / f"{name}.ipynb" for name in names}
    kept_folder = folder / "failed" if failed_folder is None else failed_folder
    kept = {name: kept_folder / f"{name}.ipynb" for name in names}
    if jobs == 1:
        failures = [
            _execute_reporting(name, out, root, parameters, kept[name])
            for name, out in outs.items()
        ]
    else:
        set_here = "OMP_NUM_THREADS" not in os.environ
        if set_here:  # the workers, and the kernels they start, inherit it
            os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
        try:
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
                repeated = [root] * len(outs), [parameters] * len(outs), kept.values()
                failures = list(pool.map(_execute_reporting, outs, outs.values(), *repeated))
        finally:
            if set_here:
                os.environ.pop("OMP_NUM_THREADS", None)
    failed = {
        name: kept[name] if kept[name].is_file() else None
        for name, failure in zip(outs, failures, strict=True)
        if failure is not None
    }
    if failed:
        lines = [
            f"{failure} (notebook: {kept[name] if failed[name] else 'none written'})"
            for name, failure in zip(outs, failures, strict=True)
            if failure is not None
        ]
        ran = {name: out for name, out in outs.items() if name not in failed}
        raise ChaptersFailedError("Chapters failed: " + "; ".join(lines), ran, failed)
    return outs
