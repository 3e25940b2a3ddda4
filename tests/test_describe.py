"""Descriptive statistics on synthetic trajectories with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from sdelm import ClaimFailedError, Claims, Trajectories, describe


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
    assert describe.increments_against_shuffled(iid, 0)["ratio"].mean() == pytest.approx(
        1, abs=0.03
    )
    assert describe.increments_against_shuffled(walk, 0)["ratio"].mean() < 0.5


def test_explained_variance_finds_a_low_rank_signal_on_held_out_rows():
    g = torch.Generator().manual_seed(1)
    basis = torch.linalg.qr(torch.randn(20, 2, generator=g))[0]  # two directions in 20-D
    states = torch.randn(40, 10, 2, generator=g) * 5 @ basis.T + 0.1 * torch.randn(
        40, 10, 20, generator=g
    )
    trajs = make(states)
    train, test = describe.split_prompts(trajs, 0.5, seed=0)
    assert not (train & test).any() and (train | test).all()
    spectrum = describe.explained_variance(trajs, 0, train, test)
    held_out = spectrum[spectrum["split"] == "held-out"]
    assert held_out["cumulative"].iloc[1] > 0.98
    assert held_out["cumulative"].iloc[-1] == pytest.approx(1.0)


def test_split_prompts_keeps_prompts_together_and_refuses_empty_sets():
    trajs = make(torch.zeros(6, 3, 2), prompt_ids=["a", "a", "b", "b", "c", "c"])
    first, second = describe.split_prompts(trajs, 0.5, seed=0)
    ids = trajs.rows["prompt_id"]
    assert not set(ids[first]) & set(ids[second])
    with pytest.raises(ValueError, match="leaves a set empty"):
        describe.split_prompts(trajs, 0.01)


def test_intervals_cover_known_means():
    rng = np.random.default_rng(0)
    interval = describe.mean_interval(rng.normal(3.0, 1.0, 400))
    assert interval["low"] < 3.0 < interval["high"]
    gap = describe.mean_difference(rng.normal(1.0, 1.0, 300), rng.normal(0.0, 1.0, 300))
    assert gap["low"] < 1.0 < gap["high"] and gap["low"] > 0


def test_step_and_sequence_statistics_and_temperature_contrast():
    states = torch.ones(4, 5, 2).cumsum(dim=1)  # |X_k − X_{k−1}| = sqrt(2)
    trajs = make(states, prompt_ids=["a", "a", "b", "b"], temperatures=[0.5, 2.0, 0.5, 2.0])
    trajs.entropies[:] = torch.tensor([1.0, 3.0, 1.2, 3.4])[:, None]
    steps = describe.step_statistics(trajs, 0)
    assert np.isnan(steps[steps["step"] == 0]["increment"]).all()
    assert np.allclose(steps[steps["step"] > 0]["increment"], np.sqrt(2))
    sequences = describe.sequence_statistics(trajs, 0)
    assert list(sequences["group"]) == ["generated, T=0.5", "generated, T=2"] * 2
    contrast = describe.temperature_contrast(sequences, "entropy")
    assert contrast["t_low"] == 0.5 and contrast["difference"] == pytest.approx(2.1)
    single = describe.temperature_contrast(sequences[sequences["temperature"] == 0.5], "entropy")
    assert single is None


def test_claims_are_enforced_only_with_the_default_parameters():
    defaults = {"n": 3, "temperatures": [0.7, 1.3]}
    enforced = Claims.for_parameters({"n": 3, "temperatures": (0.7, 1.3)}, defaults)
    relaxed = Claims.for_parameters({"n": 4, "temperatures": [0.7, 1.3]}, defaults)
    for claims in (enforced, relaxed):
        claims.check("holds", True, "fine")
        claims.check("fails", False, "the data disagree")
    assert "not enforced" in relaxed.verify()
    with pytest.raises(ClaimFailedError, match="fails: the data disagree"):
        enforced.verify()
    assert isinstance(enforced.table(), pd.DataFrame) and len(enforced.table()) == 2
    assert "- fine" in enforced.report().data
    assert enforced.report(["fails"]).data == "- the data disagree"
    with pytest.raises(KeyError, match="checked"):
        enforced.report(["missing"])


def test_energy_test_tells_shifted_from_equal_samples():
    rng = np.random.default_rng(0)
    same = describe.energy_test(rng.normal(size=(30, 2)), rng.normal(size=(30, 2)))
    shifted = describe.energy_test(rng.normal(size=(30, 2)), rng.normal(size=(30, 2)) + 1)
    assert same["p_value"] > 0.05
    assert shifted["p_value"] < 0.01 and shifted["energy_distance"] > same["energy_distance"]
    with pytest.raises(ValueError, match="n, m >= 2"):
        describe.energy_test(np.zeros((1, 2)), np.zeros((5, 2)))
