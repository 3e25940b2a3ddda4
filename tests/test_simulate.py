"""Simulation: reproducibility, shapes, solvers, the OU moments, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

import sdelm
from sdelm.simulate import METHODS, convergence, energy_distance
from sdelm.synthetic import ou_model


@pytest.mark.parametrize("method", METHODS)
def test_same_seed_same_paths(method):
    model = sdelm.NeuralSDE(3, hidden=8)
    x0 = torch.randn(2, 3)
    first = sdelm.simulate(model, x0, 10, n_paths=4, method=method, seed=5)
    assert first.shape == (8, 11, 3)
    assert torch.equal(first[:4, 0], x0[0].expand(4, 3))
    assert torch.equal(first, sdelm.simulate(model, x0, 10, n_paths=4, method=method, seed=5))
    assert not torch.equal(first, sdelm.simulate(model, x0, 10, n_paths=4, method=method, seed=6))


def test_euler_paths_follow_the_exact_ou_moments():
    model, dt, steps = ou_model(), 0.1, 30
    paths = sdelm.simulate(model, torch.ones(3), steps, n_paths=20000, dt=dt, seed=0)
    mean, cov = sdelm.theory.ou_moments(model, torch.ones(3), torch.zeros(3, 3), steps, dt)
    assert torch.allclose(paths.mean(0), mean, atol=0.02)
    trace = cov.diagonal(dim1=-2, dim2=-1).sum(-1)[1:]
    assert torch.allclose(paths.var(0).sum(-1)[1:], trace, rtol=0.05)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_paths": 0}, "n_paths must be a positive integer"),
        ({"steps": 0}, "steps must be a positive integer"),
        ({"method": "heun"}, "Unknown method"),
        ({"dt": 0.0}, "dt must be > 0"),
    ],
)
def test_bad_simulation_input(kwargs, message):
    arguments = {"steps": 5, "n_paths": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        sdelm.simulate(ou_model(), torch.zeros(3), **arguments)


def test_starting_states_of_the_wrong_dimension():
    with pytest.raises(ValueError, match="models 3-dimensional states"):
        sdelm.simulate(ou_model(), torch.zeros(4), 5)


class GeometricBrownian(sdelm.SDEModel):
    """dX = a X dt + b X dW: multiplicative noise, where Euler–Maruyama has strong order 1/2."""

    def drift(self, x, t):
        return 0.5 * x

    def diffusion(self, x, t):
        return 0.8 * x


def strong_order(table) -> float:
    return float(np.polyfit(np.log(table["dt"]), np.log(table["strong_error"]), 1)[0])


def test_strong_orders_of_euler_and_milstein_match_theory():
    model = GeometricBrownian(1)
    euler = convergence(
        model,
        torch.ones(1),
        horizon=1.0,
        substeps=(4, 8, 16, 32),
        reference_substeps=512,
        n_paths=4000,
    )
    milstein = convergence(
        model,
        torch.ones(1),
        horizon=1.0,
        substeps=(4, 8, 16, 32),
        reference_substeps=512,
        n_paths=4000,
        method="milstein",
    )
    assert strong_order(euler) == pytest.approx(0.5, abs=0.15)
    assert strong_order(milstein) == pytest.approx(1.0, abs=0.15)
    additive = convergence(ou_model(), torch.ones(3), horizon=1.0, n_paths=2000)
    assert strong_order(additive) == pytest.approx(1.0, abs=0.25)  # additive noise: order 1
    with pytest.raises(ValueError, match="horizon must be > 0"):
        convergence(model, torch.ones(1), horizon=0.0)


def test_energy_distance_is_zero_for_one_distribution_and_matches_scipy_in_1d():
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(400, 2, generator=generator), torch.randn(400, 2, generator=generator)
    assert energy_distance(x, y) < 0.05  # the V-statistic is biased up by O(1/n)
    assert energy_distance(x, y + 1.0) > 0.5
    u, v = x[:, :1], y[:, :1] + 0.3
    expected = stats.energy_distance(u[:, 0].numpy(), v[:, 0].numpy()) ** 2
    assert energy_distance(u, v) == pytest.approx(expected, rel=1e-6)
