"""The robustness record: every claim's verdict in every run it was checked on.

``book/robustness.json`` is made by :func:`sdelm.book.robustness.measure` (``sdelm
robustness``) and committed with the book. This module reads it and judges each claim:
**robust** (one verdict in every run: asserted), **fragile** (verdicts differ: shown with their
spread, asserted nothing) or **unchecked** (no entry: asserted nothing). It imports nothing of
the book's execution, so that :class:`sdelm.book.Claims` can use it.
"""

from __future__ import annotations

import json
import platform
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "PRESENTATION",
    "RECORD",
    "UNCHECKED",
    "Robustness",
    "RobustnessRecordError",
    "analysis_code",
    "claim_robustness",
    "departures",
    "identity",
    "processor",
    "read_robustness",
    "run_here",
    "stale_runs",
]


class RobustnessRecordError(ValueError):
    """The robustness record exists but cannot be read."""


#: The robustness record, relative to the book's folder.
RECORD = Path("book") / "robustness.json"
#: Parts of the package that present numbers without computing them: a change there keeps the
#: record current.
PRESENTATION = ("book", "cli.py")


@dataclass(frozen=True)
class Robustness:
    """What the robustness record says of one claim.

    Attributes:
        status: ``"robust"`` (one verdict in every run), ``"fragile"`` or ``"unchecked"``.
        verdict: The verdict of every run, where robust; else None.
        spread: The verdicts by run, in words, e.g. ``"opposite at seeds 0, 2 (AVX2, AMD
            EPYC); inconclusive at seed 1 (AVX2, AMD EPYC)"``; empty where unchecked.
        runs: How many runs checked it.

    """

    status: Literal["robust", "fragile", "unchecked"]
    verdict: str | None = None
    spread: str = ""
    runs: int = 0


UNCHECKED = Robustness("unchecked")


def processor() -> str:
    """Return the processor's model name (``/proc/cpuinfo``), else the platform's word."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def analysis_code() -> str:
    """Fingerprint of the code that computes the claims: sdelm without its presentation."""
    from sdelm.cache import source_fingerprint

    return source_fingerprint(exclude=PRESENTATION)


def read_robustness(root: Path) -> dict[str, Any]:
    """Read the book's robustness record; an empty one where the book has none.

    Args:
        root: The book's folder.

    Returns:
        ``runs`` (label -> ``seed``, ``kernels``, ``processor``, ``analysis_code``, ``source``)
        and ``claims`` (one dict per claim: ``chapter``, ``name``, ``what``, ``expected``,
        ``null``, ``verdicts`` and ``estimates`` by run label).

    Raises:
        RobustnessRecordError: If the record exists but cannot be read as such.

    """
    path = Path(root) / RECORD
    if not path.is_file():
        return {"runs": {}, "claims": []}
    try:
        record = json.loads(path.read_text())
        record["runs"], record["claims"]
    except (ValueError, KeyError, TypeError) as error:
        raise RobustnessRecordError(
            f"{path} is not a robustness record ({error}); remake it with `sdelm robustness`."
        ) from error
    return record


def _describe(verdicts: Mapping[str, str], runs: Mapping[str, Mapping[str, Any]]) -> str:
    """``"as expected at seeds 0, 1 (AVX2, AMD EPYC); …"``: runs grouped by verdict."""
    parts = []
    for verdict in dict.fromkeys(verdicts.values()):
        by_setting: dict[str, list[str]] = {}
        for label, found in verdicts.items():
            if found == verdict:
                run = runs.get(label, {})
                setting = f"{run.get('kernels', '?')}, {run.get('processor', '?')}"
                by_setting.setdefault(setting, []).append(str(run.get("seed", "?")))
        where = " and ".join(
            f"seed{'s' if len(seeds) > 1 else ''} {', '.join(seeds)} ({setting})"
            for setting, seeds in by_setting.items()
        )
        parts.append(f"{verdict} at {where}")
    return "; ".join(parts)


def identity(claim: Mapping[str, Any]) -> tuple[str, str, float]:
    """Return what makes two runs' claims of one name the same measurement.

    The quantity in words (``what``, its numbers left out: a description may carry a computed
    number, such as the smallest shift detectable), the side expected and the null.
    """
    what = re.sub(r"\d+(?:[.,]\d+)*(?:[eE][-+]?\d+)?", "#", str(claim["what"]))
    return what, str(claim["expected"]), float(claim["null"])


def claim_robustness(
    chapter: str, claims: Iterable[Mapping[str, Any]], record: Mapping[str, Any]
) -> dict[str, Robustness]:
    """Judge each claim of a chapter by the robustness record.

    A claim matches its entry only if its :func:`identity` is the same: another measurement
    under the same name is unchecked.

    Args:
        chapter: The chapter's name.
        claims: Its claims, each with ``name``, ``what``, ``expected`` and ``null``.
        record: From :func:`read_robustness`.

    Returns:
        Claim name -> :class:`Robustness`.

    """
    entries = {entry["name"]: entry for entry in record["claims"] if entry["chapter"] == chapter}
    judged = {}
    for claim in claims:
        entry = entries.get(claim["name"])
        same = entry is not None and identity(entry) == identity(claim)
        verdicts = {k: v for k, v in (entry or {}).get("verdicts", {}).items() if v}
        if not same or not verdicts:
            judged[claim["name"]] = UNCHECKED
            continue
        distinct = set(verdicts.values())
        spread = _describe(verdicts, record["runs"])
        judged[claim["name"]] = (
            Robustness("robust", distinct.pop(), spread, len(verdicts))
            if len(distinct) == 1
            else Robustness("fragile", None, spread, len(verdicts))
        )
    return judged


def stale_runs(record: Mapping[str, Any]) -> list[str]:
    """Return the labels of the runs made by other analysis code than the current one.

    Args:
        record: From :func:`read_robustness`.

    Returns:
        Run labels, in the record's order; empty when every run measured the current code.

    """
    code = analysis_code()
    return [label for label, run in record["runs"].items() if run.get("analysis_code") != code]


def run_here(record: Mapping[str, Any], seed: int) -> str | None:
    """Return the label of the record's run at ``seed`` on this processor and these kernels.

    Such a run samples the same tokens as this machine does (:mod:`sdelm.numerics`), so its
    verdicts are the ones the current code must give here, if the record is current.

    Args:
        record: From :func:`read_robustness`.
        seed: The extraction seed.

    Returns:
        The run's label, or None where the record holds no such run.

    """
    from sdelm.numerics import kernels

    here = (seed, kernels(), processor())
    for label, run in record["runs"].items():
        if (run.get("seed"), run.get("kernels"), run.get("processor")) == here:
            return label
    return None


def departures(
    claims: Iterable[Mapping[str, Any]], record: Mapping[str, Any], label: str
) -> list[tuple[str, str]]:
    """Return the claims whose verdict differs from the one the record's run ``label`` gave.

    Args:
        claims: Claims with ``chapter``, ``name`` and ``verdict`` (e.g. the ledger's rows).
        record: From :func:`read_robustness`.
        label: A run's label (e.g. :func:`run_here`'s).

    Returns:
        (chapter, claim name) of each claim whose verdict differs, or that the run lacks.

    """
    recorded = {
        (entry["chapter"], entry["name"]): entry["verdicts"].get(label)
        for entry in record["claims"]
    }
    return [
        (claim["chapter"], claim["name"])
        for claim in claims
        if recorded.get((claim["chapter"], claim["name"])) != claim["verdict"]
    ]
