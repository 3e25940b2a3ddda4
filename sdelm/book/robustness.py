"""Robustness to the extraction seed: every claim at the defaults beside its value at other seeds.

A chapter's ``seed`` draws its sampled text (and the splits and fits that follow), so a finding
that holds for one seed and changes sign at another is a property of one sample, not of the
model. :func:`seed_robustness` executes the chapters at other seeds (side by side, as the book
is built), reads each run's recorded claims (:meth:`sdelm.book.Chapter.finish` records runs at
other parameters too) and sets them beside the claims at the defaults. Records made by the
current chapter source and sdelm code are reused, so asking again executes nothing.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from sdelm.book.build import LEDGER, execute_book
from sdelm.book.chapter import (
    ChapterError,
    book_root,
    chapter_names,
    parameter_defaults,
    source_path,
)
from sdelm.book.ledger import read_record

__all__ = ["seed_robustness"]


def _records(
    names: list[str], overrides: dict[str, object], root: Path, jobs: int
) -> dict[str, dict]:
    """Each chapter's current record for ``overrides``, executing those that lack one."""
    missing = [n for n in names if read_record(n, root, overrides) is None]
    if missing:
        with tempfile.TemporaryDirectory() as folder:
            execute_book(Path(folder), missing, jobs=jobs, root=root, parameters=overrides)
    records = {name: read_record(name, root, overrides) for name in names}
    lost = [name for name, record in records.items() if record is None]
    if lost:
        raise ChapterError(
            f"Chapters {lost} ran at {overrides or 'the defaults'} but recorded "
            "no claims: does each end with chapter.finish()?"
        )
    return records


def _side(estimate: pd.Series, null: pd.Series) -> pd.Series:
    """-1, 0 or +1: which side of its null each estimate lies on."""
    return (estimate - null).apply(lambda d: (d > 0) - (d < 0))


def seed_robustness(
    seeds: Sequence[int],
    names: Sequence[str] | None = None,
    *,
    jobs: int = 2,
    root: str | Path | None = None,
) -> pd.DataFrame:
    """Set every claim at the defaults beside the same claim at other extraction seeds.

    Args:
        seeds: Values of the chapters' ``seed`` parameter to run, other than the default.
        names: Chapters to compare; default every chapter with a ``seed`` parameter (the
            claims ledger aside).
        jobs: Chapters executed at once.
        root: The book's folder; default found by :func:`sdelm.book.book_root`.

    Returns:
        One row per claim at the defaults: ``chapter``, ``name``, ``what``, ``null``,
        ``expected``, ``found`` (the verdict asserted at the defaults), ``estimate``; per seed
        ``s``, ``estimate@s``, ``low@s``, ``high@s`` and ``verdict@s`` (Holm-adjusted within
        the chapter's run, NaN where that run has no claim of this name); ``sign_kept``
        (every seed's estimate on the defaults' side of the null) and ``verdict_kept``
        (every seed's verdict the one asserted).

    Raises:
        ChapterError: If a chapter has no ``seed`` parameter, equals a seed the default, or
            a run records no claims.

    """
    root = book_root(root)
    seeds = [int(seed) for seed in seeds]
    chosen = [n for n in chapter_names(root) if n != LEDGER] if names is None else list(names)
    defaults = {name: parameter_defaults(source_path(name, root)) for name in chosen}
    if names is None:
        chosen = [name for name in chosen if "seed" in defaults[name]]
    lacking = [name for name in chosen if "seed" not in defaults[name]]
    if lacking:
        raise ChapterError(f"Chapters {lacking} have no seed parameter to vary.")
    same = [n for n in chosen for s in seeds if defaults[n]["seed"] == s]
    if same:
        raise ChapterError(
            f"seed {seeds} includes the default of {sorted(set(same))}; give other seeds."
        )
    columns = ["name", "what", "null", "expected", "found", "estimate"]
    table = pd.concat(
        [
            pd.DataFrame(record["claims"])[columns].assign(chapter=name)
            for name, record in _records(chosen, {}, root, jobs).items()
        ],
        ignore_index=True,
    )
    table = table[["chapter", *columns]]
    for seed in seeds:
        runs = _records(chosen, {"seed": seed}, root, jobs)
        measured = ["estimate", "low", "high", "verdict"]
        found = pd.concat(
            [
                pd.DataFrame(record["claims"])[["name", *measured]].assign(chapter=name)
                for name, record in runs.items()
            ],
            ignore_index=True,
        ).rename(columns={column: f"{column}@{seed}" for column in measured})
        table = table.merge(found, on=["chapter", "name"], how="left")
    default_side = _side(table["estimate"], table["null"])
    table["sign_kept"] = pd.concat(
        [_side(table[f"estimate@{seed}"], table["null"]) == default_side for seed in seeds],
        axis=1,
    ).all(axis=1)
    table["verdict_kept"] = pd.concat(
        [table[f"verdict@{seed}"] == table["found"] for seed in seeds], axis=1
    ).all(axis=1)
    return table
