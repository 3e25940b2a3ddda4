"""Measure every verdict's robustness: across extraction seeds and the CPU kernels.

A chapter's ``seed`` draws its sampled text (and the splits and fits that follow), and the CPU
kernels (:mod:`sdelm.numerics`) decide the last bits of every logit, so another processor
samples other tokens now and then. A verdict that changes with either belongs to one sample,
not to the model. :func:`measure` executes the chapters at several seeds and on several
kernels and adds every claim's verdict to the robustness record (:mod:`sdelm.book.record`);
:func:`robustness_table` sets the record beside the claims ledger.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sdelm.book.build import LEDGER, execute_book
from sdelm.book.chapter import ChapterError, book_root, chapter_names, parameter_defaults
from sdelm.book.chapter import source_path as chapter_source
from sdelm.book.record import RECORD, analysis_code, identity, processor, read_robustness

__all__ = ["measure"]


def _kernel_setting(capability: str) -> dict[str, str]:
    return {"ATEN_CPU_CAPABILITY": capability}


def _run_records(
    names: Sequence[str], seed: int, capability: str, defaults: Mapping[str, Mapping]
) -> dict[str, dict]:
    """Return the records the current code made for ``names`` at ``seed`` on ``capability``."""
    from sdelm.cache import source_fingerprint
    from sdelm.files import cache_dir

    code = source_fingerprint()
    found = {}
    for path in sorted((cache_dir() / "claims").rglob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        name = record.get("chapter")
        if name not in names or record.get("sdelm") != code:
            continue
        if record.get("kernels", "").split("/")[0].lower() != capability.lower():
            continue
        want = {} if defaults[name].get("seed") == seed else {"seed": seed}
        if record.get("parameters") == want:
            found[name] = record
    return found


def measure(
    seeds: Sequence[int],
    capabilities: Sequence[str] = ("avx2",),
    names: Sequence[str] | None = None,
    *,
    jobs: int = 2,
    root: str | Path | None = None,
) -> dict[str, Any]:
    """Execute the chapters at every seed on every kernel setting; add the runs to the record.

    Runs already recorded by the current code are read, not executed again. A chapter that
    fails (an asserted verdict changed, say) still leaves its claims recorded
    (:meth:`sdelm.book.Chapter.finish`), and they count.

    Args:
        seeds: Values of the chapters' ``seed`` parameter (the default among them or not).
        capabilities: ATen CPU capabilities to run on (``ATEN_CPU_CAPABILITY``: ``"avx2"``,
            the pinned kernels; ``"default"``, unvectorised kernels that sample other tokens,
            as another processor does; ``"avx512"``).
        names: Chapters; default every chapter with a ``seed`` parameter but the ledger.
        jobs: Chapters executed at once.
        root: The book's folder; default found by :func:`sdelm.book.book_root`.

    Returns:
        The record written to ``book/robustness.json`` (earlier runs under other labels kept).

    Raises:
        ChapterError: If a chapter has no ``seed`` parameter or a run recorded no claims.

    """
    from sdelm.files import write_json_atomically

    root = book_root(root)
    chosen = [n for n in chapter_names(root) if n != LEDGER] if names is None else list(names)
    defaults = {name: parameter_defaults(chapter_source(name, root)) for name in chosen}
    if names is None:
        chosen = [name for name in chosen if "seed" in defaults[name]]
    lacking = [name for name in chosen if "seed" not in defaults[name]]
    if lacking:
        raise ChapterError(f"Chapters {lacking} have no seed parameter to vary.")
    record = read_robustness(book_root(root))
    entries = {(e["chapter"], e["name"]): e for e in record["claims"]}
    code, cpu = analysis_code(), processor()
    order = {name: i for i, name in enumerate(chapter_names(root))}
    for capability in capabilities:
        for seed in seeds:
            records = _run_records(chosen, seed, capability, defaults)
            missing = [name for name in chosen if name not in records]
            if missing:
                _execute(missing, seed, capability, defaults, jobs, root)
                records = _run_records(chosen, seed, capability, defaults)
            lost = [name for name in chosen if name not in records]
            if lost:
                raise ChapterError(
                    f"Chapters {lost} recorded no claims at seed {seed} on {capability} kernels."
                )
            kernels = next(iter(records.values()))["kernels"]
            label = f"seed {seed} · {kernels} · {cpu}"
            record["runs"][label] = {
                "seed": seed,
                "kernels": kernels,
                "processor": cpu,
                "analysis_code": code,
                "source": "sdelm robustness",
            }
            for name, run in records.items():
                for claim in run["claims"]:
                    key = (name, claim["name"])
                    described = {k: claim[k] for k in ("what", "expected", "null")}
                    entry = entries.get(key)
                    if entry is None or identity(entry) != identity(claim):
                        entry = entries[key] = {
                            "chapter": name,
                            "name": claim["name"],
                            **described,
                            "verdicts": {},
                            "estimates": {},
                        }
                    entry["verdicts"][label] = claim["verdict"]
                    entry["estimates"][label] = claim["estimate"]
            record["claims"] = sorted(entries.values(), key=lambda e: order.get(e["chapter"], 99))
            write_json_atomically(record, root / RECORD)  # after each run: none is lost
    return record


def _execute(
    names: list[str],
    seed: int,
    capability: str,
    defaults: Mapping[str, Mapping],
    jobs: int,
    root: Path,
) -> None:
    """Execute chapters at ``seed`` on ``capability`` kernels; failures only reported."""
    at_default = [n for n in names if defaults[n].get("seed") == seed]
    others = [n for n in names if n not in at_default]
    saved = {key: os.environ.get(key) for key in _kernel_setting(capability)}
    os.environ.update(_kernel_setting(capability))  # the workers' kernels inherit it
    try:
        with tempfile.TemporaryDirectory() as folder:
            for chosen, parameters in ((at_default, None), (others, {"seed": seed})):
                if not chosen:
                    continue
                try:
                    execute_book(Path(folder), chosen, jobs=jobs, root=root, parameters=parameters)
                except ChapterError as error:
                    print(f"seed {seed}, {capability} kernels: {error}", flush=True)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
