"""The cross-model findings measure what they say, on processes with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import sdelm
from sdelm.analysis import findings
from sdelm.fit import sequence_nll
from sdelm.stats import cluster_bootstrap


@pytest.fixture(autouse=True)
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SDELM_CACHE", str(tmp_path / "cache"))


def ou_data(n: int = 60, steps: int = 30, per_prompt: int = 2) -> sdelm.Trajectories:
    paths = sdelm.synthetic.ou_paths(n=n, steps=steps, dt=0.1, seed=0)
    return sdelm.synthetic.as_trajectories(paths, dt=0.1, per_prompt=per_prompt)


def split(states: torch.Tensor, entropies: torch.Tensor | None = None) -> sdelm.SDEData:
    n = states.shape[0]
    rows = pd.DataFrame({"prompt_id": [f"p{i}" for i in range(n)], "temperature": 1.0})
    mask = torch.ones(states.shape[:2], dtype=torch.bool)
    return sdelm.SDEData(states, mask, 1.0, rows, entropies=entropies)


def test_sequence_nll_averages_to_the_nll():
    data = sdelm.prepare(ou_data(), dim=None, standardise=False, seed=0)
    model = sdelm.synthetic.ou_model()
    per_sequence = sequence_nll(model, data.test)
    assert per_sequence.shape == (len(data.test),)
    assert float(per_sequence.mean()) == pytest.approx(sdelm.nll(model, data.test), rel=1e-5)


def test_cross_validation_scores_every_sequence_once_without_its_prompt():
    trajs = ou_data(n=24, steps=12)
    table = findings.held_out_scores(trajs, dim=3, n_folds=4, n_paths=4, seed=0)
    assert sorted(table["prompt_id"]) == sorted(trajs.rows["prompt_id"])
    assert table.groupby("prompt_id")["fold"].nunique().eq(1).all()
    assert table["fold"].nunique() == 4
    assert np.allclose(table["nll_difference"], table["nll_neural"] - table["nll_ou"])
    for score in ("nll", "energy"):
        for model in ("neural", "correlated", "ou", "var"):
            assert np.isfinite(table[f"{score}_{model}"]).all()
    # The process's noise is diagonal, but not in principal components: there a full
    # covariance fits held-out prompts better.
    assert (table["nll_var"] - table["nll_ou"]).mean() < -0.02
    with pytest.raises(ValueError, match="n_folds"):
        findings.held_out_scores(trajs, dim=3, n_folds=1)
    twice = findings.held_out_scores(trajs, dim=3, n_folds=4, n_paths=4, fits=2, seed=0)
    for score in ("nll", "energy"):
        each = twice[[f"{score}_neural_0", f"{score}_neural_1"]]
        assert np.allclose(twice[f"{score}_neural"], each.mean(axis=1), atol=1e-6)
        # The first fit is the one-fit table's (same seed, same cached fit).
        assert np.allclose(twice[f"{score}_neural_0"], table[f"{score}_neural"], atol=1e-6)
    with pytest.raises(ValueError, match="fits"):
        findings.held_out_scores(trajs, dim=3, n_folds=4, fits=0)


def test_a_fit_drawn_interval_holds_the_randomness_of_fitting():
    rows = pd.DataFrame({"prompt_id": np.arange(40), "fold": np.arange(40) % 4, "energy_var": 1.0})
    differ = rows.assign(energy_neural_0=0.0, energy_neural_1=1.0, energy_neural=0.5)
    measured = cluster_bootstrap(differ, findings.fit_drawn(differ, "energy", "var"))
    assert measured["estimate"] == pytest.approx(-0.5)
    assert measured["low"] < -0.9 and measured["high"] > -0.1  # which fit each fold got
    agree = rows.assign(energy_neural_0=0.3, energy_neural_1=0.3, energy_neural=0.3)
    measured = cluster_bootstrap(agree, findings.fit_drawn(agree, "energy", "var"))
    assert measured["low"] == pytest.approx(-0.7) and measured["high"] == pytest.approx(-0.7)


def test_a_step_is_paired_with_the_entropy_of_the_token_it_reads():
    states = torch.arange(8, dtype=torch.float32).view(2, 4, 1) ** 2
    entropies = torch.tensor([[0.0, 1.0, 2.0, 3.0], [10.0, 11.0, 12.0, 13.0]])
    frame = findings.step_frame(split(states, entropies))
    first = frame.iloc[0]
    assert (first["step"], first["increment_sq"], first["next_entropy"]) == (0, 1.0, 1.0)
    assert frame["next_entropy"].tolist() == [1.0, 2.0, 3.0, 11.0, 12.0, 13.0]
    with pytest.raises(ValueError, match="entropies"):
        findings.step_frame(split(states))


def test_the_msd_exponent_is_one_for_a_random_walk_and_zero_for_white_noise():
    noise = torch.randn(200, 40, 3, generator=torch.Generator().manual_seed(0))
    walk = findings._msd_exponent(findings.displacement_frame(split(noise.cumsum(1))))
    white = findings._msd_exponent(findings.displacement_frame(split(noise)))
    assert walk == pytest.approx(1.0, abs=0.05)
    assert abs(white) < 0.05


def test_the_map_radius_is_that_of_the_simulated_var1_map():
    data = sdelm.prepare(ou_data(n=400, steps=50), dim=None, standardise=False, seed=0)
    everything = sdelm.SDEData.concat([data.train, data.val, data.test])
    frame = findings.map_radius_frame(everything)
    estimate = findings._map_radius(everything)(frame)
    true_map = torch.eye(3) + sdelm.synthetic.OU_MATRIX * 0.1
    assert estimate == pytest.approx(float(torch.linalg.eigvals(true_map).abs().max()), abs=0.01)
