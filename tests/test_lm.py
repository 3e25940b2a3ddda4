"""Loading models: local folders, the embedded SmolLM2, devices and failures."""

from __future__ import annotations

import importlib
import importlib.util
import time

import huggingface_hub.constants
import pytest
import torch

import sdelm
from sdelm import LMLoadError, load_lm, resolve_device
from tests.conftest import byte_tokenizer, tiny_model

lm_module = importlib.import_module("sdelm.lm")
embedded_module = importlib.import_module("sdelm.embedded")


def test_a_local_folder_loads_through_from_pretrained(tmp_path):
    tiny_model("llama").save_pretrained(tmp_path)
    byte_tokenizer().save_pretrained(tmp_path)
    lm = load_lm(str(tmp_path), device="cpu")
    assert lm.n_layers == 3 and lm.hidden_size == 32
    assert lm.tokenizer.padding_side == "left" and lm.tokenizer.pad_token is not None
    assert lm.default_layers() == (0, 1, 3)
    trajs = sdelm.extract(lm, ["hi"], max_new_tokens=2, progress=False)
    assert trajs.meta["model"] == str(tmp_path)


def test_an_unreachable_or_unknown_model_names_the_offline_default(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(LMLoadError, match="smollm2-135m-instruct"):
        load_lm("no-such-organisation/no-such-model")


def test_an_unknown_model_fails_fast_when_the_hub_is_unreachable(monkeypatch):
    """No hub here: the probe fails in seconds instead of a minute of download retries."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    probed = []
    original = lm_module._hub_unreachable
    monkeypatch.setattr(lm_module, "_hub_unreachable", lambda: probed.append(1) or original())
    start = time.perf_counter()
    with pytest.raises(LMLoadError, match="smollm2-135m-instruct"):
        load_lm("no-such-organisation/no-such-model-sdelm", device="cpu")
    assert time.perf_counter() - start < 10
    assert probed == [1]


def test_a_silent_hub_means_the_local_cache_only(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(lm_module, "_hub_unreachable", lambda: "ConnectTimeout: timed out")
    with pytest.raises(LMLoadError, match=r"did not answer: ConnectTimeout.*local hub cache"):
        load_lm("no-such-organisation/no-such-model-sdelm", device="cpu")


def test_a_folder_that_is_not_a_model_says_what_it_lacks(tmp_path):
    with pytest.raises(
        LMLoadError, match=r"local folder but not a model: it lacks config\.json, "
    ):
        load_lm(str(tmp_path), device="cpu")
    byte_tokenizer().save_pretrained(tmp_path)
    with pytest.raises(
        LMLoadError, match=r"lacks config\.json, model weights \(\*\.safetensors\)\."
    ):
        load_lm(str(tmp_path), device="cpu")
    tokenizer_only = {p.name for p in tmp_path.iterdir()}
    tiny_model("llama").save_pretrained(tmp_path)
    for name in tokenizer_only:
        (tmp_path / name).unlink()
    with pytest.raises(LMLoadError, match=r"lacks tokenizer files \(tokenizer\.json or"):
        load_lm(str(tmp_path), device="cpu")


def test_a_missing_folder_is_named(tmp_path):
    with pytest.raises(LMLoadError, match="There is no folder"):
        load_lm(str(tmp_path / "not" / "here"), device="cpu")
    with pytest.raises(LMLoadError, match="There is no folder"):
        load_lm(tmp_path / "not-here", device="cpu")  # a Path is a folder name too
    with pytest.raises(TypeError, match="name must be a model name, folder or hub id"):
        load_lm(None, device="cpu")


def test_pickled_weights_are_refused_never_loaded(tmp_path, monkeypatch):
    model = tiny_model("llama")
    model.config.save_pretrained(tmp_path)
    byte_tokenizer().save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")

    def no_unpickling(*args, **kwargs):
        raise AssertionError("a pickle was loaded")

    monkeypatch.setattr(torch, "load", no_unpickling)
    with pytest.raises(LMLoadError, match=r"only as pickle files \(pytorch_model\.bin\)"):
        load_lm(str(tmp_path), device="cpu")


@pytest.mark.parametrize("name", list(embedded_module.EMBEDDED))
def test_a_missing_embedded_package_names_its_pip_command(name, tmp_path, monkeypatch):
    """Simulated by hiding the packages from the import system (nothing is uninstalled)."""
    monkeypatch.setenv("SDELM_CACHE", str(tmp_path))  # no cached copy to fall back on
    embedded = embedded_module.EMBEDDED[name]
    hidden = {embedded.package, *embedded.parts}
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda module, *a: None if module in hidden else find_spec(module, *a),
    )
    with pytest.raises(LMLoadError, match="needs the package") as error:
        load_lm(name, device="cpu")
    assert f"({embedded.licence})" in str(error.value)
    assert f"`{embedded.install}`" in str(error.value)
    assert all(f"`{package.replace('_', '-')}`" in str(error.value) for package in hidden)
    assert not any(tmp_path.iterdir()), "nothing is converted without the packages"


def test_device_resolution():
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="not a device"):
        resolve_device("abacus")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


@pytest.mark.integration
def test_embedded_model_loads_and_is_cached(smollm2):
    assert smollm2.n_layers == 30 and smollm2.hidden_size == 576
    assert type(smollm2.model).__name__ == "LlamaForCausalLM"
    assert smollm2.tokenizer.chat_template
    cached = sdelm.cache_dir() / "models" / "smollm2-135m-instruct-float32"
    assert (cached / "model.safetensors").is_file()
    assert "134.5M parameters" in repr(smollm2)


@pytest.mark.integration
def test_first_load_of_the_embedded_model_is_silent(tmp_path, monkeypatch, capfd):
    """A chapter's first load must print nothing (nbval compares stderr too)."""
    monkeypatch.setenv("SDELM_CACHE", str(tmp_path))
    lm = load_lm(device="cpu")
    assert (tmp_path / "models" / "smollm2-135m-instruct-float32" / "config.json").is_file()
    assert lm.n_layers == 30
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""


def test_a_truncated_model_copy_is_converted_again_and_old_scratch_removed(tmp_path, monkeypatch):
    import os
    import subprocess

    monkeypatch.setenv("SDELM_CACHE", str(tmp_path))
    folder = embedded_module.copy_folder("smollm2-135m-instruct", torch.float32)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")  # cut off
    killed = folder.parent / f".{folder.name}.abc123"
    killed.mkdir()
    (killed / "model.gguf").write_bytes(b"x" * 1000)
    os.utime(killed, (time.time() - 7200, time.time() - 7200))  # two hours old
    converted = []

    def convert(command, **kwargs):
        converted.append(command)
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(embedded_module.subprocess, "run", convert)
    assert embedded_module.cached_copy("smollm2-135m-instruct", torch.float32, False) == folder
    assert len(converted) == 1  # before, the truncated copy was served, and failed forever
    assert not folder.exists() and not killed.exists()


def test_an_embedded_model_that_fails_to_load_is_not_recommended_again(tmp_path, monkeypatch):

    def unreadable(*args, **kwargs):
        raise OSError("header too large")

    monkeypatch.setattr(embedded_module, "cached_copy", lambda name, dtype, progress: tmp_path)
    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", unreadable)
    with pytest.raises(LMLoadError, match=r"converted copy .* delete that folder") as caught:
        load_lm("smollm2-135m-instruct", device="cpu")
    assert "load_lm('smollm2-135m-instruct')" not in str(caught.value)
