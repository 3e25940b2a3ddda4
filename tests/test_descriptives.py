"""Descriptive statistics on synthetic trajectories with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch

from sdelm import ClaimFailedError, Claims, Trajectories, generation, stats
from sdelm.analysis import descriptives


def make(states, prompt_ids=None, temperatures=None) -> Trajectories:
    trajs = Trajectories.from_states(states)
    n = trajs.n_sequences
    trajs.rows["prompt_id"] = prompt_ids or [f"p{i}" for i in range(n)]
    trajs.rows["source"] = "generated"
    trajs.rows["temperature"] = temperatures or [1.0] * n
    return trajs


def test_independent_states_have_memory_ratio_one_and_a_random_walk_below():
    g = torch.Generator().manual_seed(0)
    iid = make(torch.randn(200, 30, 4, generator=g))
    walk = make(torch.randn(200, 30, 4, generator=g).cumsum(dim=1))
    assert descriptives.increments_against_shuffled(iid, 0)["ratio"].mean() == pytest.approx(
        1, abs=0.03
    )
    assert descriptives.increments_against_shuffled(walk, 0)["ratio"].mean() < 0.5


def test_shuffle_partners_share_the_source_and_never_the_prompt():
    # Two identical samples per prompt, independent steps, and human states far away: a
    # partner of the same prompt (distance 0) or of the other source (distance ~10) would
    # pull the ratio away from 1; partners of other prompts of the same source do not.
    g = torch.Generator().manual_seed(2)
    base = torch.randn(40, 30, 4, generator=g)
    states = base.repeat_interleave(2, dim=0)
    states[40:] += 10.0
    trajs = make(states, prompt_ids=[f"p{i // 2}" for i in range(80)])
    trajs.rows["source"] = ["generated"] * 40 + ["human"] * 40
    memory = descriptives.increments_against_shuffled(trajs, 0)
    assert set(memory["n_partners"]) == {38}
    for _, one in memory.groupby("source"):
        assert one["ratio"].mean() == pytest.approx(1, abs=0.05)
    effect = descriptives.memory_effect(memory, seed=0)
    assert effect["low"] < 1 < effect["high"] and effect["n_clusters"] == 40
    same = descriptives.equivalence_effect(memory, 0.1, seed=0)
    assert same["high"] < 0.1 and same["p_value"] < 0.05
    with pytest.raises(ValueError, match="positive"):
        descriptives.equivalence_effect(memory, 0.0)


def test_a_sequence_without_partners_has_no_ratio_and_memory_is_detected():
    g = torch.Generator().manual_seed(3)
    walk = torch.randn(30, 20, 3, generator=g).cumsum(dim=1)
    trajs = make(walk, prompt_ids=[f"p{i}" for i in range(29)] + ["alone"])
    trajs.rows["source"] = ["generated"] * 29 + ["human"]
    memory = descriptives.increments_against_shuffled(trajs, 0)
    assert np.isnan(memory["ratio"].iloc[-1]) and memory["n_partners"].iloc[-1] == 0
    effect = descriptives.memory_effect(memory, seed=0)
    assert effect["high"] < 1 and effect["p_value"] < 0.01 and effect["n_clusters"] == 29
    assert descriptives.equivalence_effect(memory, 0.1, seed=0)["low"] > 0.1


def test_explained_variance_finds_a_low_rank_signal_on_held_out_rows():
    g = torch.Generator().manual_seed(1)
    basis = torch.linalg.qr(torch.randn(20, 2, generator=g))[0]  # two directions in 20-D
    states = torch.randn(40, 10, 2, generator=g) * 5 @ basis.T + 0.1 * torch.randn(
        40, 10, 20, generator=g
    )
    trajs = make(states)
    train, test = descriptives.split_prompts(trajs, 0.5, seed=0)
    assert not (train & test).any() and (train | test).all()
    spectrum = descriptives.explained_variance(trajs, 0, train, test)
    held_out = spectrum[spectrum["split"] == "held-out"]
    assert held_out["cumulative"].iloc[1] > 0.98
    assert held_out["cumulative"].iloc[-1] == pytest.approx(1.0)
    projection = descriptives.held_out_projection(trajs, 0, train, test, n_components=2)
    assert len(projection) == test.sum() and set(projection["sequence"]) == set(
        np.flatnonzero(test)
    )
    share = projection["along"].sum() / projection["total"].sum()
    assert share == pytest.approx(held_out["cumulative"].iloc[1])
    effect = descriptives.projection_effect(projection, null=2 / 20, seed=0)
    assert effect["estimate"] == pytest.approx(share) and effect["low"] > 0.95
    assert effect["p_value"] < 0.01 and effect["n_clusters"] == 20
    with pytest.raises(ValueError, match="n_components"):
        descriptives.held_out_projection(trajs, 0, train, test, n_components=21)


def test_split_prompts_keeps_prompts_together_and_refuses_empty_sets():
    trajs = make(torch.zeros(6, 3, 2), prompt_ids=["a", "a", "b", "b", "c", "c"])
    first, second = descriptives.split_prompts(trajs, 0.5, seed=0)
    ids = trajs.rows["prompt_id"]
    assert not set(ids[first]) & set(ids[second])
    with pytest.raises(ValueError, match="leaves a set empty"):
        descriptives.split_prompts(trajs, 0.01)


def test_intervals_cover_known_means():
    rng = np.random.default_rng(0)
    interval = stats.mean_interval(rng.normal(3.0, 1.0, 80))
    assert interval["low"] < 3.0 < interval["high"]
    gap = stats.mean_difference(rng.normal(1.0, 1.0, 60), rng.normal(0.0, 1.0, 60))
    assert gap["low"] < 1.0 < gap["high"] and gap["low"] > 0
    a = rng.normal(0.0, 1.0, 40)
    paired = stats.mean_difference(a + 0.5 + rng.normal(0.0, 0.1, 40), a, paired=True)
    assert 0.4 < paired["low"] < 0.5 < paired["high"] < 0.6


def test_step_and_sequence_statistics_and_temperature_contrast():
    states = torch.ones(4, 5, 2).cumsum(dim=1)  # |X_k − X_{k−1}| = sqrt(2)
    trajs = make(states, prompt_ids=["a", "a", "b", "b"], temperatures=[0.5, 2.0, 0.5, 2.0])
    trajs.entropies[:] = torch.tensor([1.0, 3.0, 1.2, 3.4])[:, None]
    steps = descriptives.step_statistics(trajs, 0)
    assert np.isnan(steps[steps["step"] == 0]["increment"]).all()
    assert np.allclose(steps[steps["step"] > 0]["increment"], np.sqrt(2))
    sequences = descriptives.sequence_statistics(trajs, 0)
    assert list(sequences["group"]) == ["generated, T=0.5", "generated, T=2"] * 2
    contrast = descriptives.temperature_contrast(sequences, "entropy")
    assert contrast["t_low"] == 0.5 and contrast["estimate"] == pytest.approx(2.1)
    # Two prompts (2.0 and 2.2): the resampled means span [2.0, 2.2], stretched about the
    # estimate by t(1) / z for so few clusters.
    stretch = scipy.stats.t.ppf(0.975, 1) / scipy.stats.norm.ppf(0.975)
    assert contrast["low"] == pytest.approx(2.1 - 0.1 * stretch)
    assert contrast["high"] == pytest.approx(2.1 + 0.1 * stretch)
    assert contrast["n_clusters"] == 2
    single = descriptives.temperature_contrast(
        sequences[sequences["temperature"] == 0.5], "entropy"
    )
    assert single is None
    steps["layer"] = 0
    scales = descriptives.layer_scales(steps)
    assert scales.loc[0, "median |ΔX|"] == pytest.approx(np.sqrt(2))


def test_human_contrast_resamples_passages_and_prompts():
    rng = np.random.default_rng(0)
    generated = pd.DataFrame(
        {
            "prompt_id": np.repeat([f"p{i}" for i in range(20)], 2),
            "source": "generated",
            "temperature": np.tile([0.7, 1.3], 20),
            "logprob": rng.normal(-1.0, 0.1, 40),
        }
    )
    human = pd.DataFrame(
        {
            "prompt_id": [f"h{i}" for i in range(10)],
            "source": "human",
            "temperature": 1.0,
            "logprob": rng.normal(-3.0, 0.1, 10),
        }
    )
    gap = descriptives.human_contrast(pd.concat([generated, human]), "logprob", seed=0)
    assert gap["temperature"] == 0.7 and gap["n_clusters"] == 30
    assert gap["low"] < -1.8 and gap["high"] < 0 and gap["p_value"] < 0.01
    assert descriptives.human_contrast(generated, "logprob") is None


def test_untempered_logprob_of_human_rows_is_the_recorded_mean():
    trajs = make(torch.zeros(2, 4, 2))
    trajs.rows["source"] = "human"
    trajs.logprobs[:] = torch.tensor([[-1.0, -2.0, -3.0, -4.0], [-1.0, -1.0, -1.0, -1.0]])
    trajs.mask[0, 3] = False
    assert generation.untempered_logprob(None, trajs) == pytest.approx([-2.0, -1.0])


def test_claims_are_enforced_only_with_the_default_parameters():
    defaults = {"n": 3, "temperatures": [0.7, 1.3]}
    # Both claims robust "as expected" in the two runs of the record: asserted.
    record = {
        "runs": {"a": {"seed": 0}, "b": {"seed": 1}},
        "claims": [
            {"chapter": "ch", "name": name, "what": what, "expected": expected, "null": 0.0,
             "verdicts": {"a": "as expected", "b": "as expected"}}
            for name, what, expected in (("holds", "ρ", "greater"), ("fails", "gap", "less"))
        ],
    }  # fmt: skip
    enforced = Claims.for_parameters(
        {"n": 3, "temperatures": (0.7, 1.3)}, defaults, chapter="ch", record=record
    )
    relaxed = Claims.for_parameters(
        {"n": 4, "temperatures": [0.7, 1.3]}, defaults, chapter="ch", record=record
    )
    strong = {"estimate": 0.5, "low": 0.4, "high": 0.6, "p_value": 0.001, "n_clusters": 8}
    for claims in (enforced, relaxed):
        claims.effect("holds", strong, what="ρ", expected="greater", found="as expected")
        claims.effect("fails", strong, what="gap", expected="less", found="as expected")
    assert "not enforced" in relaxed.verify()
    with pytest.raises(ClaimFailedError, match=r"fails: Gap: 0.5 .* — opposite"):
        enforced.verify()
    assert isinstance(enforced.table(), pd.DataFrame) and len(enforced.table()) == 2
    assert enforced.report().data.startswith("- ρ: 0.5 [0.4, 0.6] against 0")
    assert enforced.report(["fails"]).data.startswith("- Gap: 0.5")
    with pytest.raises(KeyError, match="No claims named"):
        enforced.report(["missing"])
