"""Correlated noise: the full-covariance VAR(1) against statsmodels and the exact Gaussian
likelihood, the correlated neural SDE's fit and simulation, and what they refuse."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal
from statsmodels.tsa.api import VAR

import sdelm
from sdelm.data import Transitions
from sdelm.fit import loss_terms
from sdelm.models.linear import OrnsteinUhlenbeck, VectorAutoregression
from sdelm.noise import NoiseCorrelation

#: A VAR(1) x_{k+1} = M x_k + c + L ξ_k whose noise correlates its coordinates.
MAP = np.array([[0.8, 0.1, 0.0], [0.0, 0.5, 0.2], [0.0, 0.0, 0.3]])
OFFSET = np.array([0.1, -0.2, 0.0])
FACTOR = np.array([[0.5, 0.0, 0.0], [0.4, 0.3, 0.0], [-0.3, 0.2, 0.4]])


def correlated_series(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.zeros((n + 1, 3))
    for k in range(n):
        x[k + 1] = MAP @ x[k] + OFFSET + FACTOR @ rng.standard_normal(3)
    return x


def transitions(x: np.ndarray) -> Transitions:
    states = torch.tensor(x[:-1], dtype=torch.float32)
    steps = torch.tensor(np.diff(x, axis=0), dtype=torch.float32)
    return Transitions(states, torch.zeros(len(states)), steps, 1.0)


def test_the_full_covariance_var_is_statsmodels_var_and_its_nll_is_exact():
    x = correlated_series(2000)
    model = VectorAutoregression(3).fit_least_squares(transitions(x))
    reference = VAR(x).fit(1, trend="c")
    step_map = np.eye(3) + model.matrix.detach().double().numpy()
    assert np.abs(step_map - reference.coefs[0]).max() < 1e-5
    assert np.abs(model.bias.detach().numpy() - reference.intercept).max() < 1e-5
    covariance = model.covariance().detach().double().numpy()
    assert np.abs(covariance - reference.sigma_u_mle).max() < 1e-5
    residuals = np.diff(x, axis=0) - (x[:-1] @ (step_map - np.eye(3)).T + reference.intercept)
    exact = -multivariate_normal(np.zeros(3), reference.sigma_u_mle).logpdf(residuals).mean()
    assert sdelm.nll(model, transitions(x)) == pytest.approx(exact / 3, abs=1e-5)
    # Diagonal noise ignores the correlation and pays for it.
    diagonal = OrnsteinUhlenbeck(3).fit_least_squares(transitions(x))
    assert sdelm.nll(diagonal, transitions(x)) > sdelm.nll(model, transitions(x)) + 0.05


def test_the_noise_factor_reproduces_any_covariance():
    correlation = NoiseCorrelation(3)
    covariance = torch.tensor(FACTOR @ FACTOR.T)
    scale = correlation.set_covariance(covariance).unsqueeze(0)
    factor = correlation.factor(scale)[0].double()
    assert torch.allclose(factor @ factor.T, covariance, atol=1e-6)
    assert torch.allclose(correlation.marginal(scale)[0].double() ** 2, covariance.diagonal())
    residual = torch.randn(5, 3)
    white = correlation.whiten(residual, scale.expand(5, 3))
    assert torch.allclose(white @ factor.float().T, residual, atol=1e-5)


def test_a_simulated_step_has_the_fitted_covariance():
    model = VectorAutoregression(3).fit_least_squares(transitions(correlated_series(2000)))
    paths = sdelm.simulate(model, torch.zeros(3), 1, n_paths=40_000, seed=1)
    mean = model.drift(torch.zeros(1, 3), torch.zeros(1)).detach()
    steps = (paths[:, 1] - paths[:, 0] - mean).double()
    assert torch.allclose(steps.T.cov(), model.covariance().detach().double(), atol=0.01)


def test_gradient_fits_through_the_correlation_reach_the_closed_form():
    x = correlated_series(2000)
    trajs = sdelm.synthetic.as_trajectories(
        torch.tensor(x[:2000], dtype=torch.float32).reshape(40, 50, 3), dt=1.0, per_prompt=2
    )
    data = sdelm.prepare(trajs, dim=None, standardise=False, seed=0)
    closed = VectorAutoregression(3).fit_least_squares(data.train)
    fitted = sdelm.fit(
        VectorAutoregression(3), data, lr=2e-2, epochs=300, patience=300, progress=False
    ).model
    assert sdelm.nll(fitted, data.test) == pytest.approx(sdelm.nll(closed, data.test), abs=5e-3)
    learnt = fitted.covariance().detach()
    assert torch.allclose(correlation_of(learnt), correlation_of(FACTOR @ FACTOR.T), atol=0.1)
    # The neural SDE with correlated noise learns what the diagonal one cannot.
    neural = {
        correlated: sdelm.fit(
            sdelm.NeuralSDE(3, hidden=16, time_scale=0, correlated=correlated),
            data,
            epochs=20,
            batch_size=256,
            lr=3e-3,
            progress=False,
        ).model
        for correlated in (False, True)
    }
    assert sdelm.nll(neural[False], data.test) > sdelm.nll(neural[True], data.test) + 0.1


def correlation_of(covariance) -> torch.Tensor:
    covariance = torch.as_tensor(covariance, dtype=torch.float32)
    scale = covariance.diagonal().sqrt()
    return covariance / scale[:, None] / scale


def test_the_paper_loss_and_a_singular_covariance_are_refused():
    x = correlated_series(200)
    with pytest.raises(ValueError, match="diagonal noise"):
        loss_terms(sdelm.NeuralSDE(3, hidden=8, correlated=True), transitions(x), loss="paper")
    flat = np.repeat(x[:, :1], 3, axis=1)  # three copies of one coordinate
    with pytest.raises(ValueError, match="singular"):
        VectorAutoregression(3).fit_least_squares(transitions(flat))
