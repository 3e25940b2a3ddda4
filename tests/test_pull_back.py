"""The pull-back of outer states and the drift map's contraction, on data and surrogates."""

from __future__ import annotations

import torch

import sdelm
from sdelm.analysis import contraction, surrogates
from sdelm.analysis.pull_back import pull_back_effects, pull_back_frame
from sdelm.models.linear import OrnsteinUhlenbeck
from sdelm.synthetic import as_trajectories, ou_paths


def least_squares(prepared: sdelm.data.PreparedData) -> OrnsteinUhlenbeck:
    return OrnsteinUhlenbeck(prepared.dim).fit_least_squares(prepared.train)


def effects_of(paths: torch.Tensor) -> dict[str, dict[str, float]]:
    data = sdelm.prepare(as_trajectories(paths, dt=1.0, per_prompt=2), dim=None, seed=0)
    frame = pull_back_frame(data, least_squares(data), least_squares, seed=0)
    assert set(frame["series"]) == {"data", *surrogates.KINDS}
    for _, rows in frame.groupby("series"):  # a quarter of each series' states is outer
        assert abs(rows["outer"].mean() - 0.25) < 0.01
    return pull_back_effects(frame, seed=0)


def test_a_stationary_ou_is_pulled_back_like_its_var1_surrogate():
    found = effects_of(ou_paths(n=160, steps=40, dt=0.1))
    assert found["data"]["low"] > 0.5  # outer states are pulled back...
    assert found["var1"]["low"] <= 0 <= found["var1"]["high"]  # ...as in any VAR(1)


def test_a_random_walk_is_pulled_back_less_than_its_iid_surrogate():
    steps = torch.randn(160, 41, 3, generator=torch.Generator().manual_seed(0))
    found = effects_of(steps.cumsum(dim=1))
    assert found["iid"]["high"] < 0  # shuffling away the memory creates a pull-back


def test_surrogate_data_keeps_rows_masks_and_the_projection():
    data = sdelm.prepare(as_trajectories(ou_paths(n=40, steps=10), dt=0.1), dim=None, seed=0)
    for kind in surrogates.KINDS:
        other = surrogates.surrogate_data(data, kind, seed=1)
        for split, copy in zip(
            (data.train, data.val, data.test), (other.train, other.val, other.test), strict=True
        ):
            assert copy.rows.equals(split.rows) and torch.equal(copy.mask, split.mask)
            assert not torch.equal(copy.states, split.states)
        assert other.projection is data.projection


def test_an_ou_contracts_like_its_var1_surrogate_and_slower_than_memoryless_ones():
    paths = ou_paths(n=160, steps=40, dt=0.1)  # lag-one correlation e^{-0.1}: slow
    data = sdelm.prepare(as_trajectories(paths, dt=1.0, per_prompt=2), dim=None, seed=0)
    frame = contraction.largest_exponent_frame(
        data, least_squares(data), least_squares, horizon=4, seed=0
    )
    assert frame.groupby("series").size().nunique() == 1  # every series, every sequence
    found = contraction.largest_exponent_effects(frame, seed=0)
    assert -0.2 < found["data"]["estimate"] < 0 and found["data"]["high"] < 0
    assert abs(found["var1"]["estimate"]) < 0.02  # a linear map: the same contraction
    for kind in ("shuffled", "iid"):  # less memory: states are pulled in faster
        assert found[kind]["low"] > 0.3
