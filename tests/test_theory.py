"""Theory checks on models with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.linalg import expm, solve_continuous_lyapunov

import sdelm
from sdelm.synthetic import OU_MATRIX, OU_SIGMA, as_trajectories, ou_model


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


def test_discrete_generator_adds_the_squared_drift_of_the_chain():
    x = torch.randn(50, 3, generator=torch.Generator().manual_seed(1))
    drift = x @ OU_MATRIX.T
    for dt in (1.0, 0.25):
        expected = (
            2 * (x * drift).sum(1) * dt + drift.pow(2).sum(1) * dt**2 + (OU_SIGMA**2).sum() * dt
        )
        values = sdelm.theory.discrete_generator(ou_model(), x, torch.zeros(50), dt=dt)
        assert np.allclose(values, expected.numpy(), atol=1e-5)
        continuous = sdelm.theory.generator(ou_model(), x, torch.zeros(50))
        assert (values >= continuous * dt - 1e-6).all()


def test_discrete_generator_is_the_chains_expected_one_step_change():
    model = sdelm.NeuralSDE(2, hidden=16, seed=3)
    start = torch.tensor([1.5, -0.5])
    paths = sdelm.simulate(model, start, 1, n_paths=200000, seed=2)
    observed = float((paths[:, 1].pow(2).sum(1) - start.pow(2).sum()).mean())
    (predicted,) = sdelm.theory.discrete_generator(model, start[None], torch.zeros(1))
    (continuous,) = sdelm.theory.generator(model, start[None], torch.zeros(1))
    assert observed == pytest.approx(float(predicted), abs=0.02)
    assert abs(observed - continuous) > 10 * abs(observed - predicted)
    with pytest.raises(ValueError, match="dt must be > 0"):
        sdelm.theory.discrete_generator(model, start[None], torch.zeros(1), dt=0.0)


def test_ou_transition_is_the_exact_map_of_a_continuous_ou():
    step, noise = sdelm.theory.ou_transition(torch.tensor([[-0.7]]), torch.tensor([0.4]), 2.0)
    assert float(step) == pytest.approx(np.exp(-1.4))
    assert float(noise) == pytest.approx(0.16 * (1 - np.exp(-2.8)) / 1.4)
    step, noise = sdelm.theory.ou_transition(OU_MATRIX, OU_SIGMA, 1.0)
    assert np.allclose(step.numpy(), expm(OU_MATRIX.double().numpy()))
    stationary = solve_continuous_lyapunov(
        OU_MATRIX.double().numpy(), -np.diag(OU_SIGMA.double().numpy() ** 2)
    )
    assert np.allclose(noise.numpy(), stationary - step.numpy() @ stationary @ step.numpy().T)
    with pytest.raises(ValueError, match="sigma"):
        sdelm.theory.ou_transition(OU_MATRIX, torch.ones(2), 1.0)
    with pytest.raises(ValueError, match="dt must be > 0"):
        sdelm.theory.ou_transition(OU_MATRIX, OU_SIGMA, -1.0)


def test_a_unit_step_likelihood_identifies_the_map_not_the_drift_matrix():
    step, noise = sdelm.theory.ou_transition(OU_MATRIX, OU_SIGMA, 1.0)
    generator = torch.Generator().manual_seed(0)
    root = torch.linalg.cholesky(noise).float()
    states = [torch.randn(400, 3, generator=generator)]
    for _ in range(60):
        kick = torch.randn(400, 3, generator=generator) @ root.T
        states.append(states[-1] @ step.float().T + kick)
    paths = torch.stack(states, dim=1)
    trajs = as_trajectories(paths, dt=1.0)
    split = sdelm.SDEData(paths, trajs.mask, 1.0, trajs.rows)
    fitted = sdelm.models.linear.OrnsteinUhlenbeck(3).fit_least_squares(split)
    a_hat = fitted.matrix.detach().double()
    assert torch.allclose(a_hat, step - torch.eye(3, dtype=torch.float64), atol=0.02)
    assert (a_hat - OU_MATRIX.double()).abs().max() > 0.3  # not A: e^A ≠ I + A
    reading = sdelm.theory.real_logarithm(torch.eye(3) + a_hat)
    assert reading.exists
    assert np.allclose(reading.generator, OU_MATRIX.numpy(), atol=0.05)


def test_real_logarithm_of_maps_with_and_without_a_continuous_reading():
    reading = sdelm.theory.real_logarithm(torch.from_numpy(expm(0.5 * OU_MATRIX.numpy())), dt=0.5)
    assert reading.exists and reading.obstructions.size == 0
    assert np.allclose(reading.generator, OU_MATRIX.numpy(), atol=1e-6)
    # A drift eigenvalue of −1.5 at Δt = 1: I + A has the eigenvalue −0.5, no real logarithm.
    map_ = torch.eye(3) + torch.diag(torch.tensor([-1.5, -0.2, -1.0]))
    reading = sdelm.theory.real_logarithm(map_)
    assert not reading.exists and reading.generator is None
    assert np.allclose(np.sort(reading.obstructions.real), [-0.5, 0.0])
    assert reading.distance == 0.0 and reading.eigenvalues[0].real <= 0
    # A rotation by nearly half a turn per step: a real logarithm, close to the obstruction.
    angle = np.pi - 0.05
    turn = 0.9 * torch.tensor([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    reading = sdelm.theory.real_logarithm(turn)
    assert reading.exists and reading.distance == pytest.approx(0.9 * np.sin(0.05))
    assert np.allclose(expm(reading.generator), turn.numpy(), atol=1e-6)


def test_real_logarithm_rejects_bad_maps():
    with pytest.raises(ValueError, match="square matrix"):
        sdelm.theory.real_logarithm(torch.ones(2, 3))
    with pytest.raises(ValueError, match="finite square matrix"):
        sdelm.theory.real_logarithm(torch.tensor([[float("nan")]]))
    with pytest.raises(ValueError, match="dt must be > 0"):
        sdelm.theory.real_logarithm(torch.eye(2), dt=0.0)
