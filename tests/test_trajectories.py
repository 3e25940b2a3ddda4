"""The Trajectories container: construction, selection, files."""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import replace

import numpy as np
import pytest
import torch

from sdelm import Trajectories, TrajectoryFileError


def synthetic(n=5, steps=7, dim=3, seed=0) -> Trajectories:
    states = torch.randn(n, steps, dim, generator=torch.Generator().manual_seed(seed))
    mask = torch.ones(n, steps, dtype=torch.bool)
    mask[0, 4:] = False
    trajs = Trajectories.from_states(states, mask, dt=0.5, meta={"note": "test"})
    trajs.rows["prompt_id"] = ["a", "a", "b", "c", "c"][:n]
    trajs.rows["temperature"] = [0.5, 1.0, 0.5, 1.0, 0.5][:n]
    return trajs


def test_from_states_shapes_defaults_and_repr():
    trajs = synthetic()
    assert trajs.states.shape == (5, 1, 7, 3)
    assert (trajs.n_sequences, trajs.n_steps, trajs.dim, trajs.dt) == (5, 7, 3, 0.5)
    assert trajs.lengths.tolist() == [4, 7, 7, 7, 7]
    assert (trajs.tokens == -1).all() and torch.isnan(trajs.logprobs).all()
    assert trajs.layer(0).shape == (5, 7, 3)
    assert trajs.layer(-1).shape == (5, 7, 3)
    text = repr(trajs)
    assert "5 sequences × 7 steps" in text and "synthetic 5" in text and "dt=0.5" in text


def test_from_states_accepts_numpy_and_a_layer_axis():
    states = np.zeros((2, 3, 4, 5))
    trajs = Trajectories.from_states(states, layers=(0, 6, 12), time_axis="layer")
    assert trajs.layers == (0, 6, 12) and trajs.time_axis == "layer"
    assert trajs.layer(6).shape == (2, 4, 5)
    with pytest.raises(KeyError, match="recorded layers"):
        trajs.layer(3)


def test_from_states_rejects_nan_in_valid_steps_but_not_in_masked_ones():
    states = torch.zeros(2, 4, 3)
    states[1, 2, 0] = math.nan
    with pytest.raises(ValueError, match=r"NaN or inf .* sequence 1, step 2"):
        Trajectories.from_states(states)
    states[0, 1, 1] = math.inf
    mask = torch.ones(2, 4, dtype=torch.bool)
    mask[1, 2:] = False
    mask[0, 1:] = False
    trajs = Trajectories.from_states(states, mask)
    assert torch.isfinite(trajs.states).all()


@pytest.mark.parametrize(
    ("states", "mask", "message"),
    [
        (torch.zeros(4, 3), None, "must have size"),
        (torch.zeros(2, 4, 3), torch.ones(2, 5, dtype=torch.bool), "mask must have size"),
    ],
)
def test_from_states_bad_shapes(states, mask, message):
    with pytest.raises(ValueError, match=message):
        Trajectories.from_states(states, mask)


def test_selection_by_position_mask_and_attributes():
    trajs = synthetic()
    assert trajs[2].rows["prompt_id"].tolist() == ["b"]
    assert trajs[1:3].n_sequences == 2
    assert trajs[[4, 0]].rows["prompt_id"].tolist() == ["c", "a"]
    assert torch.equal(trajs[[4, 0]].states[1], trajs.states[0])
    assert trajs[np.array([True, False, True, False, False])].n_sequences == 2
    assert trajs.where(prompt_id="c").n_sequences == 2
    assert trajs.where(prompt_id=["a", "b"], temperature=0.5).n_sequences == 2
    assert trajs.where(prompt_id="zzz").n_sequences == 0
    with pytest.raises(KeyError, match="Unknown row attribute"):
        trajs.where(colour="red")


def test_concat_pads_with_masked_steps():
    long, short = synthetic(n=2, steps=7), synthetic(n=3, steps=4, seed=1)
    both = Trajectories.concat([long, short])
    assert both.states.shape == (5, 1, 7, 3)
    assert both.lengths.tolist() == [4, 7, 4, 4, 4]
    assert (both.states[2:, :, 4:] == 0).all() and (both.tokens[2:, 4:] == -1).all()
    with pytest.raises(ValueError, match="different layers, dim"):
        Trajectories.concat([long, Trajectories.from_states(torch.zeros(1, 2, 4))])
    with pytest.raises(ValueError, match="at least one"):
        Trajectories.concat([])


def test_to_frame_has_one_row_per_valid_step():
    frame = synthetic().to_frame()
    assert len(frame) == 4 + 4 * 7
    assert {"sequence", "step", "token", "logprob", "entropy", "prompt_id"} <= set(frame)


