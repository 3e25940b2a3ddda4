"""The cache serves only what the current code and parameters would compute."""

from __future__ import annotations

import json
import multiprocessing
import shutil
import threading
from pathlib import Path

import pytest
import torch

import sdelm
from sdelm import cache


@pytest.fixture(autouse=True)
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SDELM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


class Counter:
    """Counts how often the cache calls compute."""

    def __init__(self) -> None:
        self.calls = 0

    def trajectories(self, scale: float = 1.0) -> sdelm.Trajectories:
        self.calls += 1
        states = scale * torch.arange(2 * 5 * 3, dtype=torch.float32).view(2, 5, 3)
        return sdelm.Trajectories.from_states(states)

    def model(self) -> sdelm.NeuralSDE:
        self.calls += 1
        torch.manual_seed(self.calls)
        return sdelm.NeuralSDE(3, hidden=8)


def entries(folder: Path, kind: str) -> list[Path]:
    return sorted((folder / kind).glob("*.safetensors"))


def test_a_second_call_is_served_and_equal():
    count = Counter()
    first = sdelm.cached_trajectories({"n": 2}, lambda: count.trajectories())
    second = sdelm.cached_trajectories({"n": 2}, lambda: count.trajectories())
    assert count.calls == 1
    assert torch.equal(first.states, second.states)
    other = sdelm.cached_trajectories({"n": 3}, lambda: count.trajectories())
    assert count.calls == 2 and torch.equal(other.states, first.states)


def test_changed_compute_code_computes_afresh():
    count = Counter()
    sdelm.cached_trajectories({"n": 2}, lambda: count.trajectories(1.0))
    again = sdelm.cached_trajectories({"n": 2}, lambda: count.trajectories(2.0))
    assert count.calls == 2
    assert again.states.max() == 2 * 29


