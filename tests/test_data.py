"""Preparing data: splits by prompt, PCA on the training split, bad input."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

import sdelm
from sdelm.synthetic import as_trajectories, ou_paths


def test_splits_never_share_a_prompt_and_cover_every_row():
    trajs = as_trajectories(ou_paths(n=120, steps=10), dt=0.1, per_prompt=4)
    data = sdelm.prepare(trajs, dim=2, seed=3)
    ids = [set(split.rows["prompt_id"]) for split in (data.train, data.val, data.test)]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert sum(len(s) for s in (data.train, data.val, data.test)) == 120
    assert data.summary().loc["train", "prompts"] == 22  # 30 − 2 × floor(0.15 × 30)


def test_pca_is_fitted_on_training_rows_and_maps_back():
    trajs = as_trajectories(ou_paths(n=60, steps=8), dt=0.1)
    data = sdelm.prepare(trajs, dim=3, standardise=True, seed=0)
    train = data.train.states[data.train.mask]
    assert torch.allclose(train.mean(0), torch.zeros(3), atol=1e-5)
    assert torch.allclose(train.std(0), torch.ones(3), atol=1e-4)
    hidden = trajs.where(prompt_id=list(data.train.rows["prompt_id"])).layer(0)
    back = data.projection.inverse(data.train.states)
    assert torch.allclose(back[data.train.mask], hidden[data.train.mask], atol=1e-4)
    assert data.projection.explained_variance.sum() == pytest.approx(1.0, abs=1e-5)


def test_transitions_respect_the_mask_and_dt():
    states = torch.arange(2 * 5 * 1, dtype=torch.float32).reshape(2, 5, 1)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 3:] = False
    split = sdelm.SDEData(states=states, mask=mask, dt=0.5, rows=pd.DataFrame(index=[0, 1]))
    tr = split.transitions()
    assert len(tr) == 4 + 2
    assert torch.equal(tr.dx, torch.ones(6, 1))
    assert tr.t.tolist() == [0.0, 0.5, 1.0, 1.5, 0.0, 0.5]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"split": (0.5, 0.5), "dim": 2}, "three non-negative fractions"),
        ({"split": (0.9, 0.2, -0.1), "dim": 2}, "three non-negative fractions"),
        ({"split": (0.98, 0.01, 0.01), "dim": 2}, "a split would be empty"),
        ({"dim": 0}, "dim must be in 1..3"),
        ({"dim": 4}, "dim must be in 1..3"),
        ({"dim": -2}, "dim must be in 1..3"),
        ({"dim": 2.5}, "dim must be a positive integer or None, got 2.5"),
        ({"dim": True}, "dim must be a positive integer or None, got True"),
        ({"dim": 2, "dt": 0}, "dt must be a positive, finite number, got 0"),
        ({"dim": 2, "dt": -0.1}, "dt must be a positive, finite number"),
        ({"dim": 2, "dt": math.nan}, "dt must be a positive, finite number, got nan"),
        ({"dim": 2, "dt": math.inf}, "dt must be a positive, finite number, got inf"),
        ({"dim": 2, "seed": -1}, "seed must be a non-negative integer"),
    ],
)
def test_bad_input(kwargs, message):
    trajs = as_trajectories(ou_paths(n=20, steps=5), dt=0.1)
    with pytest.raises(ValueError, match=message):
        sdelm.prepare(trajs, **kwargs)


def test_too_short_trajectories_are_refused():
    trajs = as_trajectories(torch.zeros(10, 1, 2), dt=1.0)
    with pytest.raises(ValueError, match="at least two steps"):
        sdelm.prepare(trajs, dim=1)


def test_project_places_other_trajectories_in_the_fitted_coordinates():
    paths = ou_paths(n=60, steps=12)
    prepared = sdelm.prepare(as_trajectories(paths, dt=0.1, per_prompt=2), dim=2, seed=0)
    other = as_trajectories(paths[:5] + 1.0, dt=0.1)
    projected = sdelm.project(other, prepared.projection, name="shifted")
    expected = prepared.projection.forward(paths[:5] + 1.0)
    assert torch.allclose(projected.states, expected) and projected.name == "shifted"
    assert projected.rows.equals(other.rows.reset_index(drop=True))
    with pytest.raises(ValueError, match="hidden size"):
        sdelm.project(as_trajectories(paths[:5, :, :2], dt=0.1), prepared.projection)
    with pytest.raises(ValueError, match="layer"):
        sdelm.project(
            sdelm.Trajectories.from_states(paths[:5, None], layers=(3,)), prepared.projection
        )


def test_concat_joins_splits_and_rejects_mismatches():
    prepared = sdelm.prepare(as_trajectories(ou_paths(n=60, steps=12), 0.1, per_prompt=2), dim=2)
    joined = sdelm.SDEData.concat([prepared.val, prepared.test], name="held-out")
    assert len(joined) == len(prepared.val) + len(prepared.test) and joined.name == "held-out"
    assert torch.equal(joined.states[len(prepared.val) :], prepared.test.states)
    assert list(joined.rows["prompt_id"]) == [
        *prepared.val.rows["prompt_id"],
        *prepared.test.rows["prompt_id"],
    ]
    with pytest.raises(ValueError, match="share steps"):
        sdelm.SDEData.concat(
            [
                prepared.val,
                sdelm.project(as_trajectories(ou_paths(n=4, steps=5), 0.1), prepared.projection),
            ]
        )
    with pytest.raises(ValueError, match="at least one"):
        sdelm.SDEData.concat([])


def test_dim_beyond_the_training_states_is_refused_with_the_largest_usable_dim():
    # 10 prompts x 2 steps: the 8 training prompts give 16 states, which span 15 directions.
    trajs = as_trajectories(
        torch.randn(10, 2, 50, generator=torch.Generator().manual_seed(0)), 1.0
    )
    with pytest.raises(ValueError, match=r"16 valid states .* span only 15 .* Use dim <= 15"):
        sdelm.prepare(trajs, dim=16)
    assert sdelm.prepare(trajs, dim=15).dim == 15


def test_dim_beyond_the_rank_of_the_states_is_refused():
    # States in a 2-D plane of a 10-D space (float32 rounding leaves them just off it).
    basis = torch.randn(2, 10, generator=torch.Generator().manual_seed(1))
    plane = as_trajectories(torch.randn(60, 8, 2) @ basis, dt=1.0)
    with pytest.raises(ValueError, match=r"span only 2 directions.*Use dim <= 2"):
        sdelm.prepare(plane, dim=3)
    data = sdelm.prepare(plane, dim=2)
    assert data.dim == 2 and (data.projection.scale > 0.1).all()
    assert data.test.states.abs().max() < 100


def test_dim_none_refuses_to_standardise_a_constant_coordinate():
    paths = ou_paths(n=40, steps=6)
    paths[..., 1] = 2.0
    trajs = as_trajectories(paths, dt=0.1)
    with pytest.raises(ValueError, match=r"coordinates \[1\] .* constant .* standardise=False"):
        sdelm.prepare(trajs, dim=None)
    data = sdelm.prepare(trajs, dim=None, standardise=False)
    assert torch.isfinite(data.test.states).all() and (data.test.states[..., 1] == 0).all()


def test_identical_training_states_are_refused():
    trajs = as_trajectories(torch.ones(20, 5, 3), dt=1.0)
    with pytest.raises(ValueError, match="all identical"):
        sdelm.prepare(trajs, dim=None, standardise=False)


def test_nan_states_written_in_place_are_refused_by_prepare_and_project():
    trajs = as_trajectories(ou_paths(n=20, steps=5), dt=0.1)
    projection = sdelm.prepare(trajs, dim=2).projection
    trajs.states[3, 0, 2, 1] = math.nan
    message = r"NaN or inf at 1 valid step\(s\) of layer 0 \(first at sequence 3, step 2\)"
    with pytest.raises(ValueError, match=message):
        sdelm.prepare(trajs, dim=None)
    with pytest.raises(ValueError, match=message):
        sdelm.project(trajs, projection)
    with pytest.raises(ValueError, match="dt must be a positive, finite number"):
        sdelm.project(trajs[:2], projection, dt=math.inf)