def test_save_and_load_round_trip(tmp_path):
    trajs = synthetic()
    trajs.rows.loc[1, "text"] = "ünïcode ✓"
    path = trajs.save(tmp_path / "sub" / "t.safetensors")
    assert os.listdir(path.parent) == ["t.safetensors"]  # no temporary file left behind
    back = Trajectories.load(path)
    for name in ("states", "mask", "tokens"):
        assert torch.equal(getattr(back, name), getattr(trajs, name))
    assert torch.allclose(back.logprobs, trajs.logprobs, equal_nan=True)
    assert back.rows.equals(trajs.rows)
    assert (back.layers, back.dt, back.time_axis, back.meta) == (
        trajs.layers,
        trajs.dt,
        trajs.time_axis,
        trajs.meta,
    )


def test_save_replaces_atomically(tmp_path):
    path = tmp_path / "t.safetensors"
    synthetic(seed=0).save(path)
    synthetic(seed=1).save(path)
    assert torch.equal(Trajectories.load(path).states, synthetic(seed=1).states)


def test_truncated_file_is_refused(tmp_path):
    path = synthetic().save(tmp_path / "t.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(TrajectoryFileError, match="truncated"):
        Trajectories.load(path)


def test_missing_and_foreign_files_are_refused(tmp_path):
    with pytest.raises(TrajectoryFileError, match="No trajectory file"):
        Trajectories.load(tmp_path / "nothing.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(TrajectoryFileError, match="not an sdelm trajectory file"):
        Trajectories.load(tmp_path / "other.safetensors")


def rewrite_header(path, edit):
    """Edit the sdelm JSON inside a safetensors header, keeping the file valid."""
    data = path.read_bytes()
    size = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + size])
    sdelm_header = json.loads(header["__metadata__"]["sdelm"])
    edit(sdelm_header)
    header["__metadata__"]["sdelm"] = json.dumps(sdelm_header)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + size :])


def test_mismatched_file_is_refused(tmp_path):
    path = synthetic().save(tmp_path / "t.safetensors")
    rewrite_header(path, lambda h: h["rows"]["prompt_id"].pop())
    with pytest.raises(TrajectoryFileError, match=r"inconsistent|not an sdelm"):
        Trajectories.load(path)
    path = synthetic().save(tmp_path / "u.safetensors")
    rewrite_header(path, lambda h: h.update(format="sdelm.trajectories/999"))
    with pytest.raises(TrajectoryFileError, match="format"):
        Trajectories.load(path)


@pytest.mark.parametrize("dt", [0, -0.5, math.nan, math.inf, True, "0.5"])
def test_bad_dt_is_refused(dt):
    with pytest.raises(ValueError, match="dt must be a positive, finite number"):
        Trajectories.from_states(torch.zeros(2, 4, 3), dt=dt)


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ((2.7,), r"layers must be integers .* got 2\.7"),
        ((True,), "layers must be integers"),
        ((3, 3), r"layers must be distinct, got \[3, 3\]"),
    ],
)
def test_bad_layer_labels_are_refused(layers, message):
    with pytest.raises(ValueError, match=message):
        Trajectories.from_states(torch.zeros(2, len(layers), 4, 3), layers=layers)


def test_a_mask_that_is_not_a_prefix_is_refused():
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[2, 1] = False
    with pytest.raises(
        ValueError, match=r"mask must mark a prefix .* sequence 2 has a valid step 2"
    ):
        Trajectories.from_states(torch.zeros(3, 5, 2), mask)


def test_meta_must_be_a_dict_that_agrees_with_the_layers():
    trajs = Trajectories.from_states(
        torch.zeros(2, 2, 4, 3), layers=(0, 6), meta={"layers": [0, 6]}
    )
    with pytest.raises(ValueError, match="meta must be a dict, got list"):
        replace(trajs, meta=["not", "a", "dict"])
    with pytest.raises(
        ValueError, match=r"labels \(0, 7\) contradict meta\['layers'\] = \[0, 6\]"
    ):
        replace(trajs, layers=(0, 7))
    assert trajs.with_layers([6]).meta["layers"] == [6]


def test_nan_states_are_refused_by_the_constructor_naming_the_layer():
    trajs = Trajectories.from_states(torch.zeros(2, 2, 4, 3), layers=(0, 6))
    states = trajs.states.clone()
    states[1, 1, 3, 2] = math.inf
    with pytest.raises(ValueError, match=r"layer 6 \(first at sequence 1, step 3\)"):
        replace(trajs, states=states)
    trajs.states[0, 0, 0, 0] = math.nan  # in place: check_finite finds it
    with pytest.raises(ValueError, match=r"layer 0 \(first at sequence 0, step 0\)"):
        trajs.check_finite()
    trajs.check_finite(6)  # the other layer is clean
