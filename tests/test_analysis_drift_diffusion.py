"""Drift and diffusion analyses and Kramers–Moyal estimates on processes with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import sdelm
from sdelm.analysis import drift_diffusion, kramers_moyal
from sdelm.synthetic import OU_MATRIX, OU_SIGMA, as_trajectories, ou_model, ou_paths


@pytest.fixture(scope="module")
def ou_split():
    trajs = as_trajectories(ou_paths(n=600, steps=40, dt=0.1), dt=0.1, per_prompt=3)
    return sdelm.prepare(trajs, dim=None, standardise=False, seed=0)


def test_field_along_steps_for_a_known_ou(ou_split):
    field = drift_diffusion.field_along_steps(ou_model(), ou_split.test)
    assert len(field) == int(ou_split.test.mask.sum())
    assert np.allclose(field["diffusion_trace"], float((OU_SIGMA**2).sum()), rtol=1e-5)
    x = ou_split.test.states[ou_split.test.mask]
    expected = (x @ OU_MATRIX.T).norm(dim=1)
    assert np.allclose(field["drift_norm"], expected.numpy(), rtol=1e-4, atol=1e-6)
    assert np.allclose(
        field["determinism"],
        (expected**2 * 0.1 / (OU_SIGMA**2).sum()).numpy(),
        rtol=1e-4,
        atol=1e-7,
    )
    assert field.groupby("sequence")["increment_sq"].apply(lambda s: s.isna().sum()).eq(1).all()


def synthetic_field(effect: float, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for prompt in range(30):
        offset = rng.normal(0, 0.2)
        for temperature in (0.5, 1.0, 1.5):
            for _ in range(2):
                level = np.exp(effect * temperature + offset + rng.normal(0, 0.1))
                rows += [
                    {
                        "sequence": len(rows) // 10,
                        "prompt_id": f"p{prompt}",
                        "temperature": temperature,
                        "diffusion_trace": level,
                        "entropy": level + rng.normal(0, 0.01),
                    }
                    for _ in range(10)
                ]
    frame = pd.DataFrame(rows)
    frame["sequence"] = np.repeat(np.arange(len(frame) // 10), 10)
    return frame


def test_temperature_slope_recovers_a_known_effect_and_a_null():
    slope = drift_diffusion.temperature_slope(synthetic_field(0.5), "diffusion_trace")
    assert slope["low"] < 0.5 < slope["high"] and slope["low"] > 0.3
    null = drift_diffusion.temperature_slope(synthetic_field(0.0, seed=1), "diffusion_trace")
    assert null["low"] < 0 < null["high"]
    assert slope["n_prompts"] == 30 and slope["n_sequences"] == 180
    with pytest.raises(ValueError, match="two or more temperatures"):
        one = synthetic_field(0.5)
        drift_diffusion.temperature_slope(one[one["temperature"] == 0.5], "diffusion_trace")


def test_cluster_spearman_of_dependent_and_independent_columns():
    frame = synthetic_field(0.5)
    strong = drift_diffusion.cluster_spearman(frame, "diffusion_trace", "entropy", n_boot=200)
    assert strong["rho"] > 0.9 and strong["low"] > 0.8
    frame["noise"] = np.random.default_rng(3).normal(size=len(frame))
    null = drift_diffusion.cluster_spearman(frame, "diffusion_trace", "noise", n_boot=200)
    assert null["low"] < 0 < null["high"]


def test_kramers_moyal_recovers_ou_drift_and_noise(ou_split):
    km = kramers_moyal.binned_moments(ou_split.train, bins=5, min_count=200)
    centres = torch.tensor(km[["x0", "x1"]].to_numpy(), dtype=torch.float32)
    # Drift of coordinates 0 and 1 depends on them only (the OU matrix is block diagonal).
    expected = centres @ OU_MATRIX[:2, :2].T
    assert np.allclose(km["drift0"], expected[:, 0].numpy(), atol=0.25)
    assert np.allclose(km["diffusion0"], float(OU_SIGMA[0]), rtol=0.1)
    assert np.allclose(km["diffusion1"], float(OU_SIGMA[1]), rtol=0.1)
    both = kramers_moyal.compare_with_model(ou_model(), ou_split.train, bins=5, min_count=200)
    assert np.corrcoef(both["drift0"], both["model_drift0"])[0, 1] > 0.95
    assert np.allclose(both["model_diffusion1"], float(OU_SIGMA[1]), rtol=1e-4)
    with pytest.raises(ValueError, match="fewer than min_count"):
        kramers_moyal.binned_moments(ou_split.test, min_count=10**6)
