"""Chapter 6's properties as effects: the same numbers as the descriptive tables, known effects
found, and no effect where a VAR(1) surrogate is the truth."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import sdelm
from sdelm import synthetic
from sdelm.analysis import properties
from sdelm.analysis import property_effects as pe


def autoregressive(
    coefficients: tuple[float, ...], *, noise: str = "normal", steps: int = 48, seed: int = 0
) -> sdelm.PreparedData:
    n, dim = 96, 4
    generator = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, steps, dim)
    for t in range(len(coefficients), steps):
        shock = torch.randn(n, dim, generator=generator)
        if noise == "student":  # t with 5 degrees of freedom: heavy tails, finite kurtosis
            chi2 = torch.randn(n, dim, 5, generator=generator).pow(2).sum(-1)
            shock = shock / (chi2 / 5).sqrt()
        x[:, t] = sum(c * x[:, t - 1 - i] for i, c in enumerate(coefficients)) + shock
    trajs = synthetic.as_trajectories(x, dt=1.0, per_prompt=4)
    return sdelm.prepare(trajs, dim=dim, seed=seed)


def held_out(data: sdelm.PreparedData) -> sdelm.SDEData:
    return sdelm.SDEData.concat([data.val, data.test])


@pytest.fixture(scope="module")
def ar1():
    data = autoregressive((0.9,))
    ou = sdelm.models.linear.OrnsteinUhlenbeck(data.dim).fit_least_squares(data.train)
    return data, ou, pe.effects([(data.train, held_out(data), ou)], seed=0)


def test_estimates_equal_the_descriptive_tables(ar1):
    data, ou, found = ar1
    held = held_out(data)
    z, mask = properties.standardised_residuals(ou, held)
    kurtosis = properties.gaussianity(z, mask)["excess_kurtosis"].mean()
    assert found["residual-excess-kurtosis"]["estimate"] == pytest.approx(kurtosis, abs=1e-9)
    msd = properties.mean_squared_displacement(held, pe.LAGS)
    assert found["msd-exponent"]["estimate"] == pytest.approx(properties.msd_exponent(msd))
    per_component = [
        properties.coverage(z[..., [c]], mask, levels=[pe.COVERAGE])["observed"].iloc[0]
        for c in range(data.dim)
    ]
    miss = 1 - np.array(per_component)
    expected = np.abs(np.log(miss / (1 - pe.COVERAGE))).mean()
    assert found["coverage-miss-log-ratio"]["estimate"] == pytest.approx(expected)
    increments = held.states[:, 1:] - held.states[:, :-1]
    raw = properties.whiteness(increments, mask)["acf1"].abs().mean()
    fitted = properties.whiteness(z, mask)["acf1"].abs().mean()
    assert found["whitening-by-neural-drift"]["estimate"] == pytest.approx(raw - fitted)
    order = properties.markov_order(sdelm.PreparedData(**{**vars(data), "test": held}))
    gain = order.loc[1, "test_nll"] - order.loc[2, "test_nll"]
    assert found["order-2-gain"]["estimate"] == pytest.approx(gain)


def test_an_ar1_is_indistinguishable_from_its_var1_surrogate(ar1):
    _, _, found = ar1
    for base in ("whitening-by-var1-drift", "order-2-gain", "msd-exponent"):
        measured = found[f"{base}-data-minus-var1"]
        assert measured["low"] <= 0 <= measured["high"], base
    assert found["msd-exponent"]["high"] < 1  # mean reversion flattens the MSD
    assert found["residual-excess-kurtosis"]["low"] <= 0 <= found["residual-excess-kurtosis"][
        "high"]  # fmt: skip
    assert found["coverage-miss-log-ratio"]["estimate"] < pe.TOLERANCE  # the true model
    assert list(found) == list(pe.EFFECTS)


def test_memory_and_heavy_tails_are_found_where_they_are():
    data = autoregressive((0.5, 0.4), noise="student", seed=1)
    ou = sdelm.models.linear.OrnsteinUhlenbeck(data.dim).fit_least_squares(data.train)
    found = pe.effects([(data.train, held_out(data), ou)], seed=0)
    assert found["order-2-gain"]["low"] > 0
    assert found["order-2-gain-data-minus-var1"]["low"] > 0
    assert found["residual-excess-kurtosis"]["low"] > 0.5


def test_folds_hold_out_every_prompt_once_and_pool_their_sums():
    x = torch.zeros(96, 48, 4)
    generator = torch.Generator().manual_seed(2)
    for t in range(1, 48):
        x[:, t] = 0.9 * x[:, t - 1] + torch.randn(96, 4, generator=generator)
    trajs = synthetic.as_trajectories(x, dt=1.0, per_prompt=4)
    folds = []
    for i in range(3):
        split = sdelm.prepare(trajs, dim=4, seed=0, split=(0.85, 0.15, 0.0), fold=(i, 3))
        model = sdelm.models.linear.OrnsteinUhlenbeck(4).fit_least_squares(split.train)
        folds.append((split.train, split.test, model))
    found = pe.effects(folds, seed=0)
    assert {m["n_clusters"] for m in found.values()} == {24}  # every prompt, once
    assert found["msd-exponent"]["high"] < 1
    assert found["order-2-gain-data-minus-var1"]["low"] <= 0 <= found[
        "order-2-gain-data-minus-var1"]["high"]  # fmt: skip
    with pytest.raises(ValueError, match="held out by one fold only"):
        pe.effects([folds[0], folds[0]], seed=0)


def test_short_held_out_sequences_are_refused():
    data = autoregressive((0.9,), steps=20)
    with pytest.raises(ValueError, match="longer than 32 steps"):
        pe.sequence_sums(data.train, data.test)
    assert np.isfinite(pe.sequence_sums(autoregressive((0.9,)).train,
                                        autoregressive((0.9,)).test).msd).all()  # fmt: skip
