"""Sharded extraction: same sequences as one run, resumes after a hard kill, two processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import sdelm
from sdelm.generation.shards import extract_shards, shard_paths
from sdelm.trajectories import TrajectoryFileError

PROMPTS = ["Tell me a story.", "What is a river?", "Name a colour.", "Count to three.", "Hi!"]
ARGS = dict(temperatures=[1.0, 1.5], max_new_tokens=5, batch_size=4, seed=3)


@pytest.fixture(scope="module")
def whole(tiny_folder) -> sdelm.Trajectories:
    lm = sdelm.load_lm(str(tiny_folder), device="cpu")
    return sdelm.extract(lm, PROMPTS, progress=False, **ARGS)


def same_sequences(a: sdelm.Trajectories, b: sdelm.Trajectories) -> None:
    assert len(a) == len(b)
    cols = ["prompt_id", "temperature", "sample", "text"]
    assert a.rows[cols].equals(b.rows[cols])
    steps = min(a.n_steps, b.n_steps)
    assert torch.equal(a.tokens[:, :steps], b.tokens[:, :steps])
    assert torch.allclose(a.states[:, :, :steps], b.states[:, :, :steps], atol=1e-5)


def run(script: str, *args: str, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [*(launcher or [sys.executable]), "-c" if launcher is None else script, *(
            [script] if launcher is None else []), *args],
        capture_output=True, text=True, timeout=600, env=env, check=False,
    )  # fmt: skip


EXTRACT = textwrap.dedent("""\
    import json, os, signal, sys
    import sdelm
    from sdelm.generation.shards import extract_shards
    folder, model, kill_after = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if kill_after:
        saved = []
        original = sdelm.Trajectories.save
        def save_then_die(self, path):
            result = original(self, path)
            saved.append(path)
            if len(saved) == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)  # a hard interruption, no clean-up
            return result
        sdelm.Trajectories.save = save_then_die
    prompts = %r
    written = extract_shards(model, prompts, folder, shard_size=2, **%r)
    print(json.dumps([str(p) for p in written]))