def test_changed_sdelm_function_computes_afresh(tmp_path, monkeypatch):
    source = tmp_path / "sdelm-source"
    shutil.copytree(cache.SOURCE_ROOT, source, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(cache, "SOURCE_ROOT", source)
    count = Counter()
    sdelm.cached_model({"fit": 1}, count.model)
    sdelm.cached_model({"fit": 1}, count.model)
    assert count.calls == 1
    fit_py = source / "fit.py"
    text = fit_py.read_text()
    assert "def nll(" in text
    # A comment and blank lines are not code: the entry is still served.
    fit_py.write_text(text.replace("def nll(", "# a comment\n\n\ndef nll(", 1))
    sdelm.cached_model({"fit": 1}, count.model)
    assert count.calls == 1
    # A changed signature of a function that fits depend on: computed afresh.
    fit_py.write_text(text.replace("def nll(", "def nll(_changed: int = 0, *, ", 1))
    sdelm.cached_model({"fit": 1}, count.model)
    assert count.calls == 2


def test_changed_version_computes_afresh(monkeypatch):
    count = Counter()
    sdelm.cached_trajectories({"n": 2}, count.trajectories)
    monkeypatch.setattr(sdelm, "__version__", "999.0")
    sdelm.cached_trajectories({"n": 2}, count.trajectories)
    assert count.calls == 2


def test_other_cpu_kernels_compute_afresh(monkeypatch):
    count = Counter()
    sdelm.cached_trajectories({"n": 2}, count.trajectories)
    monkeypatch.setattr(cache, "kernels", lambda: "AVX512/AUTO")
    sdelm.cached_trajectories({"n": 2}, count.trajectories)
    sdelm.cached_trajectories({"n": 2}, count.trajectories)
    assert count.calls == 2


def entry_for(folder: Path, kind: str, params: dict) -> Path:
    for path in entries(folder, kind):
        if json.loads(path.with_suffix(".json").read_text())["params"] == params:
            return path
    raise AssertionError(f"no entry for {params}")


def test_swapped_or_copied_entries_are_recomputed(empty_cache):
    count = Counter()
    sdelm.cached_trajectories({"n": 1}, lambda: count.trajectories(1.0))
    sdelm.cached_trajectories({"n": 2}, lambda: count.trajectories(1.0))
    one = entry_for(empty_cache, "trajectories", {"n": 1})
    two = entry_for(empty_cache, "trajectories", {"n": 2})
    # Entry 2 is overwritten by another data file: its checksum no longer matches.
    other = sdelm.Trajectories.from_states(torch.zeros(2, 5, 3))
    other.save(two)
    served = sdelm.cached_trajectories({"n": 2}, lambda: count.trajectories(1.0))
    assert count.calls == 3 and served.states.max() == 29
    # Data file and record of entry 1 copied together over entry 2: the record names n = 1.
    shutil.copy(one, two)
    shutil.copy(one.with_suffix(".json"), two.with_suffix(".json"))
    sdelm.cached_trajectories({"n": 2}, lambda: count.trajectories(1.0))
    assert count.calls == 4
    sdelm.cached_trajectories({"n": 1}, lambda: count.trajectories(1.0))
    assert count.calls == 4  # entry 1 itself was untouched


def test_a_lock_link_or_a_folder_in_an_entry_s_place_is_cleared(empty_cache, tmp_path):
    count = Counter()
    sdelm.cached_trajectories({"n": 1}, lambda: count.trajectories(1.0))
    entry = entry_for(empty_cache, "trajectories", {"n": 1})
    entry.unlink()
    entry.mkdir()  # a folder where the entry was: before, every later run raised
    lock = entry.with_suffix(".lock")
    lock.unlink(missing_ok=True)
    lock.symlink_to(tmp_path / "gone" / "x.lock")  # a dangling link: the lock failed forever
    served = sdelm.cached_trajectories({"n": 1}, lambda: count.trajectories(1.0))
    assert count.calls == 2 and served.states.max() == 29 and entry.is_file()


def test_a_truncated_fit_is_refitted_not_raised(empty_cache):
    count = Counter()
    model = sdelm.cached_model({"fit": 1}, count.model)
    (path,) = entries(empty_cache, "fits")
    path.write_bytes(path.read_bytes()[:100])
    refitted = sdelm.cached_model({"fit": 1}, count.model)
    assert count.calls == 2
    assert isinstance(refitted, sdelm.NeuralSDE)
    served = sdelm.cached_model({"fit": 1}, count.model)
    assert count.calls == 2
    for a, b in zip(refitted.parameters(), served.parameters(), strict=True):
        assert torch.equal(a, b)
    del model


def test_a_checkpoint_of_another_shape_with_a_forged_record_is_refitted(empty_cache):
    count = Counter()
    sdelm.cached_model({"fit": 1}, count.model)
    (path,) = entries(empty_cache, "fits")
    sdelm.save_checkpoint(sdelm.NeuralSDE(3, hidden=16), path)  # wrong `hidden`
    record = json.loads(path.with_suffix(".json").read_text())
    record["sha256"] = cache._file_hash(path)
    record["params"] = {"fit": 2}
    path.with_suffix(".json").write_text(json.dumps(record))
    model = sdelm.cached_model({"fit": 1}, count.model)
    assert count.calls == 2
    assert model.config["hidden"] == 8


def test_a_missing_record_is_recomputed(empty_cache):
    count = Counter()
    sdelm.cached_trajectories({"n": 1}, count.trajectories)
    (path,) = entries(empty_cache, "trajectories")
    path.with_suffix(".json").unlink()
    sdelm.cached_trajectories({"n": 1}, count.trajectories)
    assert count.calls == 2
    assert path.with_suffix(".json").is_file()


def test_two_readers_of_a_damaged_entry_do_not_race(empty_cache):
    count = Counter()
    sdelm.cached_trajectories({"n": 1}, count.trajectories)
    (path,) = entries(empty_cache, "trajectories")
    path.write_bytes(b"damaged")
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def read() -> None:
        barrier.wait()
        try:
            sdelm.cached_trajectories({"n": 1}, count.trajectories)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=read) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sdelm.Trajectories.load(path).n_sequences == 2


def _fill(folder: str, start: multiprocessing.synchronize.Barrier) -> None:
    import os
    import time

    os.environ["SDELM_CACHE"] = folder

    def compute() -> sdelm.Trajectories:
        with (Path(folder) / "computed.log").open("a") as log:
            log.write(f"{os.getpid()}\n")
        time.sleep(1.0)  # long enough for the other process to miss the entry too
        return Counter().trajectories()

    start.wait()
    sdelm.cached_trajectories({"n": 7}, compute)


