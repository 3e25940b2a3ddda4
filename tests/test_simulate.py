"""Simulation: reproducibility, shapes, solvers, the OU moments, bad input."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torchsde

import sdelm
from sdelm.simulate import (
    METHODS,
    _SeededIncrements,
    _solver_times,
    convergence,
    one_token_errors,
)
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


@pytest.mark.parametrize(
    ("method", "n_paths", "total", "squares"),
    [
        ("euler", 1, 17.66040602326393, 17.49211690888356),
        ("euler", 64, 983.3818424101919, 1129.0690465343428),
        ("euler", 256, 4209.707668679766, 4579.744079893193),
        ("milstein", 64, 1023.48168959748, 1171.7481611616583),
        ("srk", 64, 1071.7356832884252, 1170.2601987603152),
    ],
)
def test_seeded_paths_are_pinned_at_every_ensemble_size(method, n_paths, total, squares):
    # The book's chapters quote numbers computed from seeded paths: a change of the increments'
    # stream or of the solver's times moves these sums by far more than the tolerance, which
    # only allows for a different BLAS rounding the OU drift's matrix product differently.
    paths = sdelm.simulate(
        ou_model(), torch.ones(3), 12, n_paths=n_paths, dt=0.25, substeps=2, seed=3, method=method
    ).double()
    assert paths.shape == (n_paths, 13, 3)
    assert paths.sum().item() == pytest.approx(total, rel=1e-6)
    assert paths.square().sum().item() == pytest.approx(squares, rel=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_paths_are_torchsde_sdeint_bit_for_bit(method):
    model = sdelm.NeuralSDE(3, hidden=8).eval()
    x0 = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
    t0, dt, steps, substeps, seed = 1.0, 0.1, 9, 3, 4
    paths = sdelm.simulate(
        model, x0, steps, n_paths=3, method=method, dt=dt, t0=t0, substeps=substeps, seed=seed
    )
    ts = t0 + dt * torch.arange(steps + 1, dtype=torch.float32)
    times, reached = _solver_times(ts, dt / substeps)
    assert len(times) > steps * substeps + 1  # float32 sums of the step fall short: extra steps
    assert not torch.equal(times[reached], ts[1:])  # and interpolated outputs
    y0 = x0.repeat_interleave(3, dim=0)
    if method == "euler":
        bm = _SeededIncrements(float(ts[0]), tuple(y0.shape), y0.dtype, y0.device, seed)
    else:
        bm = torchsde.BrownianInterval(
            t0=float(ts[0]),
            t1=float(ts[-1]),
            size=tuple(y0.shape),
            dt=dt / substeps,
            entropy=seed,
            levy_area_approximation="space-time" if method == "srk" else "none",
        )
    with torch.no_grad():
        expected = torchsde.sdeint(model, y0, ts, bm=bm, method=method, dt=dt / substeps)
    assert torch.equal(paths, expected.transpose(0, 1))


def test_euler_paths_follow_the_exact_ou_moments():
    model, dt, steps = ou_model(), 0.1, 30
    paths = sdelm.simulate(model, torch.ones(3), steps, n_paths=20000, dt=dt, seed=0)
    mean, cov = sdelm.theory.ou_moments(model, torch.ones(3), torch.zeros(3, 3), steps, dt)
    assert torch.allclose(paths.mean(0), mean, atol=0.02)
    trace = cov.diagonal(dim1=-2, dim2=-1).sum(-1)[1:]
    assert torch.allclose(paths.var(0).sum(-1)[1:], trace, rtol=0.05)


@pytest.mark.parametrize("substeps", [1, 4])
def test_euler_is_euler_maruyama_with_seeded_gaussian_increments(substeps):
    model, dt, steps, seed = ou_model(), 0.5, 6, 11  # binary fractions: exact solver times
    x0 = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
    paths = sdelm.simulate(model, x0, steps, n_paths=3, dt=dt, substeps=substeps, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    y, h = x0.repeat_interleave(3, dim=0), dt / substeps
    expected = [y]
    for k in range(steps * substeps):
        t = torch.full((len(y),), k * h)
        increment = torch.randn(y.shape, generator=generator) * math.sqrt(h)
        y = y + model.drift(y, t) * h + model.diffusion(y, t) * increment
        if (k + 1) % substeps == 0:
            expected.append(y)
    torch.testing.assert_close(paths, torch.stack(expected, dim=1), rtol=1e-5, atol=1e-5)


def test_seeded_increments_refuse_a_query_out_of_order():
    bm = _SeededIncrements(0.0, (4, 2), torch.float32, torch.device("cpu"), seed=0)
    assert bm(0.0, 0.5).shape == (4, 2)
    with pytest.raises(RuntimeError, match="consecutive increments"):
        bm(0.0, 0.5)  # the same interval again
    with pytest.raises(RuntimeError, match="consecutive increments"):
        bm(0.5, 0.5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_paths": 0}, "n_paths must be a positive integer"),
        ({"n_paths": -3}, "n_paths must be a positive integer"),
        ({"n_paths": True}, "n_paths must be a positive integer"),
        ({"n_paths": 2.0}, "n_paths must be a positive integer"),
        ({"steps": 0}, "steps must be a positive integer"),
        ({"steps": True}, "steps must be a positive integer"),
        ({"steps": 5.5}, "steps must be a positive integer"),
        ({"substeps": 0}, "substeps must be a positive integer"),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"method": "heun"}, "Unknown method"),
        ({"dt": 0.0}, "dt must be a positive, finite number"),
        ({"dt": -0.1}, "dt must be a positive, finite number"),
        ({"dt": math.nan}, "dt must be a positive, finite number"),
        ({"dt": math.inf}, "dt must be a positive, finite number"),
        ({"dt": True}, "dt must be a positive, finite number"),
        ({"t0": math.inf}, "t0 must be a finite number"),
        ({"t0": math.nan}, "t0 must be a finite number"),
        ({"t0": 1e9}, "float32 cannot represent or tell apart"),
        ({"dt": 1e38, "steps": 10}, r"dt = 1e\+38 lies outside \[1e-06, 1e\+06\]"),
    ],
)
def test_bad_simulation_input(kwargs, message):
    arguments = {"steps": 5, "n_paths": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        sdelm.simulate(ou_model(), torch.zeros(3), **arguments)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_starting_states_are_refused_by_row(bad):
    x0 = torch.zeros(4, 3)
    x0[2, 1] = bad
    with pytest.raises(ValueError, match=r"x0 rows \[2\] are NaN or infinite.*row i starts paths"):
        sdelm.simulate(ou_model(), x0, 5, n_paths=2)


@pytest.mark.parametrize(("n_paths", "steps"), [(10**12, 5), (1, 10**12)])
def test_a_simulation_too_large_for_memory_is_refused_before_it_starts(n_paths, steps):
    with pytest.raises(ValueError, match=r"simulate would need about [\d,.]+ GiB.*fewer paths"):
        sdelm.simulate(ou_model(), torch.zeros(3), steps, n_paths=n_paths)


class Exploding(sdelm.SDEModel):
    """dX = 30 X dt: overflows float32 within a few dozen unit steps."""

    def drift(self, x, t):
        return 30 * x

    def diffusion(self, x, t):
        return torch.full_like(x, 0.1)


def test_paths_that_blow_up_are_reported():
    with pytest.warns(RuntimeWarning, match=r"2 of 2 simulated paths became NaN or infinite"):
        paths = sdelm.simulate(Exploding(1), torch.ones(1), 40, n_paths=2)
    assert not torch.isfinite(paths[:, -1]).any()


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


def test_one_token_errors_read_the_chain_and_its_continuous_flow():
    # Noise-free sequences of the chain x_{k+1} = (I + A) x_k: the chain's step predicts them
    # exactly; the continuous reading predicts exp(A) x_k, off by (exp(A) − I − A) x_k.
    matrix = torch.tensor([[-0.5, 0.2], [0.0, -0.3]])
    model = sdelm.models.linear.OrnsteinUhlenbeck(2)
    with torch.no_grad():
        model.matrix.copy_(matrix)
    states = [torch.tensor([[1.0, -2.0], [0.5, 3.0]])]
    for _ in range(5):
        states.append(states[-1] + states[-1] @ matrix.T)
    paths = torch.stack(states, dim=1)  # (2, 6, 2)
    rows = pd.DataFrame({"prompt_id": [4, 7]})
    data = sdelm.SDEData(paths, torch.ones(2, 6, dtype=torch.bool), 1.0, rows)
    errors = one_token_errors(model, data, substeps=400)
    assert list(errors["prompt_id"]) == [4] * 5 + [7] * 5
    assert np.allclose(errors["chain"], 0.0, atol=1e-10)
    x = paths[:, :-1].reshape(-1, 2).double()
    gap = x @ (torch.linalg.matrix_exp(matrix.double()) - torch.eye(2) - matrix.double()).T
    expected = gap.pow(2).sum(dim=1).numpy()
    np.testing.assert_allclose(errors["continuous"], expected, rtol=0.01)
