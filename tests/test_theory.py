"""Theory checks on models with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import sdelm
from sdelm.synthetic import OU_MATRIX, OU_SIGMA, ou_model


def test_empirical_lipschitz_of_a_linear_drift_is_its_spectral_norm():
    x = torch.randn(500, 3, generator=torch.Generator().manual_seed(0))
    observed = sdelm.theory.empirical_lipschitz(ou_model(), x, torch.zeros(500), n_pairs=20000)
    norm = torch.linalg.matrix_norm(OU_MATRIX, ord=2).item()
    assert observed <= norm + 1e-5
    assert observed > 0.95 * norm


def test_the_spectral_bound_is_never_beaten():
    for seed in range(3):
        model = sdelm.NeuralSDE(4, hidden=32, seed=seed)
        x = 3 * torch.randn(300, 4, generator=torch.Generator().manual_seed(seed))
        assert sdelm.theory.empirical_lipschitz(model, x, torch.zeros(300)) <= (
            model.lipschitz_bound()
        )


def test_generator_of_the_squared_norm_for_ou():
    x = torch.randn(50, 3)
    expected = 2 * (x * (x @ OU_MATRIX.T)).sum(1) + (OU_SIGMA**2).sum()
    values = sdelm.theory.generator(ou_model(), x, torch.zeros(50))
    assert np.allclose(values, expected.numpy(), atol=1e-5)


def test_moment_balance_holds_on_simulated_paths():
    model = sdelm.NeuralSDE(2, hidden=16, seed=3)
    paths = sdelm.simulate(model, torch.zeros(2), 20, n_paths=20000, seed=1)
    balance = sdelm.theory.moment_balance(model, paths)
    assert balance["mean_gap"].max() < 0.05
    scale = balance["trace_mc"].abs().max()
    assert ((balance["trace_mc"] - balance["trace_predicted"]).abs() < 0.05 * scale).all()


def test_ou_moments_start_where_asked():
    mean, cov = sdelm.theory.ou_moments(ou_model(), torch.ones(3), torch.eye(3), 4, 0.1)
    assert mean.shape == (5, 3) and cov.shape == (5, 3, 3)
    assert torch.equal(mean[0], torch.ones(3)) and torch.equal(cov[0], torch.eye(3))
    assert pytest.approx(float(cov[1, 2, 2])) == 0.9**2 + 0.64 * 0.1
