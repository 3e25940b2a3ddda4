"""Fitting on synthetic SDEs with known answers, determinism, failures and bad input."""

from __future__ import annotations

import math

import pytest
import torch

import sdelm
from sdelm.fit import AUTO_BATCH_SIZE, _resolve_batch_size
from sdelm.models.linear import OrnsteinUhlenbeck, RandomWalk
from sdelm.synthetic import (
    OU_MATRIX,
    OU_SIGMA,
    as_trajectories,
    double_well_diffusion,
    double_well_drift,
    double_well_paths,
    ou_model,
    ou_paths,
)


@pytest.fixture(scope="module")
def ou_data():
    trajs = as_trajectories(ou_paths(n=400, steps=50, dt=0.1), dt=0.1, per_prompt=2)
    return sdelm.prepare(trajs, dim=None, standardise=False, seed=0)


def relative_error(estimate: torch.Tensor, truth: torch.Tensor) -> float:
    return float((estimate - truth).norm() / truth.norm())


def test_ou_least_squares_recovers_the_matrix_and_sigma(ou_data):
    model = OrnsteinUhlenbeck(3).fit_least_squares(ou_data.train)
    assert relative_error(model.matrix.detach(), OU_MATRIX) < 0.10
    assert relative_error(model.log_sigma.exp().detach(), OU_SIGMA) < 0.10
    assert model.bias.detach().abs().max() < 0.1


def test_ou_gradient_fit_agrees_with_least_squares(ou_data):
    result = sdelm.fit(
        OrnsteinUhlenbeck(3), ou_data, lr=2e-2, epochs=400, patience=400, progress=False
    )
    closed = OrnsteinUhlenbeck(3).fit_least_squares(ou_data.train)
    assert relative_error(result.model.matrix.detach(), OU_MATRIX) < 0.10
    assert sdelm.nll(result.model, ou_data.test) == pytest.approx(
        sdelm.nll(closed, ou_data.test), abs=5e-3
    )


def test_true_model_nll_matches_its_analytic_expectation(ou_data):
    true = ou_model()
    dt = ou_data.dt
    # E[−log N(ξ; 0, σ²dt)] = ½ log(2π σ² dt) + ½, averaged over dimensions.
    expected = float((0.5 * torch.log(2 * math.pi * OU_SIGMA**2 * dt) + 0.5).mean())
    assert sdelm.nll(true, ou_data.test) == pytest.approx(expected, abs=0.02)
    fitted = OrnsteinUhlenbeck(3).fit_least_squares(ou_data.train)
    assert sdelm.nll(fitted, ou_data.test) == pytest.approx(expected, abs=0.03)


@pytest.fixture(scope="module")
def double_well():
    trajs = as_trajectories(double_well_paths(n=500, steps=60, dt=0.05), dt=0.05)
    data = sdelm.prepare(trajs, dim=None, standardise=False, seed=0)
    result = sdelm.fit(
        sdelm.NeuralSDE(2, hidden=64, time_scale=0, seed=0),
        data,
        lr=3e-3,
        epochs=400,
        patience=40,
        batch_size=2048,
        progress=False,
    )
    return data, result


def test_neural_sde_recovers_a_double_well_with_state_dependent_noise(double_well):
    _, result = double_well
    grid = torch.cartesian_prod(torch.linspace(-1.2, 1.2, 13), torch.linspace(-0.8, 0.8, 9))
    t = torch.zeros(len(grid))
    with torch.no_grad():
        drift = result.model.drift(grid, t)
        sigma = result.model.diffusion(grid, t)
    # Tolerances: drift within 30% (RMS over the grid, relative to the true drift's RMS);
    # diffusion within 10%.
    assert relative_error(drift, double_well_drift(grid)) < 0.30
    assert relative_error(sigma, double_well_diffusion(grid)) < 0.10


def test_neural_sde_beats_ou_on_the_double_well(double_well):
    data, result = double_well
    ou = OrnsteinUhlenbeck(2).fit_least_squares(data.train)
    assert sdelm.nll(result.model, data.test) < sdelm.nll(ou, data.test) - 0.02


def test_fit_is_deterministic_and_keeps_the_best_epoch(ou_data):
    runs = [
        sdelm.fit(
            sdelm.NeuralSDE(3, hidden=16, seed=1), ou_data, epochs=15, seed=4, progress=False
        )
        for _ in range(2)
    ]
    assert runs[0].history.drop(columns="seconds").equals(runs[1].history.drop(columns="seconds"))
    val = runs[0].history[runs[0].history["split"] == "val"].set_index("epoch")["nll"]
    assert runs[0].best_val_nll == pytest.approx(val.min())
    assert sdelm.nll(runs[0].model, ou_data.val) == pytest.approx(val.min(), abs=1e-5)
    assert set(runs[0].history.columns) >= {"epoch", "split", "total", "drift", "diffusion"}
    assert runs[0].improved and runs[0].best_epoch > 0


