"""Process-property tests on synthetic processes whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import sdelm
from sdelm.analysis import properties
from sdelm.synthetic import as_trajectories, euler_maruyama, ou_model, ou_paths


def split_of(paths: torch.Tensor, dt: float = 1.0) -> sdelm.SDEData:
    trajs = as_trajectories(paths, dt=dt)
    return sdelm.SDEData(states=trajs.layer(0), mask=trajs.mask, dt=dt, rows=trajs.rows)


def ar_paths(coefficients: tuple[float, ...], n=300, steps=60, seed=0, noise="normal"):
    generator = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, steps + len(coefficients), 2)
    for k in range(len(coefficients), x.shape[1]):
        shock = torch.randn(n, 2, generator=generator)
        if noise == "student":
            shock = torch.distributions.StudentT(3.0).sample((n, 2))
        x[:, k] = sum(c * x[:, k - 1 - i] for i, c in enumerate(coefficients)) + shock
    return x[:, len(coefficients) :]


@pytest.fixture(scope="module")
def ou_split():
    return split_of(ou_paths(n=300, steps=60, dt=0.1), dt=0.1)


def test_true_model_residuals_are_gaussian_white_and_well_covered(ou_split):
    z, mask = properties.standardised_residuals(ou_model(), ou_split)
    assert z.shape == (300, 60, 3) and mask.all()
    table = properties.gaussianity(z, mask)
    assert (table["ks_p"] > 0.01).all() and (table["excess_kurtosis"].abs() < 0.2).all()
    assert (table["anderson_p"] > 0.01).all()
    white = properties.whiteness(z, mask, lags=5)
    assert (white["acf1"].abs() < 0.05).all() and (white["binomial_p"] > 0.001).all()
    cover = properties.coverage(z, mask)
    assert np.allclose(cover["observed"], cover["nominal"], atol=0.02)
    qv = properties.quadratic_variation(ou_model(), ou_split)
    # In discrete time E|ΔX|² = |μ|²Δt² + tr σσᵀ Δt: the drift adds a small known bias.
    x = ou_split.states[:, :-1].reshape(-1, 3)
    with torch.no_grad():
        drift_part = ou_model().drift(x, torch.zeros(len(x))).pow(2).sum(1).mean() * 0.1
        noise = ou_model().diffusion(x[:1], torch.zeros(1)).pow(2).sum()
    expected = 1 + float(drift_part / noise)
    assert qv["ratio"].mean() == pytest.approx(expected, abs=0.03)


def test_heavy_tails_are_detected():
    heavy = ar_paths((0.0,), noise="student")
    split = split_of(heavy)
    z = heavy[:, 1:] - heavy[:, :-1]
    mask = split.mask[:, 1:]
    table = properties.gaussianity(z / z.std(), mask)
    assert (table["excess_kurtosis"] > 1).all() and (table["ks_p"] < 0.01).all()


def test_ljung_box_rejects_ar1_and_not_white_noise():
    white = torch.randn(200, 50, 2, generator=torch.Generator().manual_seed(1))
    ar1 = ar_paths((0.6,), n=200, steps=50)
    mask = torch.ones(200, 50, dtype=torch.bool)
    on_white = properties.whiteness(white, mask)
    on_ar1 = properties.whiteness(ar1, mask)
    assert (on_white["reject_share"] < 0.12).all()
    assert (on_ar1["reject_share"] > 0.8).all()
    assert on_ar1["acf1"].between(0.45, 0.7).all()


def test_markov_order_detects_a_second_order_process():
    second = split_of(ar_paths((0.5, 0.4)))
    data = sdelm.PreparedData(second, second, second, projection=None)
    table = properties.markov_order(data)
    assert table.loc[2, "lr_p"] < 1e-6
    assert table.loc[2, "test_nll"] < table.loc[1, "test_nll"] - 0.01
    first = split_of(ar_paths((0.7,), seed=2))
    table = properties.markov_order(sdelm.PreparedData(first, first, first, projection=None))
    assert table.loc[2, "lr_p"] > 0.001
    assert table.loc[2, "test_nll"] == pytest.approx(table.loc[1, "test_nll"], abs=0.01)


def test_msd_exponent_is_one_for_brownian_and_two_for_ballistic_motion():
    generator = torch.Generator().manual_seed(3)
    brownian = torch.randn(300, 60, 2, generator=generator).cumsum(dim=1)
    velocity = torch.randn(300, 1, 2, generator=generator)
    ballistic = velocity * torch.arange(60.0)[None, :, None] + 0.01 * brownian
    lags = [1, 2, 4, 8, 16]
    brown = properties.mean_squared_displacement(split_of(brownian), lags)
    assert properties.msd_exponent(brown) == pytest.approx(1.0, abs=0.08)
    ball = properties.mean_squared_displacement(split_of(ballistic), lags)
    assert properties.msd_exponent(ball) == pytest.approx(2.0, abs=0.08)


def test_adf_and_kpss_tell_mean_reversion_from_a_random_walk():
    reverting = split_of(
        euler_maruyama(
            lambda x: -0.8 * x, lambda x: torch.ones_like(x), torch.zeros(100, 2), 60, 1.0
        )
    )
    walk = split_of(
        torch.randn(100, 61, 2, generator=torch.Generator().manual_seed(4)).cumsum(dim=1)
    )
    on_reverting = properties.stationarity(reverting, components=2)
    on_walk = properties.stationarity(walk, components=2)
    assert (on_reverting["adf_rejects_unit_root"] > 0.8).all()
    assert (on_walk["adf_rejects_unit_root"] < 0.3).all()
    assert (on_walk["kpss_rejects_stationarity"] > on_reverting["kpss_rejects_stationarity"]).all()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s: properties.mean_squared_displacement(s, [0, 1]), "lags must be positive"),
        (lambda s: properties.mean_squared_displacement(s, [10]), "at least 11 steps"),
        (lambda s: properties.whiteness(s.states, s.mask, lags=8), "at least 11 steps"),
        (lambda s: properties.stationarity(s), "at least 12 steps"),
    ],
)
def test_too_short_trajectories_get_a_clear_error(call, message):
    short = split_of(torch.randn(5, 6, 2))
    with pytest.raises(ValueError, match=message):
        call(short)


def test_scorecard_of_the_true_model_and_of_a_random_walk(ou_split):
    card = properties.scorecard(ou_model(), ou_split)
    assert set(card) == {"drift_share", "excess_kurtosis", "gaussian_components", "acf1"}
    assert abs(card["excess_kurtosis"]) < 0.2 and card["gaussian_components"] >= 0.6
    assert abs(card["acf1"]) < 0.05
    x = ou_split.transitions()
    drift = ou_model().drift(x.x, x.t).detach() * 0.1
    expected = 1 - (x.dx - drift).pow(2).sum() / (x.dx - x.dx.mean(0)).pow(2).sum()
    assert card["drift_share"] == pytest.approx(float(expected), rel=1e-4)
    walk = properties.scorecard(sdelm.models.linear.RandomWalk(3), ou_split)
    assert -0.01 < walk["drift_share"] <= 0  # only the mean increment is unexplained
    strong = split_of(ar_paths((0.5,), n=100, steps=40))
    assert properties.scorecard(sdelm.models.linear.RandomWalk(2), strong)["acf1"] < -0.1
