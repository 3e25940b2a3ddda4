"""Bundled prompts, Shakespeare passages and the HelpSteer loader."""

from __future__ import annotations

import importlib.util
from collections import Counter

import pytest

from sdelm import corpus


def test_at_least_64_distinct_prompts_in_five_categories():
    prompts = corpus.prompts()
    assert len(prompts) >= 64
    assert len({p.id for p in prompts}) == len(prompts)
    assert len({p.text for p in prompts}) == len(prompts)
    counts = Counter(p.category for p in prompts)
    assert set(counts) == {"open_question", "explanation", "creative", "advice", "code"}
    assert min(counts.values()) >= 12


def test_any_prefix_is_balanced_across_categories():
    counts = Counter(p.category for p in corpus.prompts(10))
    assert set(counts.values()) == {2}


def test_prompt_selection_errors():
    assert [p.category for p in corpus.prompts(3, categories=["code"])] == ["code"] * 3
    with pytest.raises(ValueError, match="ask for 1 to 70"):
        corpus.prompts(71)
    with pytest.raises(ValueError, match="ask for 1 to"):
        corpus.prompts(0)
    with pytest.raises(ValueError, match="Unknown prompt categories"):
        corpus.prompts(categories=["poetry"])


def test_shakespeare_passages_are_deterministic_and_long_enough():
    first = corpus.shakespeare_passages(12, n_tokens=30, seed=4)
    again = corpus.shakespeare_passages(12, n_tokens=30, seed=4)
    other = corpus.shakespeare_passages(12, n_tokens=30, seed=5)
    assert first == again and first != other
    assert len({p.id for p in first}) == 12
    assert all(len(p.text.split()) == 31 for p in first)
    assert len({p.work for p in first}) > 3
    with pytest.raises(ValueError, match="must be positive"):
        corpus.shakespeare_passages(0)


@pytest.mark.skipif(
    importlib.util.find_spec("datasets") is not None, reason="tests the message without datasets"
)
def test_helpsteer_without_datasets_names_the_offline_alternatives():
    with pytest.raises(ModuleNotFoundError, match=r"corpus\.prompts\(\)"):
        corpus.helpsteer(10)
