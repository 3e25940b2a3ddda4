"""Layer-time effects: λ in both readings, the noise's shape, the last step, the ensembles."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

import sdelm
from sdelm.analysis import layer_time


def layer_set(rate: float, seed: int, n: int = 400) -> sdelm.Trajectories:
    paths = sdelm.synthetic.lines_of_thought_paths(n=n, steps=24, dim=8, rate=rate, seed=seed)
    return sdelm.synthetic.as_trajectories(paths, dt=1.0)


def test_the_layer_time_growth_rate_is_recovered():
    frame = layer_time.residual_frame(layer_set(0.18, seed=0), dim=8, seed=0)
    assert set(frame["layer"]) == set(range(1, 23))
    assert layer_time.growth_rate(frame) == pytest.approx(0.18, abs=0.02)
    assert (frame["normalised"] > 0).all()


def test_growth_effects_resample_pieces_and_compare_a_null_on_the_same_pieces():
    frames = {
        "human": layer_time.residual_frame(layer_set(0.18, seed=0), dim=8, seed=0),
        "untrained": layer_time.residual_frame(layer_set(0.0, seed=1), dim=8, seed=0),
    }
    found = layer_time.growth_effects(frames, compared=("untrained",), seed=0)
    human = found.loc[("human", "variance")]
    # Every one of the 400 pieces held out once (cross-fitted maps).
    assert human["estimate"] == pytest.approx(0.18, abs=0.01) and human["n_clusters"] == 400
    assert human["low"] < human["estimate"] < human["high"] < human["low"] + 0.02
    assert human["estimate"] == pytest.approx(layer_time.growth_rate(frames["human"]))
    null = found.loc[("untrained", "variance")]
    assert abs(null["estimate"]) < 0.01
    difference = found.loc[("human − untrained", "variance")]
    assert difference["low"] > 0.1
    assert set(found.index.get_level_values("reading")) == set(layer_time.COLUMNS)


def test_a_null_on_other_pieces_is_refused():
    frames = {
        "human": layer_time.residual_frame(layer_set(0.18, seed=0), dim=8, seed=0),
        "fewer": layer_time.residual_frame(layer_set(0.0, seed=1, n=200), dim=8, seed=0),
    }
    with pytest.raises(ValueError, match="other pieces"):
        layer_time.growth_effects(frames, compared=("fewer",), seed=0)


# --- Shape of the noise, last layer, ensembles, time axes -----------------------------------


def gaussian_residuals(n: int, n_steps: int, dim: int, scales, seed: int = 0):
    """HeldOutResiduals of Gaussian noise with standard deviation ``scales`` per dimension."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, n_steps - 1, dim, generator=generator, dtype=torch.float64)
    return layer_time.HeldOutResiduals(
        noise * torch.as_tensor(scales, dtype=torch.float64),
        torch.ones(n, n_steps - 1, dtype=torch.bool),
        torch.ones(n, n_steps - 1),
        np.arange(n),
        range(1, n_steps - 2),
    )


def test_isotropic_noise_reads_as_isotropic_and_one_stretched_direction_does_not():
    isotropic = layer_time.anisotropy_effect(gaussian_residuals(51, 30, 16, 1.0), seed=0)
    assert isotropic["low"] < 1 < isotropic["high"]
    assert isotropic["estimate"] == pytest.approx(1, abs=0.03)
    # Variance 4 along one of 16 directions: d·tr(M²)/tr(M)² = 16 · (16 + 15) / 19².
    scales = torch.ones(16)
    scales[0] = 2.0
    stretched = layer_time.anisotropy_effect(gaussian_residuals(51, 30, 16, scales), seed=0)
    assert stretched["low"] > 1.2
    assert stretched["low"] < 16 * 31 / 19**2 < stretched["high"]


def test_pieces_repeated_by_a_resample_do_not_inflate_the_sphericity_index():
    residuals = gaussian_residuals(51, 4, 16, 1.0).residuals.transpose(0, 1)
    estimate = layer_time.sphericity(residuals).mean()
    rng = np.random.default_rng(0)
    resampled = [
        layer_time.sphericity(
            residuals, torch.tensor(np.bincount(rng.integers(51, size=51), minlength=51))
        ).mean()
        for _ in range(200)
    ]
    # The largest covariance eigenvalue over its isotropic edge reads ~30% higher on such
    # resamples than on the data; the index stays put.
    assert float(torch.stack(resampled).mean()) == pytest.approx(float(estimate), abs=0.02)


