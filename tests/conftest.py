"""Shared fixtures: tiny random-initialised transformers with a byte-level tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from sdelm import LM

SPECIALS = ["<pad>", "<eos>", "<bos>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<bos>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}>{% endif %}"
)


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer without merges: one token per byte, plus specials."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {token: i for i, token in enumerate(SPECIALS + sorted(alphabet))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_model(kind: str = "llama", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    vocab = len(SPECIALS) + 256
    if kind == "llama":
        config = LlamaConfig(
            vocab_size=vocab,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            pad_token_id=0,
            eos_token_id=1,
            bos_token_id=2,
        )
        return LlamaForCausalLM(config).eval()
    config = GPT2Config(
        vocab_size=vocab,
        n_embd=32,
        n_layer=3,
        n_head=4,
        n_positions=512,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    return GPT2LMHeadModel(config).eval()


def tiny_lm(kind: str = "llama", seed: int = 0) -> LM:
    return LM(
        model=tiny_model(kind, seed),
        tokenizer=byte_tokenizer(),
        name=f"tiny-{kind}",
        device=torch.device("cpu"),
    )


@pytest.fixture(params=["llama", "gpt2"])
def lm(request) -> LM:
    return tiny_lm(request.param)


@pytest.fixture
def llama() -> LM:
    return tiny_lm("llama")


@pytest.fixture(scope="session")
def smollm2() -> LM:
    """The real packaged SmolLM2-135M-Instruct (integration tests)."""
    from sdelm import load_lm

    return load_lm("smollm2-135m-instruct", device="cpu")


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory) -> Path:
    """The tiny Llama and its tokenizer saved as a model folder, as `load_lm` reads it."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama").save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    return folder


def chapter_source(title: str, parameters: str, body: str) -> str:
    """A MyST notebook chapter with a ``parameters`` cell and one more code cell."""
    header = (
        "---\njupytext:\n  text_representation:\n    extension: .md\n    format_name: myst\n"
        "kernelspec:\n  display_name: Python 3\n  language: python\n  name: python3\n---\n"
    )
    return (
        f"{header}\n# {title}\n\n```{{code-cell}} ipython3\n:tags: [parameters]\n\n"
        f"{parameters}```\n\n```{{code-cell}} ipython3\n{body}```\n"
    )
