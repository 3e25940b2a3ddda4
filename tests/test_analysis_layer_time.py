"""Layer-time noise growth: λ recovered, in both readings, with piece intervals and nulls."""

from __future__ import annotations

import pytest

import sdelm
from sdelm.analysis import layer_time


def layer_set(rate: float, seed: int, n: int = 400) -> sdelm.Trajectories:
    paths = sdelm.synthetic.lines_of_thought_paths(n=n, steps=24, dim=8, rate=rate, seed=seed)
    return sdelm.synthetic.as_trajectories(paths, dt=1.0)


def test_the_layer_time_growth_rate_is_recovered():
    frame = layer_time.residual_frame(layer_set(0.18, seed=0), dim=8, seed=0)
    assert set(frame["layer"]) == set(range(1, 23))
    assert layer_time.growth_rate(frame) == pytest.approx(0.18, abs=0.02)
    assert (frame["normalised"] > 0).all()


def test_growth_effects_resample_pieces_and_compare_a_null_on_the_same_pieces():
    frames = {
        "human": layer_time.residual_frame(layer_set(0.18, seed=0), dim=8, seed=0),
        "untrained": layer_time.residual_frame(layer_set(0.0, seed=1), dim=8, seed=0),
    }
    found = layer_time.growth_effects(frames, compared=("untrained",), seed=0)
    human = found.loc[("human", "variance")]
    assert human["low"] < 0.18 < human["high"] and human["n_clusters"] == 160
    assert human["estimate"] == pytest.approx(layer_time.growth_rate(frames["human"]))
    null = found.loc[("untrained", "variance")]
    assert abs(null["estimate"]) < 0.01
    difference = found.loc[("human − untrained", "variance")]
    assert difference["low"] > 0.1
    assert set(found.index.get_level_values("reading")) == set(layer_time.COLUMNS)


def test_a_null_on_other_pieces_is_refused():
    frames = {
        "human": layer_time.residual_frame(layer_set(0.18, seed=0), dim=8, seed=0),
        "fewer": layer_time.residual_frame(layer_set(0.0, seed=1, n=200), dim=8, seed=0),
    }
    with pytest.raises(ValueError, match="other pieces"):
        layer_time.growth_effects(frames, compared=("fewer",), seed=0)
