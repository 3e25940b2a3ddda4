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


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": -1}, r"must be positive integers \(got n=-1.*n_passages=0"),
        ({"n": True}, r"must be positive integers \(got n=True"),
        ({"n": 2.5}, r"must be positive integers \(got n=2\.5"),
        ({"n": 3, "n_tokens": 0}, r"n_tokens=0"),
        ({"n": 3, "seed": -1}, r"seed must be an integer >= 0, got -1"),
        # These ran forever: no line has a million words after it, and there are not 10^8
        # distinct passages.
        ({"n": 1, "n_tokens": 10**6}, r"hold 0 passages of 1,000,001 words"),
        ({"n": 10**8}, r"hold [\d,]+ passages of 49 words .* not the 100,000,000"),
    ],
)
def test_shakespeare_passages_bad_counts_get_one_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        corpus.shakespeare_passages(**kwargs)


@pytest.mark.skipif(
    importlib.util.find_spec("datasets") is not None, reason="tests the message without datasets"
)
def test_helpsteer_without_datasets_names_the_offline_alternatives():
    with pytest.raises(ModuleNotFoundError, match=r"corpus\.prompts\(\)"):
        corpus.helpsteer(10)


def test_collect_refuses_a_bad_n_passages_before_loading_the_model(monkeypatch):
    import sdelm.collect as collect

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before n_passages was checked")

    monkeypatch.setattr(collect, "load_lm", no_model)
    with pytest.raises(ValueError, match="n_passages"):
        collect.collect_trajectories(n_passages=-1, cache=False)
