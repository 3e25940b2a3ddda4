"""The claims ledger: every claim of every chapter, run at its defaults, in one table.

Each chapter records its claims when it finishes at its default parameters
(:meth:`sdelm.book.Chapter.finish`). The ledger reads those records and serves only the ones
made by the current chapter source and the current sdelm code; a chapter whose record is
missing or stale is executed first (with papermill, at its defaults), so the ledger never shows
a claim that the current book would not make.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from sdelm.book.chapter import (
    ChapterError,
    book_root,
    chapter_names,
    record_path,
    source_path,
)
from sdelm.book.execution import execute
from sdelm.book.record import claim_robustness, read_robustness

__all__ = ["ledger", "read_record"]


def read_record(
    name: str, root: Path, overrides: Mapping[str, object] | None = None
) -> dict | None:
    """Return chapter ``name``'s recorded claims if the current source and code made them.

    Args:
        name: The chapter's file name without ``.md``.
        root: The book's folder.
        overrides: The run's parameters that differ from the defaults; none for the
            defaults' run.

    Returns:
        The record (``chapter``, ``source_sha256``, ``sdelm``, ``kernels``, ``parameters``,
        ``claims``), or None when it is missing, unreadable, or was made by another chapter
        source, sdelm code, CPU kernels (:func:`sdelm.numerics.kernels`) or parameters.

    """
    from sdelm.cache import source_fingerprint  # imports torch: only when a record is read
    from sdelm.numerics import kernels

    try:
        record = json.loads(record_path(name, overrides).read_text())
        source = hashlib.sha256(source_path(name, root).read_bytes()).hexdigest()
        current = (
            record["source_sha256"] == source
            and record["sdelm"] == source_fingerprint()
            and record["kernels"] == kernels()
            and record["parameters"] == json.loads(json.dumps(dict(overrides or {})))
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return record if current else None


def ledger(
    root: str | Path | None = None, *, skip: tuple[str, ...] = (), execute_missing: bool = True
) -> pd.DataFrame:
    """Collect every chapter's claims, at its default parameters.

    Args:
        root: The book's folder; default found by :func:`sdelm.book.book_root`.
        skip: Chapters to leave out (the ledger's own page).
        execute_missing: Execute a chapter whose record is missing or stale; otherwise raise.

    Returns:
        One row per claim: ``chapter`` plus the columns of :meth:`sdelm.Claims.table`, in
        table-of-contents order, with ``robustness``, ``robust_verdict``, ``runs`` and
        ``checked`` read from the current robustness record (:mod:`sdelm.book.record`).

    Raises:
        ChapterError: If a chapter has no current record (and ``execute_missing`` is false), or
            executing it records none.

    """
    root = book_root(root)
    rows = []
    for name in chapter_names(root):
        if name in skip:
            continue
        record = read_record(name, root)
        if record is None and execute_missing:
            with tempfile.TemporaryDirectory() as folder:
                execute(name, Path(folder) / f"{name}.ipynb", root=root)
            record = read_record(name, root)
        if record is None:
            raise ChapterError(
                f"Chapter {name!r} has no claims recorded by the current code; execute it at its "
                f"defaults (sdelm chapter {name})."
            )
        rows.extend({"chapter": name, **claim} for claim in record["claims"])
    table = pd.DataFrame(rows)
    robustness = read_robustness(root)
    judged = {
        (chapter, name): robust
        for chapter, claims in table.groupby("chapter", sort=False)
        for name, robust in claim_robustness(
            str(chapter), claims.to_dict("records"), robustness
        ).items()
    }
    found = [judged[key] for key in zip(table["chapter"], table["name"], strict=True)]
    return table.assign(
        robustness=[robust.status for robust in found],
        robust_verdict=[robust.verdict for robust in found],
        runs=[robust.runs for robust in found],
        checked=[robust.spread for robust in found],
    )