""") % (PROMPTS, {**ARGS, "temperatures": list(ARGS["temperatures"])})


def test_shards_hold_exactly_the_sequences_of_one_run(tiny_folder, whole, tmp_path):
    written = extract_shards(str(tiny_folder), PROMPTS, tmp_path, shard_size=2, **ARGS)
    assert written == shard_paths(tmp_path, 3)
    same_sequences(sdelm.Trajectories.load(tmp_path), whole)
    assert extract_shards(str(tiny_folder), PROMPTS, tmp_path, shard_size=2, **ARGS) == []
    with pytest.raises(ValueError, match="different extraction"):
        extract_shards(str(tiny_folder), PROMPTS[:3], tmp_path, shard_size=2, **ARGS)
    with pytest.raises(ValueError, match="shard_size"):
        extract_shards(str(tiny_folder), PROMPTS, tmp_path / "x", shard_size=0)


def test_a_killed_extraction_resumes_without_loss_or_duplicates(tiny_folder, whole, tmp_path):
    killed = run(EXTRACT, str(tmp_path), str(tiny_folder), "2")
    assert killed.returncode == -9, killed.stderr
    done = [p for p in shard_paths(tmp_path, 3) if p.is_file()]
    assert len(done) == 2 and not list(tmp_path.glob(".*.tmp"))
    with pytest.raises(TrajectoryFileError, match="1 of 3 shards missing"):
        sdelm.Trajectories.load(tmp_path)
    before = {p: p.stat().st_mtime_ns for p in done}
    resumed = run(EXTRACT, str(tmp_path), str(tiny_folder), "0")
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip().endswith('shard-00002.safetensors"]')
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())  # not redone
    trajs = sdelm.Trajectories.load(tmp_path)
    assert not trajs.rows.duplicated(["prompt_id", "temperature", "sample"]).any()
    same_sequences(trajs, whole)


def test_two_processes_share_the_shards(tiny_folder, whole, tmp_path):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--master_port", "29531"]  # fmt: skip
    script = tmp_path / "extract.py"
    script.write_text(EXTRACT)
    result = run(str(script), str(tmp_path / "out"), str(tiny_folder), "0", launcher=launcher)
    assert result.returncode == 0, result.stderr[-3000:]
    per_rank = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("[")]
    assert len(per_rank) == 2 and all(per_rank)  # both processes extracted shards
    assert sorted(Path(p).name for rank in per_rank for p in rank) == [
        p.name for p in shard_paths(tmp_path / "out", 3)
    ]
    same_sequences(sdelm.Trajectories.load(tmp_path / "out"), whole)


def test_a_damaged_shard_is_extracted_again(tiny_folder, whole, tmp_path):
    extract_shards(str(tiny_folder), PROMPTS, tmp_path, shard_size=2, **ARGS)
    damaged = shard_paths(tmp_path, 3)[1]
    damaged.write_bytes(damaged.read_bytes()[:-100])  # e.g. a copy that broke off
    with pytest.raises(TrajectoryFileError, match="truncated"):
        sdelm.Trajectories.load(tmp_path)
    with pytest.warns(UserWarning, match=r"damaged or foreign shard again.*shard-00001"):
        written = extract_shards(str(tiny_folder), PROMPTS, tmp_path, shard_size=2, **ARGS)
    assert written == [damaged]
    same_sequences(sdelm.Trajectories.load(tmp_path), whole)


def test_a_copied_or_foreign_shard_is_refused_and_extracted_again(tiny_folder, whole, tmp_path):
    extract_shards(str(tiny_folder), PROMPTS, tmp_path, shard_size=2, **ARGS)
    paths = shard_paths(tmp_path, 3)
    original = paths[1].read_bytes()
    paths[1].write_bytes(paths[0].read_bytes())  # cp shard-00000 shard-00001
    with pytest.raises(TrajectoryFileError, match=r"shard-00001.*holds the prompts .*copied"):
        sdelm.Trajectories.load(tmp_path)
    with pytest.warns(UserWarning, match=r"foreign shard again.*shard-00001"):
        written = extract_shards(str(tiny_folder), PROMPTS, tmp_path, shard_size=2, **ARGS)
    assert written == [paths[1]] and paths[1].read_bytes() == original
    # The same prompts from another run (another seed): its meta gives it away.
    other = tmp_path / "other"
    extract_shards(str(tiny_folder), PROMPTS, other, shard_size=2, **{**ARGS, "seed": 7})
    paths[2].write_bytes(shard_paths(other, 3)[2].read_bytes())
    with pytest.raises(TrajectoryFileError, match=r"another extraction .*seed 7 \(manifest: "):
        sdelm.Trajectories.load(tmp_path)


def test_a_manifest_edited_to_fewer_shards_is_refused(tiny_folder, tmp_path):
    extract_shards(str(tiny_folder), PROMPTS, tmp_path, shard_size=2, **ARGS)
    manifest = tmp_path / "manifest.json"
    edited = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**edited, "n_shards": 2}))
    with pytest.raises(TrajectoryFileError, match=r"n_shards=2, but its .* make 3: it was edited"):
        sdelm.Trajectories.load(tmp_path)
    manifest.write_text(json.dumps({**edited, "n_shards": 2, "prompts": edited["prompts"][:4]}))
    with pytest.raises(TrajectoryFileError, match=r"shard-00002.*beyond the 2 shards"):
        sdelm.Trajectories.load(tmp_path)


def test_a_file_or_a_foreign_manifest_is_refused_before_any_work(tmp_path):
    not_a_folder = tmp_path / "trajs.safetensors"
    not_a_folder.write_bytes(b"a file")
    with pytest.raises(ValueError, match="is a file, but a sharded extraction writes a folder"):
        extract_shards("no-model-needed", PROMPTS, not_a_folder, shard_size=2)
    # A 35-byte manifest that claims a billion shards: compared, never sized from.
    (tmp_path / "huge").mkdir()
    (tmp_path / "huge" / "manifest.json").write_text(json.dumps({"n_shards": 1_000_000_000}))
    with pytest.raises(ValueError, match="different extraction"):
        extract_shards("no-model-needed", PROMPTS, tmp_path / "huge", shard_size=2)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "manifest.json").write_text('{"n_shards": ')
    with pytest.raises(ValueError, match=r"manifest\.json is not a JSON manifest"):
        extract_shards("no-model-needed", PROMPTS, tmp_path / "broken", shard_size=2)
    assert os.listdir(tmp_path / "huge") == ["manifest.json"]


def test_replace_clears_a_different_extraction_and_cpu_keeps_the_cpu(tiny_folder, whole, tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"n_shards": 9}))
    (tmp_path / "shard-00007.safetensors").write_bytes(b"another run's shard")
    with pytest.raises(ValueError, match="different extraction"):
        extract_shards(str(tiny_folder), PROMPTS, tmp_path, shard_size=2, **ARGS)
    extract_shards(str(tiny_folder), PROMPTS, tmp_path, shard_size=2, device="cpu",
                   replace=True, **ARGS)  # fmt: skip
    assert not (tmp_path / "shard-00007.safetensors").exists()
    same_sequences(sdelm.Trajectories.load(tmp_path), whole)
