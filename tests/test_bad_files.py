"""Trajectory files and shard folders that contradict themselves are refused on load."""

from __future__ import annotations

import json
import math
import os
import shutil
import time

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sdelm import Trajectories, TrajectoryFileError
from tests.test_trajectories import rewrite_header, synthetic


def saved(tmp_path, name="t.safetensors", **kwargs):
    """A valid file whose meta records its layers, as an extraction's does."""
    trajs = synthetic(**kwargs)
    trajs.meta["layers"] = list(trajs.layers)
    return trajs, trajs.save(tmp_path / name)


def rewrite_tensors(path, edit):
    """Edit the tensors of a safetensors file, keeping its header's metadata."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {name: handle.get_tensor(name).clone() for name in handle.keys()}
    edit(tensors)
    save_file(tensors, str(path), metadata=metadata)


# ---------------------------------------------------------------- header fields
@pytest.mark.parametrize("dt", [0, -1.0, math.nan, math.inf, "1"])
def test_a_bad_dt_in_the_header_is_refused(tmp_path, dt):
    _, path = saved(tmp_path)
    rewrite_header(path, lambda h: h.update(dt=dt))
    with pytest.raises(TrajectoryFileError, match="header field 'dt' must be a positive, finite"):
        Trajectories.load(path)


@pytest.mark.parametrize("dt", [1e-300, 1e-30, 1e30])
def test_a_dt_that_float32_likelihoods_cannot_use_is_refused(tmp_path, dt):
    # Before, dt = 1e-300 fitted to a NaN NLL and wrote a checkpoint; 1e-30 gave an NLL of 1e30.
    _, path = saved(tmp_path)
    rewrite_header(path, lambda h: h.update(dt=dt))
    with pytest.raises(TrajectoryFileError, match=r"lies outside .*rescale time"):
        Trajectories.load(path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda h: h.update(layers=[5]), r"labels \(5,\) contradict meta\['layers'\] = \[0\]"),
        (lambda h: h.update(layers=[2.7]), "layers must be integers"),
        (lambda h: h.update(meta=["a", "list"]), "header field 'meta' must be a JSON object"),
        (lambda h: h["rows"].pop("text"), r"header field 'rows' lacks the columns \['text'\]"),
        (lambda h: h["rows"]["prompt"].pop(), "column 'prompt' must list one value per sequence"),
        (lambda h: h.pop("time_axis"), r"the header lacks the fields \['time_axis'\]"),
        (lambda h: h.update(time_axis="depth"), "time_axis must be 'token' or 'layer'"),
        # Row values that no extraction writes.
        (lambda h: h["rows"]["temperature"].__setitem__(0, "hot"), "'temperature' must hold"),
        (lambda h: h["rows"]["temperature"].__setitem__(0, -5), "'temperature' must hold"),
        (lambda h: h["rows"]["prompt_id"].__setitem__(0, ["a", "b"]), "'prompt_id' must hold"),
    ],
)
def test_a_header_that_contradicts_itself_is_refused(tmp_path, edit, message):
    _, path = saved(tmp_path)
    rewrite_header(path, edit)
    with pytest.raises(TrajectoryFileError, match=message):
        Trajectories.load(path)


@pytest.mark.parametrize(
    ("name", "value", "rule"),
    [("tokens", -7, "token ids >= 0, or -1 for none"),
     ("logprobs", 10.0, "log-probabilities <= 0"),
     ("entropies", -3.0, "entropies >= 0")],
)  # fmt: skip
def test_step_values_that_no_extraction_writes_are_refused(tmp_path, name, value, rule):
    _, path = saved(tmp_path)
    rewrite_tensors(path, lambda tensors: tensors[name].__setitem__((1, 0), value))
    with pytest.raises(TrajectoryFileError, match=rf"{name}' breaks its rule \({rule}\)"):
        Trajectories.load(path)


def test_a_deeply_nested_header_is_refused_not_a_recursion_error(tmp_path):
    trajs, _ = saved(tmp_path)
    path = tmp_path / "deep.safetensors"
    tensors = {name: getattr(trajs, name) for name in ("states", "mask", "tokens")}
    save_file(tensors, str(path), metadata={"sdelm": "[" * 100_000 + "]" * 100_000})
    with pytest.raises(TrajectoryFileError, match="not an sdelm trajectory file"):
        Trajectories.load(path)


def test_a_header_that_is_not_an_object_is_refused(tmp_path):
    trajs, _ = saved(tmp_path)
    path = tmp_path / "list.safetensors"
    tensors = {name: getattr(trajs, name) for name in ("states", "mask", "tokens")}
    save_file(tensors, str(path), metadata={"sdelm": json.dumps([1, 2])})
    with pytest.raises(TrajectoryFileError, match="must be a JSON object, got list"):
        Trajectories.load(path)


# ---------------------------------------------------------------- tensors
def test_nan_states_in_a_file_are_refused_naming_sequence_step_and_layer(tmp_path):
    _, path = saved(tmp_path)

    def poison(tensors):
        tensors["states"][2, 0, 5, 1] = math.nan

    rewrite_tensors(path, poison)
    with pytest.raises(
        TrajectoryFileError, match=r"NaN or inf .* layer 0 \(first at sequence 2, step 5\)"
    ):
        Trajectories.load(path)


def test_a_mask_that_is_not_a_prefix_is_refused(tmp_path):
    _, path = saved(tmp_path)

    def gap(tensors):
        tensors["mask"][3, 2] = False

    rewrite_tensors(path, gap)
    with pytest.raises(TrajectoryFileError, match=r"mask must mark a prefix .* sequence 3"):
        Trajectories.load(path)


@pytest.mark.parametrize(
    ("name", "dtype", "message"),
    [
        ("states", torch.int32, "tensor 'states' has dtype torch.int32; expected a floating"),
        ("mask", torch.uint8, "tensor 'mask' has dtype torch.uint8; expected torch.bool"),
        ("tokens", torch.float32, "tensor 'tokens' has dtype torch.float32; expected an integer"),
        ("logprobs", torch.int64, "tensor 'logprobs' has dtype torch.int64"),
    ],
)
def test_tensors_of_the_wrong_dtype_are_refused(tmp_path, name, dtype, message):
    _, path = saved(tmp_path)

    def convert(tensors):
        tensors[name] = tensors[name].to(dtype)

    rewrite_tensors(path, convert)
    with pytest.raises(TrajectoryFileError, match=message):
        Trajectories.load(path)


def test_half_precision_states_are_widened_to_float32(tmp_path):
    trajs, path = saved(tmp_path)

    def halve(tensors):
        tensors["states"] = tensors["states"].half()

    rewrite_tensors(path, halve)
    back = Trajectories.load(path)
    assert back.states.dtype == torch.float32
    assert torch.equal(back.states, trajs.states.half().float())


def test_a_missing_tensor_is_named_and_older_files_without_temperatures_load(tmp_path):
    trajs, path = saved(tmp_path)
    rewrite_tensors(path, lambda tensors: tensors.pop("temperatures"))
    back = Trajectories.load(path)  # an older file: temperatures come from the rows
    per_row = torch.tensor(trajs.rows["temperature"].to_list(), dtype=torch.float32)
    expected = torch.where(trajs.mask, per_row[:, None], math.nan)
    assert torch.allclose(back.temperatures, expected, equal_nan=True)
    rewrite_tensors(path, lambda tensors: tensors.pop("entropies"))
    with pytest.raises(TrajectoryFileError, match=r"lacks the tensors \['entropies'\]"):
        Trajectories.load(path)


# ---------------------------------------------------------------- memory, not the file
def test_loaded_trajectories_do_not_change_when_the_file_is_overwritten(tmp_path):
    trajs, path = saved(tmp_path, seed=0)
    _, other = saved(tmp_path, name="other.safetensors", seed=1)
    back = Trajectories.load(path)
    shutil.copyfile(other, path)  # in place, as `cp other a` does
    assert torch.equal(back.states, trajs.states)
    assert not torch.equal(Trajectories.load(path).states, trajs.states)


def test_loaded_trajectories_survive_a_truncated_file(tmp_path):
    # A memory-mapped view would kill this process with SIGBUS when touched; the test above
    # fails first if the tensors are views of the file.
    trajs, path = saved(tmp_path)
    back = Trajectories.load(path)
    os.truncate(path, 16)
    assert torch.equal(back.states, trajs.states) and torch.equal(back.mask, trajs.mask)
    with pytest.raises(TrajectoryFileError, match="truncated"):
        Trajectories.load(path)


# ---------------------------------------------------------------- shard folders
def shard_folder(tmp_path, n_shards=2, **manifest):
    folder = tmp_path / "shards"
    folder.mkdir()
    for i in range(n_shards):
        synthetic(seed=i).save(folder / f"shard-{i:05d}.safetensors")
    (folder / "manifest.json").write_text(json.dumps({"n_shards": n_shards, **manifest}))
    return folder


def test_a_shard_folder_loads_as_one_set(tmp_path):
    trajs = Trajectories.load(shard_folder(tmp_path))
    assert torch.equal(
        trajs.states, torch.cat([synthetic(seed=0).states, synthetic(seed=1).states])
    )


def test_a_huge_shard_count_is_checked_against_the_files_before_allocating(tmp_path):
    folder = shard_folder(tmp_path)
    (folder / "manifest.json").write_text('{"n_shards": 1000000000}')
    start = time.perf_counter()
    with pytest.raises(
        TrajectoryFileError, match=r"999999998 of 1000000000 shards missing \(shard-00002"
    ):
        Trajectories.load(folder)
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        ('{"n_shards": 0}', "n_shards=0; it must be a positive integer"),
        ('{"n_shards": true}', "n_shards=True; it must be a positive integer"),
        ('{"n_shards": 2.0}', "n_shards=2.0; it must be a positive integer"),
        ('{"shards": 2}', "not a shard manifest with an 'n_shards' entry"),
        ("[2]", "not a shard manifest"),
        ('{"n_shards": 2', "not a shard manifest"),
    ],
)
def test_a_bad_manifest_is_refused(tmp_path, manifest, message):
    folder = shard_folder(tmp_path)
    (folder / "manifest.json").write_text(manifest)
    with pytest.raises(TrajectoryFileError, match=message):
        Trajectories.load(folder)


def test_shards_that_do_not_fit_together_are_refused(tmp_path):
    folder = shard_folder(tmp_path)
    Trajectories.from_states(torch.zeros(2, 4, 5)).save(folder / "shard-00001.safetensors")
    with pytest.raises(TrajectoryFileError, match="do not fit together: Cannot concatenate"):
        Trajectories.load(folder)


def test_a_file_too_large_for_memory_is_refused_before_reading(tmp_path, monkeypatch):
    _, path = saved(tmp_path)
    monkeypatch.setattr("sdelm.devices.available_memory", lambda device: 1000)
    with pytest.raises(TrajectoryFileError, match=r"GiB of cpu memory for the tensors of .*t\.s"):
        Trajectories.load(path)


def test_tensors_sdelm_does_not_write_are_not_read(tmp_path):
    trajs, path = saved(tmp_path)
    rewrite_tensors(path, lambda tensors: tensors.update(extra=torch.zeros(3)))
    assert torch.equal(Trajectories.load(path).states, trajs.states)
