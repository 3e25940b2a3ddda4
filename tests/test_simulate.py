"""Simulation: reproducibility, shapes, solvers, the OU moments, bad input."""

from __future__ import annotations

import pytest
import torch

import sdelm
from sdelm.simulate import METHODS
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
