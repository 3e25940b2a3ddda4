"""Time every chapter of the book, from an empty sdelm cache and again with nothing changed.

Executes the chapters in the table of contents' order with papermill, in one process, one
shared fresh cache (the converted model is reused, as on a reader's machine after the first
load): the first pass is a fresh execution, the second a re-execution with everything cached.
Prints each chapter's seconds and share of the total.

    python benchmarks/book.py                       # every chapter, both passes
    python benchmarks/book.py --chapters fitting --passes 1
    python benchmarks/book.py --keep /tmp/book-run  # keep the notebooks (and the cache)

A chapter that fails is timed up to its failure, marked FAILED in the table, and the others
still run.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import jupytext
import nbformat
import papermill
import yaml
from papermill.exceptions import PapermillExecutionError

from sdelm import cache_dir

ROOT = Path(__file__).resolve().parent.parent


def chapters_in_order() -> list[Path]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [entry["file"] for part in toc["parts"] for entry in part["chapters"]]
    paths = [ROOT / f"{name}.md" for name in files]
    return [p for p in paths if "kernelspec:" in p.read_text()]


def run(chapter: Path, folder: Path, failed: dict[str, str]) -> float:
    """Execute one chapter; a chapter that raises is timed up to the failure and noted."""
    source = folder / f"{chapter.stem}.source.ipynb"
    nbformat.write(jupytext.read(chapter), source)
    start = time.perf_counter()
    try:
        papermill.execute_notebook(
            source,
            folder / f"{chapter.stem}.ipynb",
            kernel_name="python3",
            cwd=str(chapter.parent),
            progress_bar=False,
        )
    except PapermillExecutionError as error:
        failed[chapter.stem] = f"{error.ename}: {error.evalue}"[:300]
    seconds = time.perf_counter() - start
    print(f"  {chapter.stem}: {seconds:.0f} s", flush=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chapters", nargs="*", help="chapter stems (default: all)")
    parser.add_argument("--passes", type=int, default=2, choices=(1, 2))
    parser.add_argument("--keep", type=Path, help="keep the executed notebooks in this folder")
    args = parser.parse_args()
    chapters = [c for c in chapters_in_order() if not args.chapters or c.stem in args.chapters]
    models = cache_dir() / "models"
    models.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) if args.keep is None else args.keep
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "cache").mkdir(exist_ok=False)  # always an empty cache
        (folder / "cache" / "models").symlink_to(models, target_is_directory=True)
        os.environ["SDELM_CACHE"] = str(folder / "cache")
        print(f"load: {os.getloadavg()[0]:.2f} (1 min); cores: {os.cpu_count()}")
        for label in ("fresh (empty cache)", "no change (warm cache)")[: args.passes]:
            failed: dict[str, str] = {}
            print(f"{label}:", flush=True)
            seconds = {c.stem: run(c, folder, failed) for c in chapters}
            total = sum(seconds.values())
            print(f"\n{label}: total {total:.0f} s ({total / 60:.1f} min)")
            print(f"{'chapter':<18}{'seconds':>9}{'share':>8}")
            for stem, value in sorted(seconds.items(), key=lambda kv: -kv[1]):
                note = f"  FAILED {failed[stem]}" if stem in failed else ""
                print(f"{stem:<18}{value:>9.1f}{value / total:>8.1%}{note}")


if __name__ == "__main__":
    main()