def test_auto_batch_size_is_4096_on_the_cpu_and_bit_identical(ou_data):
    def run(batch_size):
        return sdelm.fit(
            sdelm.NeuralSDE(3, hidden=16, seed=2),
            ou_data,
            epochs=4,
            batch_size=batch_size,
            device="cpu",
            progress=False,
        )

    auto, fixed = run("auto"), run(4096)
    assert auto.batch_size == fixed.batch_size == 4096
    assert len(ou_data.train.transitions()) > 4096  # several batches per epoch
    assert auto.history.drop(columns="seconds").equals(fixed.history.drop(columns="seconds"))
    for a, b in zip(auto.model.parameters(), fixed.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert sdelm.fit(RandomWalk(3), ou_data, epochs=1, progress=False).batch_size == 4096


def test_auto_batch_size_resolves_per_device():
    assert _resolve_batch_size("auto", torch.device("cpu")) == AUTO_BATCH_SIZE["cpu"] == 4096
    assert _resolve_batch_size("auto", torch.device("cuda")) == AUTO_BATCH_SIZE["cuda"] == 65536
    assert _resolve_batch_size(512, torch.device("cuda")) == 512


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_batch_size_on_cuda(ou_data):
    result = sdelm.fit(
        sdelm.NeuralSDE(3, hidden=16, seed=1), ou_data, epochs=3, device="cuda", progress=False
    )
    assert result.device.startswith("cuda")
    assert result.batch_size == 65536
    assert result.history[["total", "nll"]].notna().all().all()
    fixed = sdelm.fit(
        sdelm.NeuralSDE(3, hidden=16, seed=1),
        ou_data,
        epochs=3,
        batch_size=4096,
        device="cuda",
        progress=False,
    )
    assert fixed.batch_size == 4096


def test_a_diverging_fit_stops_warns_and_keeps_the_starting_weights(ou_data):
    model = sdelm.NeuralSDE(3, seed=0)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.warns(RuntimeWarning, match=r"diverged at epoch 1.*restored epoch 0.*smaller lr"):
        result = sdelm.fit(model, ou_data, lr=1e3, epochs=20, progress=False)
    assert result.stopped == "diverged"
    assert not result.improved and result.best_epoch == 0
    val = result.history[result.history["split"] == "val"]["nll"]
    assert val.max() > 1e3 * max(1, abs(val.iloc[0]))  # the exploding epoch is in the history
    assert result.history["epoch"].max() == 1  # stopped at once, not after every epoch
    for name, value in result.model.state_dict().items():
        assert torch.equal(value, start[name])


def test_a_fit_that_never_improves_says_so(ou_data):
    with pytest.warns(RuntimeWarning, match=r"No epoch .* improved.*larger lr than 1e-12"):
        result = sdelm.fit(
            sdelm.NeuralSDE(3, hidden=8, seed=0), ou_data, lr=1e-12, epochs=2, progress=False
        )
    assert result.stopped == "epochs"
    assert not result.improved and result.best_epoch == 0
    assert result.best_val_nll == result.history["nll"].iloc[1]  # the starting validation NLL


def test_paper_loss_trains_and_reports_its_terms(ou_data):
    result = sdelm.fit(
        sdelm.NeuralSDE(3, hidden=16), ou_data, loss="paper", epochs=20, progress=False
    )
    history = result.history
    assert ((history["total"] - history["drift"] - history["diffusion"]).abs() < 1e-5).all()
    assert history[history["split"] == "val"]["nll"].iloc[-1] < history["nll"].iloc[1]


class ExplodingWalk(RandomWalk):
    """A random walk whose drift turns NaN after a few calls."""

    calls = 0

    def drift(self, x, t):
        type(self).calls += 1
        out = super().drift(x, t)
        return out + math.nan if type(self).calls > 12 else out


def test_a_non_finite_loss_stops_with_a_warning_and_the_best_weights(ou_data):
    with pytest.warns(RuntimeWarning, match="non-finite loss"):
        result = sdelm.fit(ExplodingWalk(3), ou_data, epochs=50, progress=False)
    assert result.stopped == "non-finite"
    assert math.isfinite(result.best_val_nll)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": 0.0}, "lr must be > 0"),
        ({"lr": -1e-3}, "lr must be > 0"),
        ({"lr": math.inf}, "lr must be > 0 and finite"),
        ({"lr": math.nan}, "lr must be > 0 and finite"),
        ({"lr": True}, "lr must be > 0 and finite"),
        ({"epochs": 0}, "epochs must be a positive integer"),
        ({"epochs": True}, "epochs must be a positive integer"),
        ({"epochs": 10.0}, "epochs must be a positive integer"),
        ({"patience": -1}, "patience must be a positive integer"),
        ({"batch_size": 0}, "batch_size must be a positive integer or 'auto'"),
        ({"batch_size": True}, "batch_size must be a positive integer or 'auto'"),
        ({"batch_size": 512.0}, "batch_size must be a positive integer or 'auto'"),
        ({"batch_size": "big"}, "batch_size must be a positive integer or 'auto'"),
        ({"loss": "mse"}, "Unknown loss"),
    ],
)
def test_bad_fit_arguments(ou_data, kwargs, message):
    with pytest.raises(ValueError, match=message):
        sdelm.fit(RandomWalk(3), ou_data, progress=False, **kwargs)


def test_a_model_of_the_wrong_dimension_is_refused(ou_data):
    with pytest.raises(ValueError, match="build the model with dim=3"):
        sdelm.fit(RandomWalk(2), ou_data, progress=False)
    with pytest.raises(ValueError, match="models 2-dimensional states"):
        sdelm.nll(RandomWalk(2), ou_data.test)
    with pytest.raises(ValueError, match="dim must be a positive integer"):
        sdelm.NeuralSDE(0)


@pytest.mark.integration
def test_both_losses_train_without_nan_on_real_trajectories(smollm2):
    trajs = sdelm.extract(
        smollm2,
        sdelm.corpus.prompts(10),
        max_new_tokens=16,
        temperatures=[0.7, 1.3],
        seed=0,
        progress=False,
    )
    data = sdelm.prepare(trajs, dim=8, seed=0)
    for loss in ("nll", "paper"):
        result = sdelm.fit(
            sdelm.NeuralSDE(8, hidden=32), data, loss=loss, epochs=30, progress=False
        )
        assert result.stopped != "non-finite"
        assert result.history[["total", "drift", "diffusion", "nll"]].notna().all().all()
        assert math.isfinite(sdelm.nll(result.model, data.test))
