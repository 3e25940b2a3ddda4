"""Loading models: local folders, the embedded SmolLM2, devices and failures."""

from __future__ import annotations

import huggingface_hub.constants
import pytest
import torch

import sdelm
from sdelm import LMLoadError, load_lm, resolve_device
from tests.conftest import byte_tokenizer, tiny_model


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
