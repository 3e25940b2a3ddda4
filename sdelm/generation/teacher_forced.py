"""Recording the trajectories of fixed text: the model reads it instead of writing it.

:func:`encode_texts` records each text with one teacher-forced forward pass;
:func:`read_in_context` reads it after a prompt, as the model's own continuation would be.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm import tqdm

from sdelm.checks import check_integers
from sdelm.corpus import Passage, Prompt
from sdelm.generation.arguments import as_prompts, check_layers
from sdelm.generation.distribution import token_entropy
from sdelm.generation.records import decode, passage_rows, provenance, read_text
from sdelm.lm import LM
from sdelm.trajectories import Trajectories

__all__ = ["encode_texts", "read_in_context"]


@torch.inference_mode()
def encode_texts(
    lm: LM,
    texts: Sequence[str | Passage],
    *,
    max_tokens: int = 48,
    layers: Sequence[int] | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> Trajectories:
    """Record teacher-forced trajectories of fixed (e.g. human-written) text.

    The first token of each text is context only. Step ``k`` is token ``k + 1`` of the text: its
    hidden states after reading it, its log-probability under the model's own predictive
    distribution (temperature 1) given the tokens before it, and that distribution's entropy,
    exactly as :func:`extract` records generated tokens.

    Args:
        lm: The model.
        texts: Non-empty list of strings or :class:`sdelm.corpus.Passage`.
        max_tokens: Steps recorded per text at most (texts are truncated to
            ``max_tokens + 1`` tokens).
        layers: Layers to record, as in :func:`extract`.
        batch_size: Texts per forward pass.
        progress: Show a progress bar over batches.

    Returns:
        :class:`Trajectories` with source ``"human"``.

    Raises:
        ValueError: On an empty list, a text with fewer than two tokens, a count that is not a
            positive integer, or a layer that is not an integer, out of range or repeated.

    """
    if isinstance(texts, str) or len(texts) == 0:
        raise ValueError(
            "texts must be a non-empty list of strings or sdelm.corpus.Passage; try "
            "sdelm.corpus.shakespeare_passages(16)."
        )
    check_integers(1, max_tokens=max_tokens, batch_size=batch_size)
    layers = check_layers(lm, layers)
    passages = [
        t if isinstance(t, Passage) else Passage(f"text-{i:03d}", "", t)
        for i, t in enumerate(texts)
    ]
    parts = []
    for start in tqdm(
        range(0, len(passages), batch_size), desc="encode", unit="batch", disable=not progress
    ):
        chunk = [p.text for p in passages[start : start + batch_size]]
        encoded = lm.tokenizer(
            chunk,
            return_tensors="pt",
            padding=True,
            padding_side="right",
            truncation=True,
            max_length=max_tokens + 1,
        ).to(lm.device)
        short = (encoded["attention_mask"].sum(-1) < 2).nonzero().flatten().tolist()
        if short:
            raise ValueError(
                f"Texts {[start + i for i in short]} have fewer than 2 tokens; each text needs "
                "a context token and at least one recorded token."
            )
        output = lm.model(**encoded, output_hidden_states=True)
        logp = torch.log_softmax(output.logits[:, :-1].float(), dim=-1)
        ids = encoded["input_ids"][:, 1:]
        parts.append(
            {
                "states": torch.stack(
                    [output.hidden_states[layer][:, 1:] for layer in layers], dim=1
                )
                .float()
                .cpu(),
                "tokens": ids.cpu(),
                "logprobs": logp.gather(-1, ids[..., None]).squeeze(-1).cpu(),
                "entropies": token_entropy(logp.flatten(0, 1)).view(ids.shape).cpu(),
                "mask": encoded["attention_mask"][:, 1:].bool().cpu(),
            }
        )
    n_steps = max(part["mask"].shape[1] for part in parts)

    def pad(tensor: torch.Tensor, value: float) -> torch.Tensor:
        missing = n_steps - tensor.shape[-1 if tensor.ndim == 2 else 2]
        if tensor.ndim == 2:
            return torch.nn.functional.pad(tensor, (0, missing), value=value)
        return torch.nn.functional.pad(tensor, (0, 0, 0, missing), value=value)

    merged = {
        "states": torch.cat([pad(p["states"], 0.0) for p in parts]),
        "tokens": torch.cat([pad(p["tokens"], -1) for p in parts]),
        "logprobs": torch.cat([pad(p["logprobs"], torch.nan) for p in parts]),
        "entropies": torch.cat([pad(p["entropies"], torch.nan) for p in parts]),
        "mask": torch.cat([pad(p["mask"], False) for p in parts]),
    }
    invalid = ~merged["mask"]
    merged["tokens"][invalid] = -1
    merged["logprobs"][invalid] = torch.nan
    merged["entropies"][invalid] = torch.nan
    merged["states"][invalid[:, None].expand(-1, len(layers), -1)] = 0.0
    rows = passage_rows(passages, decode(lm, merged["tokens"], merged["mask"]), "human")
    return read_text(
        merged, rows, layers, provenance(lm, layers, kind="human", max_tokens=max_tokens)
    )


@torch.inference_mode()
def read_in_context(
    lm: LM,
    texts: Sequence[str | Passage],
    prompts: Sequence[str | Prompt],
    *,
    max_tokens: int = 48,
    layers: Sequence[int] | None = None,
    chat: bool = True,
    batch_size: int = 16,
) -> Trajectories:
    """Teacher-force each text as the model's reply to a prompt, as generated text is read.

    :func:`encode_texts` reads a text on its own, from its first token; :func:`extract`'s
    tokens follow a prompt inside the chat template. This reads text ``i`` after
    ``prompts[i]``, formatted exactly as :func:`extract` formats it, so that human and
    generated text share context and positions: step ``k`` is the text's ``k``-th token (the
    first one included), with its hidden states after reading it, its log-probability under
    the model given the prompt and the text before it, and that distribution's entropy.

    Args:
        lm: The model.
        texts: Non-empty list of strings or :class:`sdelm.corpus.Passage`.
        prompts: One prompt per text (strings or :class:`sdelm.corpus.Prompt`).
        max_tokens: Steps recorded per text at most (texts are truncated).
        layers: Layers to record, as in :func:`extract`.
        chat: Wrap the prompts in the model's chat template (when it has one).
        batch_size: Texts per forward pass.

    Returns:
        :class:`Trajectories` with source ``"human"``; a row's ``prompt_id`` and ``category``
        are its passage's (the unit to resample), ``prompt`` the text of its prompt.

    Raises:
        ValueError: On an empty list, a text without tokens, a prompt count that differs from
            the text count, an invalid prompt, count or layer.

    """
    if isinstance(texts, str) or len(texts) == 0:
        raise ValueError(
            "texts must be a non-empty list of strings or sdelm.corpus.Passage; try "
            "sdelm.corpus.shakespeare_passages(16)."
        )
    items = as_prompts(prompts)
    if len(items) != len(texts):
        raise ValueError(f"Give one prompt per text: {len(items)} prompts for {len(texts)} texts.")
    check_integers(1, max_tokens=max_tokens, batch_size=batch_size)
    layers = check_layers(lm, layers)
    passages = [
        t if isinstance(t, Passage) else Passage(f"text-{i:03d}", "", t)
        for i, t in enumerate(texts)
    ]
    has_template = chat and bool(lm.tokenizer.chat_template)
    contexts = [
        lm.tokenizer(lm.format_prompt(p.text, chat=chat), add_special_tokens=not has_template)
        for p in items
    ]
    read = [
        lm.tokenizer(p.text, add_special_tokens=False)["input_ids"][:max_tokens] for p in passages
    ]
    empty = [i for i, ids in enumerate(read) if not ids]
    if empty:
        raise ValueError(f"Texts {empty[:10]} have no tokens; give every text some text.")
    shape = (len(passages), max(len(ids) for ids in read))
    merged = {
        "states": torch.zeros(shape[0], len(layers), shape[1], lm.hidden_size),
        "tokens": torch.full(shape, -1, dtype=torch.long),
        "logprobs": torch.full(shape, torch.nan),
        "entropies": torch.full(shape, torch.nan),
        "mask": torch.zeros(shape, dtype=torch.bool),
    }
    pad_id = lm.tokenizer.pad_token_id
    for start in range(0, len(passages), batch_size):
        rows = range(start, min(start + batch_size, len(passages)))
        sequences = [contexts[i]["input_ids"] + read[i] for i in rows]
        width = max(len(ids) for ids in sequences)
        ids = torch.tensor([ids + [pad_id] * (width - len(ids)) for ids in sequences])
        attention = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences])
        output = lm.model(
            input_ids=ids.to(lm.device),
            attention_mask=attention.to(lm.device),
            output_hidden_states=True,
        )
        for row, i in enumerate(rows):
            first, n = len(contexts[i]["input_ids"]), len(read[i])
            at = torch.arange(first, first + n, device=lm.device)
            logp = torch.log_softmax(output.logits[row, at - 1].float(), dim=-1)
            tokens = torch.tensor(read[i], device=lm.device)
            merged["states"][i, :, :n] = (
                torch.stack([output.hidden_states[layer][row, at] for layer in layers])
                .float()
                .cpu()
            )
            merged["tokens"][i, :n] = tokens.cpu()
            merged["logprobs"][i, :n] = logp.gather(1, tokens[:, None]).squeeze(1).cpu()
            merged["entropies"][i, :n] = token_entropy(logp).cpu()
            merged["mask"][i, :n] = True
    rows = passage_rows(passages, decode(lm, merged["tokens"], merged["mask"]), "human")
    rows["prompt"] = [p.text for p in items]
    meta = provenance(
        lm, layers, kind="human", max_tokens=max_tokens, chat=has_template, context=True
    )
    return read_text(merged, rows, layers, meta)
