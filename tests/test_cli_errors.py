"""Bad input to the command line: one line, exit code 2, checked before any work; atomic files."""

from __future__ import annotations

import contextvars
import dataclasses
import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

import sdelm
from sdelm import files
from sdelm.cli import main
from sdelm.files import save_atomically, write_json_atomically
from sdelm.generation.shards import MANIFEST
from sdelm.lm import LMLoadError
from tests.conftest import chapter_source

CHAPTER = chapter_source(
    "Checks",
    'x = 1\nrates = [0.5, 1.0]\nname = "a"\n',
    'if min(rates) <= 0:\n    raise ValueError("rates must be > 0")\n'
    'assert x < 100, "x is too large"\nprint("done", x, rates, name)\n',
)


def run(capsys, *argv: str) -> tuple[int, str]:
    """Run the command line in this process; return its exit code and its error output."""
    code = main(list(argv))
    return code, capsys.readouterr().err


def one_line(err: str) -> str:
    """Return the only line of ``err`` (no traceback, no usage)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def trajs() -> sdelm.Trajectories:
    return sdelm.synthetic.as_trajectories(sdelm.synthetic.ou_paths(n=40, steps=8), 0.1, 2)


@pytest.fixture
def trajs_file(trajs, tmp_path) -> Path:
    return trajs.save(tmp_path / "trajs.safetensors")


@pytest.fixture
def checkpoint(trajs, tmp_path) -> Path:
    data = sdelm.prepare(trajs, dim=2)
    model = sdelm.NeuralSDE(2, hidden=8)
    return sdelm.save_checkpoint(model, tmp_path / "m.safetensors", projection=data.projection)


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if the command line loads a language model."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(sdelm, "load_lm", refuse)


UNUSABLE_DEVICES = ["cuda:99"] + ([] if torch.backends.mps.is_available() else ["mps"])


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--seed", "-1"], "--seed"),
        (["--n-passages", "-1"], "--n-passages"),
        (["--n-prompts", "0"], "--n-prompts"),
        (["--n-prompts", "1000"], "--n-prompts"),
        (["--max-new-tokens", "0"], "--max-new-tokens"),
        (["--temperatures", "nan"], "> 0"),
        (["--layers", "-2"], "--layers"),
        *[(["--device", device], "device") for device in UNUSABLE_DEVICES],
    ],
)
def test_extract_checks_arguments_before_loading_the_model(
    capsys, no_model, tmp_path, args, expected
):
    code, err = run(capsys, "extract", "--out", str(tmp_path / "t.safetensors"), *args)
    assert code == 2 and expected in one_line(err)
    assert len(err) < 400  # one sentence, not torch's list of backends
    assert not list(tmp_path.iterdir())


def test_out_must_be_a_file_where_a_file_is_written(capsys, no_model, tmp_path, trajs_file):
    (tmp_path / "folder").mkdir()
    code, err = run(capsys, "extract", "--out", str(tmp_path / "folder"), "--force")
    assert code == 2 and "is a folder" in one_line(err)
    code, err = run(capsys, "fit", str(trajs_file), "--out", str(trajs_file / "m.safetensors"))
    assert code == 2 and "which is a file" in one_line(err)
    long_name = str(tmp_path / ("m" * 240 + ".safetensors"))
    code, err = run(capsys, "fit", str(trajs_file), "--out", long_name)
    assert code == 2 and "at most 160" in one_line(err)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.MonkeyPatch.context() as patch:  # as root, every folder is writable
        access = os.access
        patch.setattr(os, "access", lambda p, mode: Path(p) != locked and access(p, mode))
        code, err = run(capsys, "extract", "--out", str(locked / "t.safetensors"))
    assert code == 2 and "is not writable here" in one_line(err)


def test_out_never_replaces_a_device_or_a_pipe_even_with_force(capsys, tmp_path, trajs_file):
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    code, err = run(capsys, "fit", str(trajs_file), "--out", str(pipe), "--model", "ou",
                    "--dim", "2", "--force")  # fmt: skip
    assert code == 2 and "not a regular file" in one_line(err)
    assert pipe.is_fifo()
    with pytest.raises(FileExistsError, match="Not a regular file"):
        write_json_atomically({"a": 1}, pipe)
    assert pipe.is_fifo()


def test_a_write_without_force_never_replaces_a_file_made_meanwhile(tmp_path):
    target = tmp_path / "out.json"

    def write_while_another_writer_finishes_first() -> None:
        files.never_replace(target)
        with files.atomic_path(target) as tmp:
            tmp.write_text("mine")
            target.write_text("theirs")  # the other writer takes the name first
        raise AssertionError("the write must refuse")

    context = contextvars.copy_context()
    with pytest.raises(FileExistsError, match="Another writer created it meanwhile"):
        context.run(write_while_another_writer_finishes_first)
    assert target.read_text() == "theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temporary left
    write_json_atomically({"a": 1}, target)  # outside that context, a write replaces it
    assert target.read_text().startswith("{")


def test_sharded_extract_refuses_a_file_as_its_folder(capsys, no_model, trajs_file):
    code, err = run(capsys, "extract", "--out", str(trajs_file), "--shard-size", "2",
                    "--n-passages", "0")  # fmt: skip
    assert code == 2 and "is a file" in one_line(err) and str(trajs_file) in err


def test_a_model_that_does_not_load_is_bad_input(capsys, monkeypatch, tmp_path):
    def missing(*args, **kwargs):
        raise LMLoadError("Could not load the language model 'nowhere':\nno such folder.")

    monkeypatch.setattr(sdelm, "load_lm", missing)
    code, err = run(capsys, "extract", "--out", str(tmp_path / "t.safetensors"), "--model",
                    "nowhere", "--device", "cpu")  # fmt: skip
    assert code == 2 and "'nowhere': no such folder" in one_line(err)


def test_force_replaces_the_output_only_with_a_complete_result(capsys, monkeypatch, llama,
                                                               tmp_path):  # fmt: skip
    out = tmp_path / "t.safetensors"
    out.write_bytes(b"a finished extraction")
    monkeypatch.setattr(sdelm, "load_lm", lambda *args, **kwargs: llama)
    args = ["extract", "--out", str(out), "--force", "--n-prompts", "2", "--temperatures", "1",
            "--samples-per-prompt", "1", "--max-new-tokens", "2", "--n-passages", "0",
            "--device", "cpu", "--no-progress"]  # fmt: skip

    def interrupted(*args, **kwargs):
        raise RuntimeError("the generation broke off")

    with monkeypatch.context() as patch:
        patch.setattr(sdelm, "extract", interrupted)
        code, err = run(capsys, *args)
    assert code == 1 and "RuntimeError: the generation broke off" in one_line(err)
    assert out.read_bytes() == b"a finished extraction" and os.listdir(tmp_path) == [out.name]
    code, err = run(capsys, *args)
    assert code == 0, err
    assert len(sdelm.Trajectories.load(out)) == 2 and os.listdir(tmp_path) == [out.name]


def test_fit_and_simulate_read_a_folder_of_shards(capsys, trajs, tmp_path):
    folder = tmp_path / "shards"
    trajs[:24].save(folder / "shard-00000.safetensors")
    trajs[24:].save(folder / "shard-00001.safetensors")
    write_json_atomically({"n_shards": 2}, folder / MANIFEST)
    checkpoint = tmp_path / "ou.safetensors"
    code, err = run(capsys, "fit", str(folder), "--out", str(checkpoint), "--model", "ou",
                    "--dim", "2")  # fmt: skip
    assert code == 0, err
    paths = tmp_path / "paths.safetensors"
    code, err = run(capsys, "simulate", str(checkpoint), "--out", str(paths), "--steps", "3",
                    "--n-paths", "2", "--start-from", str(folder))  # fmt: skip
    assert code == 0, err
    from safetensors.torch import load_file

    assert load_file(paths)["paths"].shape == (len(trajs) * 2, 4, 2)
    # A sequence without a valid step would be simulated from its padding: refused.
    mask = trajs.mask.clone()
    mask[3] = False
    hollow = dataclasses.replace(trajs, mask=mask).save(tmp_path / "hollow.safetensors")
    code, err = run(capsys, "simulate", str(checkpoint), "--out", str(tmp_path / "h.st"),
                    "--start-from", str(hollow))  # fmt: skip
    assert code == 2 and "sequences [3] have no valid step" in one_line(err)
    empty = trajs[:0].save(tmp_path / "empty.safetensors")
    code, err = run(capsys, "simulate", str(checkpoint), "--out", str(tmp_path / "e.st"),
                    "--start-from", str(empty))  # fmt: skip
    assert code == 2 and "holds no sequence" in one_line(err)


def test_fit_refuses_an_unrecorded_layer_nan_states_and_a_negative_seed(
    capsys, trajs, trajs_file, tmp_path
):
    out = str(tmp_path / "m.safetensors")
    code, err = run(capsys, "fit", str(trajs_file), "--out", out, "--layer", "7")
    assert code == 2 and "--layer 7 was not recorded" in one_line(err)
    code, err = run(capsys, "fit", str(trajs_file), "--out", out, "--seed", "-3")
    assert code == 2 and "--seed" in one_line(err)
    trajs.states[3, 0, 2, 1] = float("nan")
    nan_file = trajs.save(tmp_path / "nan.safetensors")
    code, err = run(capsys, "fit", str(nan_file), "--out", out, "--model", "ou", "--dim", "2")
    assert code == 2 and "nan" in one_line(err).lower()
    assert not Path(out).exists()


def test_simulate_refuses_damaged_checkpoints_naming_the_file(capsys, checkpoint, tmp_path):
    out = str(tmp_path / "p.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(checkpoint.read_bytes()[:-50])
    code, err = run(capsys, "simulate", str(truncated), "--out", out)
    assert code == 2 and str(truncated) in one_line(err)
    plain = sdelm.save_checkpoint(sdelm.NeuralSDE(2, hidden=8), tmp_path / "plain.safetensors")
    code, err = run(capsys, "simulate", str(plain), "--out", out, "--start-from", str(checkpoint))
    assert code == 2 and "holds no projection" in one_line(err)
    assert not Path(out).exists()


def test_chapter_checks_parameters_and_never_leaves_a_partial_notebook(capsys, tmp_path):
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "checks.md").write_text(CHAPTER)
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: book/checks\n")
    out = tmp_path / "out.ipynb"
    base = ["chapter", "checks", "--root", str(tmp_path), "--out", str(out), "--no-progress"]
    for override, expected in [
        (["-p", "x", "[0]"], "-p x expects a value like its default 1 (int), got [0] (list)"),
        (["-p", "rates", "0.5"], "-p rates expects a value like its default [0.5, 1.0]"),
        (["-p", "rates", "['a']"], "-p rates expects a value like its default [0.5, 1.0]"),
        (["-p", "name", "3"], "quote strings"),
        (["-p", "y", "1"], "Unknown parameters ['y']"),
    ]:
        code, err = run(capsys, *base, *override)
        assert code == 2 and expected in one_line(err)
    assert not out.exists()  # refused before executing

    out.write_text("a finished notebook")
    # The chapter's code rejects an overridden value: the input is at fault.
    code, err = run(capsys, *base, "--force", "-p", "rates", "[0, 1]")
    assert code == 2 and "ValueError: rates must be > 0" in one_line(err)
    # Any other failure is the chapter's.
    code, err = run(capsys, *base, "--force", "-p", "x", "1000")
    assert code == 1 and "AssertionError: x is too large" in one_line(err)
    assert out.read_text() == "a finished notebook"
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    code, err = run(capsys, *base, "--force", "-p", "rates", "[1, 2.5]", "-p", "name", "'b'")
    assert code == 0, err
    assert "done 1 [1, 2.5] b" in out.read_text()


# ---------------------------------------------------------------------------- atomic files


def test_save_errors_name_the_target_not_the_temporary_file(monkeypatch, tmp_path):
    target = tmp_path / "x.safetensors"

    def full_disk(tensors, path, metadata):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(files, "save_file", full_disk)
    with pytest.raises(OSError, match="No space left") as error:
        save_atomically({"a": torch.zeros(2)}, target, {})
    assert str(target) in str(error.value) and ".tmp" not in str(error.value)

    def serialising(tensors, path, metadata):
        raise SafetensorError("Error while serializing: IoError")

    monkeypatch.setattr(files, "save_file", serialising)
    with pytest.raises(OSError, match=f"Could not write {target}: Error while serializing"):
        save_atomically({"a": torch.zeros(2)}, target, {})
    (tmp_path / "folder").mkdir()
    with pytest.raises(IsADirectoryError, match="folder") as error:
        write_json_atomically({}, tmp_path / "folder")
    assert error.value.filename == str(tmp_path / "folder")
    assert os.listdir(tmp_path) == ["folder"]


def test_stale_temporary_files_are_removed_on_the_next_write(tmp_path):
    target = tmp_path / "x.safetensors"
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)  # fmt: skip
    dead = int(finished.stdout)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        host = files._HOST
        names = {
            "dead": f".x.safetensors.{host}.{dead}.abc123de.tmp",
            "alive": f".x.safetensors.{host}.{alive.pid}.abc123de.tmp",
            "mine": f".x.safetensors.{host}.{os.getpid()}.abc123de.tmp",
            "elsewhere, fresh": ".x.safetensors.other-host.1.abc123de.tmp",
            "elsewhere, old": ".x.safetensors.other-host.2.abc123de.tmp",
            "old version, old": ".x.safetensors.abc123de.tmp",
            "another target": f".x.safetensors.y.{host}.{dead}.abc123de.tmp",
            "not ours": ".x.safetensors.notes.tmp.bak",
        }
        for name in names.values():
            (tmp_path / name).write_text("partial")
        two_days_ago = time.time() - 2 * files.STALE_AFTER_S
        for key in ("elsewhere, old", "old version, old"):
            os.utime(tmp_path / names[key], (two_days_ago, two_days_ago))
        write_json_atomically({"a": 1}, target)
    finally:
        alive.kill()
        alive.wait()
    removed = {key for key, name in names.items() if not (tmp_path / name).exists()}
    assert removed == {"dead", "elsewhere, old", "old version, old"}
    assert target.is_file()


def test_written_files_keep_the_umask_mode(tmp_path):
    previous = os.umask(0o027)
    try:
        write_json_atomically({"a": 1}, tmp_path / "a.json")
    finally:
        os.umask(previous)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o640


def test_a_chapter_whose_model_does_not_load_is_bad_input(capsys, tmp_path):
    (tmp_path / "book").mkdir()
    source = chapter_source(
        "Loads", f'model = "{tmp_path / "no-such-model"}"\n', "sdelm.load_lm(model)\n"
    ).replace("sdelm.load_lm", "import sdelm\nsdelm.load_lm")
    (tmp_path / "book" / "loads.md").write_text(source)
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: book/loads\n")
    code, err = run(capsys, "chapter", "loads", "--root", str(tmp_path), "--out",
                    str(tmp_path / "out.ipynb"), "--no-progress")  # fmt: skip
    assert code == 2 and "could not load its model: cell" in one_line(err)
    assert "LMLoadError" in one_line(err)