def test_a_last_step_off_the_law_by_a_known_factor_is_recovered():
    n_steps, rate = 24, 0.15
    law_scale = torch.exp(0.5 * rate * torch.arange(n_steps - 1, dtype=torch.float64))
    on_law = gaussian_residuals(2000, n_steps, 8, 1.0)
    found = layer_time.last_layer_effect(
        dataclasses.replace(on_law, residuals=on_law.residuals * law_scale[:, None]), seed=0
    )
    assert found["low"] < 0 < found["high"]
    shrunk = law_scale.clone()
    shrunk[-1] *= 0.1**0.5  # the last variance 10 times below the law
    found = layer_time.last_layer_effect(
        dataclasses.replace(on_law, residuals=on_law.residuals * shrunk[:, None]), seed=0
    )
    assert found["estimate"] == pytest.approx(np.log(0.1), abs=0.1)
    assert found["low"] < np.log(0.1) < found["high"] < 0


def test_held_out_residuals_follow_the_law_up_to_the_last_step_of_a_lines_of_thought_set():
    pieces = layer_set(0.18, seed=0)
    held = layer_time.held_out_residuals(pieces, dim=8, seed=0, folds=4)
    # Cross-fitted: every piece held out once, by one of the four folds.
    assert held.residuals.shape == (pieces.n_sequences, 24, 8) and held.law == range(1, 23)
    assert sorted(held.prompt_ids) == sorted(pieces.rows["prompt_id"])
    assert sorted(set(held.folds)) == [0, 1, 2, 3]
    assert held.same_fold().sum() == sum(np.bincount(held.folds) ** 2)
    found = layer_time.last_layer_effect(held, seed=0)
    assert found["low"] < 0 < found["high"]


def test_sphericity_pairs_only_pieces_of_one_fold():
    # Two folds whose coordinates differ by a rotation that swaps the two directions: each is
    # stretched along its own first axis, so pooling their residuals would read isotropy.
    held = gaussian_residuals(120, 6, 2, torch.tensor([3.0, 1.0]))
    swapped = held.residuals.clone()
    swapped[60:] = swapped[60:].flip(-1)
    folds = np.repeat([0, 1], 60)
    within = layer_time.anisotropy_effect(
        dataclasses.replace(held, residuals=swapped, folds=folds), seed=0
    )
    pooled = layer_time.anisotropy_effect(dataclasses.replace(held, residuals=swapped), seed=0)
    # d·tr(M²)/tr(M)² = 2 · (81 + 1) / 10² = 1.64 within a fold; 1 for the pooled mixture.
    assert within["estimate"] == pytest.approx(1.64, abs=0.15)
    assert pooled["estimate"] == pytest.approx(1.0, abs=0.1)


def test_the_closer_ensemble_has_a_negative_log_ratio_and_identical_ones_zero():
    generator = torch.Generator().manual_seed(0)
    real = torch.randn(30, 6, 4, generator=generator)
    close = torch.randn(30 * 8, 6, 4, generator=generator)
    far = torch.randn(30 * 8, 6, 4, generator=generator) + 1.5
    ids = np.arange(30)
    found = layer_time.ensemble_effect(real, close, far, ids, seed=0)
    assert found["high"] < 0 and found["n_clusters"] == 30
    same = layer_time.ensemble_effect(real, close, close.clone(), ids, seed=0)
    assert same["estimate"] == pytest.approx(0) and same["low"] == pytest.approx(0)


def cv_table(gains: np.ndarray, prompts: np.ndarray) -> pd.DataFrame:
    """A cross-validation table whose neural SDE gains ``gains`` per prompt."""
    walk = pd.DataFrame({"model": "random walk", "prompt_id": prompts, "nll": 2.0})
    neural = walk.assign(model="neural SDE", nll=2.0 - gains)
    return pd.concat([walk, neural], ignore_index=True)


def test_gain_differences_are_paired_on_shared_prompts_and_unpaired_otherwise():
    rng = np.random.default_rng(0)
    prompts = np.arange(40)
    layer_gains = 1.0 + rng.normal(0, 0.2, 40)
    token = cv_table(layer_gains - 0.5 + rng.normal(0, 0.02, 40), prompts)
    paired = layer_time.gain_difference(cv_table(layer_gains, prompts), token, seed=0)
    assert paired["n_clusters"] == 40
    assert paired["low"] < 0.5 < paired["high"] and paired["high"] - paired["low"] < 0.03
    other = cv_table(0.5 + rng.normal(0, 0.2, 40), prompts + 100)
    unpaired = layer_time.gain_difference(cv_table(layer_gains, prompts), other, seed=0)
    assert unpaired["n_clusters"] == 80
    assert unpaired["low"] < 0.5 < unpaired["high"] and unpaired["low"] > 0.3