def test_two_processes_filling_one_entry_compute_it_once(empty_cache):
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(2)
    workers = [context.Process(target=_fill, args=(str(empty_cache), start)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    # The second process waited for the first one's lock, then was served its entry.
    assert len((empty_cache / "computed.log").read_text().split()) == 1
    (path,) = entries(empty_cache, "trajectories")
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporaries
    stored = sdelm.Trajectories.load(path)
    assert torch.equal(stored.states, Counter().trajectories().states)


def test_a_changed_value_that_compute_reads_computes_afresh():
    count = Counter()
    for scale in (1.0, 1.0, 2.0):
        sdelm.cached_trajectories({"n": 2}, lambda scale=scale: count.trajectories(scale))
    assert count.calls == 2  # a default argument counts by value

    def reading(scale: float):
        return lambda: count.trajectories(scale)  # `scale` from the enclosing scope

    served = [sdelm.cached_trajectories({"n": 3}, reading(s)) for s in (1.0, 1.0, 2.0)]
    assert count.calls == 4
    assert [float(t.states.max()) for t in served] == [29.0, 29.0, 58.0]


def test_cached_fit_is_named_by_model_data_and_arguments(monkeypatch):
    fits = []
    real_fit = cache.fit

    def counting_fit(*args, **kwargs):
        fits.append(kwargs)
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(cache, "fit", counting_fit)
    paths = sdelm.synthetic.ou_paths(n=40, steps=12, seed=0)
    data = sdelm.prepare(sdelm.synthetic.as_trajectories(paths, dt=0.1), dim=None, seed=0)
    args = dict(epochs=3, seed=0, progress=False)

    def chapter_a():
        return sdelm.cache.cached_fit(sdelm.NeuralSDE(data.dim, hidden=8, seed=0), data, **args)

    def chapter_b():  # other code, same fit: shared
        model = sdelm.NeuralSDE(data.dim, hidden=8, seed=0)
        return sdelm.cache.cached_fit(model, data, **{**args, "progress": True})

    first, second = chapter_a(), chapter_b()
    assert len(fits) == 1
    for a, b in zip(first.parameters(), second.parameters(), strict=True):
        assert torch.equal(a, b)
    sdelm.cache.cached_fit(sdelm.NeuralSDE(data.dim, hidden=8, seed=0), data, **args, lr=1e-2)
    sdelm.cache.cached_fit(sdelm.NeuralSDE(data.dim, hidden=8, seed=1), data, **args)
    other = sdelm.prepare(sdelm.synthetic.as_trajectories(paths, dt=0.1), dim=None, seed=1)
    sdelm.cache.cached_fit(sdelm.NeuralSDE(data.dim, hidden=8, seed=0), other, **args)
    assert len(fits) == 4


def test_a_fit_is_keyed_by_the_modules_it_reaches_only(tmp_path, monkeypatch):
    source = tmp_path / "sdelm-source"
    shutil.copytree(cache.SOURCE_ROOT, source, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(cache, "SOURCE_ROOT", source)
    fits = []
    real_fit = cache.fit
    monkeypatch.setattr(cache, "fit", lambda *a, **k: fits.append(k) or real_fit(*a, **k))
    paths = sdelm.synthetic.ou_paths(n=20, steps=8, seed=0)
    data = sdelm.prepare(sdelm.synthetic.as_trajectories(paths, dt=0.1), dim=None, seed=0)

    def fitted():
        model = sdelm.NeuralSDE(data.dim, hidden=8, seed=0)
        return sdelm.cached_fit(model, data, epochs=2, seed=0, progress=False)

    fitted()
    assert cache._module_file("sdelm.analysis.phase", source) not in cache._module_closure(
        ["sdelm.cache", "sdelm.models"], source
    )
    # A module that a fit cannot reach (the phase-space analysis): still served.
    phase = source / "analysis" / "phase.py"
    phase.write_text(phase.read_text() + "\n\nUNRELATED = 1\n")
    fitted()
    assert len(fits) == 1
    # The module of the model class: refitted.
    models = source / "models" / "neural.py"
    models.write_text(models.read_text() + "\n\nCHANGED = 1\n")
    fitted()
    assert len(fits) == 2
    # A module the fit imports through others (the trajectory format): refitted.
    trajectories = source / "trajectories.py"
    trajectories.write_text(trajectories.read_text() + "\n\nCHANGED = 1\n")
    fitted()
    assert len(fits) == 3


def test_trajectories_of_a_local_model_are_keyed_by_its_weights(empty_cache, tmp_path):
    import shutil

    from tests.conftest import byte_tokenizer, tiny_model

    folder = tmp_path / "model"
    tiny_model("llama").save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    arguments = dict(n_prompts=2, temperatures=[1.0], samples_per_prompt=1, max_new_tokens=3,
                     n_passages=0, device="cpu", progress=False)  # fmt: skip
    first = sdelm.collect_trajectories(str(folder), **arguments)
    assert torch.equal(sdelm.collect_trajectories(str(folder), **arguments).states, first.states)
    # New weights under the same name: before, the cache served the old model's states.
    shutil.rmtree(folder)
    model = tiny_model("llama")
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(1.5)
    model.save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    again = sdelm.collect_trajectories(str(folder), **arguments)
    assert not torch.equal(again.states, first.states)
