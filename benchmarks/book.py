"""Time every chapter of the book, from an empty sdelm cache and again with nothing changed.

Executes the chapters as ``make book`` and ``make test`` do (:func:`sdelm.book.execute_book`:
``--jobs`` chapters side by side, longest first, the claims ledger last), with one shared fresh
cache (the converted model is reused, as on a reader's machine after the first load): the first
pass is a fresh execution, the second a re-execution with everything cached. Prints the wall
time, each chapter's own seconds (papermill's) and their share; the ratio of their sum to the
wall time is what executing side by side gains, measured in the same run.

    python benchmarks/book.py                       # every chapter, both passes
    python benchmarks/book.py --chapters fitting --passes 1
    python benchmarks/book.py --keep /tmp/book-run  # keep the notebooks (and the cache)

A chapter that fails is marked FAILED (its error printed), and the others still run.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import nbformat

from sdelm import cache_dir
from sdelm.book import ChapterError, execute_book
from sdelm.book.chapter import chapter_names

ROOT = Path(__file__).resolve().parent.parent


def durations(folder: Path, names: list[str]) -> dict[str, float]:
    """Each executed chapter's own seconds, as papermill recorded them in its notebook."""
    seconds = {}
    for name in names:
        path = folder / f"{name}.ipynb"
        if path.is_file():
            seconds[name] = nbformat.read(path, as_version=4).metadata["papermill"]["duration"]
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chapters", nargs="*", help="chapter stems (default: all)")
    parser.add_argument("--passes", type=int, default=2, choices=(1, 2))
    parser.add_argument("--jobs", type=int, default=2, help="chapters at once (default 2)")
    parser.add_argument("--keep", type=Path, help="keep the executed notebooks in this folder")
    args = parser.parse_args()
    names = [n for n in chapter_names(ROOT) if not args.chapters or n in args.chapters]
    models = cache_dir() / "models"
    models.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) if args.keep is None else args.keep
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "cache").mkdir(exist_ok=False)  # always an empty cache
        (folder / "cache" / "models").symlink_to(models, target_is_directory=True)
        os.environ["SDELM_CACHE"] = str(folder / "cache")
        print(f"load: {os.getloadavg()[0]:.2f} (1 min); cores: {os.cpu_count()}; jobs {args.jobs}")
        passes = [("fresh (empty cache)", "fresh"), ("no change (warm cache)", "warm")]
        for label, subfolder in passes[: args.passes]:
            out = folder / subfolder
            for stale in out.glob("*.ipynb"):
                stale.unlink()
            start = time.perf_counter()
            failure = ""
            try:
                execute_book(out, names, jobs=args.jobs, root=ROOT)
            except ChapterError as error:
                failure = str(error)
            wall = time.perf_counter() - start
            seconds = durations(out, names)
            total = sum(seconds.values())
            print(
                f"\n{label}: wall {wall:.0f} s ({wall / 60:.1f} min); chapters' own "
                f"seconds sum to {total:.0f} s ({total / max(wall, 1e-9):.2f}× the wall time)"
            )
            print(f"{'chapter':<18}{'seconds':>9}{'share':>8}")
            for stem, value in sorted(seconds.items(), key=lambda kv: -kv[1]):
                print(f"{stem:<18}{value:>9.1f}{value / total:>8.1%}")
            for stem in sorted(set(names) - set(seconds)):
                print(f"{stem:<18}   FAILED")
            if failure:
                print(failure[:3000])


if __name__ == "__main__":
    main()
