"""The Lines-of-Thought model recovers a known noise law and tells its null apart."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import sdelm
from sdelm.models.lines_of_thought import LayerLinear, residual_diagnostics
from sdelm.synthetic import as_trajectories, lines_of_thought_paths


def split_of(paths: torch.Tensor) -> sdelm.SDEData:
    trajs = as_trajectories(paths, dt=1.0)
    return sdelm.SDEData(paths, trajs.mask, 1.0, trajs.rows)


@pytest.fixture(scope="module")
def known():
    return split_of(lines_of_thought_paths(n=600, steps=24, dim=8, alpha=0.64, rate=0.18))


def test_recovers_alpha_and_rate(known):
    model = LayerLinear(8, 25).fit_least_squares(known, ridge=0.0)
    assert model.law["rate"] == pytest.approx(0.18, abs=0.01)
    assert model.law["alpha"] == pytest.approx(0.64, rel=0.15)
    assert model.law["rate_low"] < 0.18 < model.law["rate_high"]
    assert model.law["r_squared"] > 0.95
    assert model.alpha == pytest.approx(model.law["alpha"])


def test_constant_noise_gives_no_growth():
    flat = split_of(lines_of_thought_paths(n=600, steps=24, dim=8, rate=0.0, seed=3))
    law = LayerLinear(8, 25).fit_least_squares(flat).law
    assert law["rate_low"] < 0 < law["rate_high"] and abs(law["rate"]) < 0.01


def test_residuals_of_the_true_law_are_gaussian_isotropic_and_calibrated(known):
    model = LayerLinear(8, 25).fit_least_squares(known)
    table = residual_diagnostics(model, known)
    assert len(table) == 24 and (table["transitions"] == 600).all()
    assert table["excess_kurtosis"].abs().max() < 0.5
    assert (table["mean_ratio"] < 0.1).all()
    assert (table["anisotropy"] < 1.2 * table["anisotropy_isotropic"]).all()
    assert np.allclose(np.log(table["variance"]), np.log(table["predicted"]), atol=0.25)


def test_drift_reproduces_each_map_and_simulation_follows_the_law(known):
    model = LayerLinear(8, 25).fit_least_squares(known)
    x = known.states[:5, 3]
    expected = x @ model.maps[3].detach().T + model.biases[3].detach()
    assert torch.allclose(x + model.drift(x, torch.full((5,), 3.0)), expected, atol=1e-5)
    paths = sdelm.simulate(model, known.states[:, 0], 24, seed=0)
    simulated = residual_diagnostics(model, split_of(paths))
    assert np.allclose(np.log(simulated["variance"]), np.log(simulated["predicted"]), atol=0.25)


def test_law_steps_leave_out_a_step():
    paths = lines_of_thought_paths(n=400, steps=12, dim=4, rate=0.1)
    paths[:, -1] = paths[:, -2] + 5 * torch.randn_like(paths[:, -2])  # an anomalous last layer
    model = LayerLinear(4, 13).fit_least_squares(split_of(paths), law_steps=range(11))
    assert model.law["rate"] == pytest.approx(0.1, abs=0.03)
    assert model.step_variance[-1] > 10 * model.alpha * np.exp(model.law["rate"] * 11)


def test_layer_linear_is_a_checkpointable_model(known, tmp_path):
    model = LayerLinear(8, 25).fit_least_squares(known)
    path = sdelm.save_checkpoint(model, tmp_path / "lot.safetensors")
    again = sdelm.load_checkpoint(path)
    assert sdelm.nll(again, known) == pytest.approx(sdelm.nll(model, known))


def test_bad_inputs_get_clear_errors(known):
    with pytest.raises(ValueError, match="n_steps"):
        LayerLinear(8, 1)
    with pytest.raises(ValueError, match="n_steps=25"):
        LayerLinear(8, 10).fit_least_squares(known)
    few = split_of(lines_of_thought_paths(n=6, steps=4, dim=8))
    with pytest.raises(ValueError, match="dim \\+ 2"):
        LayerLinear(8, 5).fit_least_squares(few)
