"""Recording hidden-state trajectories while an LLM samples.

:func:`extract` runs its own batched sampling loop over the model's KV cache (left padding), so
that every quantity is recorded from the same forward pass that produced the token: the hidden
states of the requested layers, the token, its log-probability and the entropy of the
distribution it was drawn from. :func:`sdelm.generation.encode_texts` records the same for
fixed text with one teacher-forced forward pass.

Randomness: each sequence (prompt, temperature, sample) has its own random stream, derived from
``seed`` with :class:`numpy.random.SeedSequence`; a token is drawn by inverse-CDF sampling from
one uniform number of that stream. Same arguments give bit-identical trajectories on the same
machine; CPU and CUDA use the same uniform numbers; and the random numbers a sequence uses do
not depend on which other sequences share its batch (padding still changes floating-point
rounding, so another ``batch_size`` can give other samples).

Device cost: a batch draws its uniform numbers once, as a (batch, max_new_tokens) table (the
same numbers as one draw per step), and on a GPU keeps the recorded steps on the device,
copying them to the CPU every :data:`STEPS_PER_COPY` steps, so the sampling loop does not wait
for the device at every token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd
import torch
from tqdm import tqdm

from sdelm.checks import check_integers
from sdelm.corpus import Prompt
from sdelm.devices import check_memory
from sdelm.generation.arguments import as_float, as_prompts, check_layers, check_temperatures
from sdelm.generation.distribution import (
    sample_tokens,
    sampling_distribution,
    token_entropy,
    uniform_table,
)
from sdelm.generation.records import decode, provenance
from sdelm.lm import LM, cache_keyword, check_cache_used
from sdelm.trajectories import Trajectories

if TYPE_CHECKING:
    from sdelm.generation.hooks import StateNudge, TemperatureControl

__all__ = ["STEPS_PER_COPY", "extract"]

#: On a GPU, recorded steps are copied to the CPU in blocks of this many steps.
STEPS_PER_COPY = 32


def _steps_per_copy(device: torch.device) -> int:
    """Return how many recorded steps wait on ``device`` before one copy to the CPU.

    Every step on the CPU, where a copy costs nothing and a batch whose sequences have all
    ended stops at once; :data:`STEPS_PER_COPY` elsewhere, where each copy waits for the device.
    """
    return 1 if device.type == "cpu" else STEPS_PER_COPY


@torch.inference_mode()
def _generate_batch(
    lm: LM,
    texts: list[str],
    temperatures: torch.Tensor,
    uniforms: torch.Tensor,
    *,
    max_new_tokens: int,
    top_p: float,
    layers: tuple[int, ...],
    add_special_tokens: bool,
    control: TemperatureControl | None = None,
    nudge: StateNudge | None = None,
) -> dict[str, torch.Tensor]:
    """Sample one batch.

    Args:
        lm: The model.
        texts: The formatted prompts, one per sequence.
        temperatures: Float tensor of size (batch,): each sequence's base temperature.
        uniforms: Float tensor of size (batch, max_new_tokens): the uniform number each
            sequence draws its token from at each step.
        max_new_tokens: Steps at most.
        top_p: Nucleus mass.
        layers: Hidden-state layers to record.
        add_special_tokens: Let the tokenizer add its special tokens (when there is no chat
            template).
        control: Optional temperature control.
        nudge: Optional state nudge.

    Returns:
        CPU tensors with a step axis of length ``max_new_tokens``: ``states`` (batch, layers,
        steps, hidden), ``tokens``, ``logprobs``, ``entropies``, ``temperatures``,
        ``untempered_logprobs`` and ``mask`` (batch, steps).

    Raises:
        LMLoadError: If the model's forward pass ignores the KV cache.

    """
    model, device = lm.model, lm.device
    # Each distinct prompt is read once; its KV cache is then shared by its sequences.
    distinct = list(dict.fromkeys(texts))
    row_of = torch.tensor([distinct.index(text) for text in texts], device=device)
    encoded = lm.tokenizer(
        distinct, return_tensors="pt", padding=True, add_special_tokens=add_special_tokens
    ).to(device)
    attention = encoded["attention_mask"]
    batch = len(texts)
    eos = torch.tensor(lm.eos_token_ids or [-1], device=device)
    pad_id = lm.tokenizer.pad_token_id
    temperatures = temperatures.to(device)
    uniforms = uniforms.to(device)

    shape = (batch, max_new_tokens)
    out = {
        "states": torch.zeros(batch, len(layers), max_new_tokens, lm.hidden_size),
        "tokens": torch.full(shape, -1, dtype=torch.long),
        "logprobs": torch.full(shape, torch.nan),
        "entropies": torch.full(shape, torch.nan),
        "temperatures": torch.full(shape, torch.nan),
        "untempered_logprobs": torch.full(shape, torch.nan),
        "mask": torch.zeros(shape, dtype=torch.bool),
    }
    steps_per_copy = _steps_per_copy(device)
    pending: dict[str, list[torch.Tensor]] = {key: [] for key in out}
    first_pending = 0

    from transformers import DynamicCache  # imported with the model, not with sdelm

    cache = DynamicCache(config=model.config)
    with_cache = {cache_keyword(model): cache, "use_cache": True}
    output = model(
        input_ids=encoded["input_ids"],
        attention_mask=attention,
        position_ids=(attention.cumsum(-1) - 1).clamp(min=0),
        logits_to_keep=1,  # only the last position is read (a model without it computes all)
        **with_cache,
    )
    check_cache_used(cache, attention.shape[1])
    if len(distinct) < batch:
        cache.batch_select_indices(row_of)
    attention = attention[row_of]
    own_logits = output.logits[row_of, -1].float()  # the model's own next-token logits
    alive = torch.ones(batch, dtype=torch.bool, device=device)
    previous = None  # the state, at the control's layer, after reading the last token
    read_out = None  # the last layer's state after reading the last token
    for step in range(max_new_tokens):
        logits = own_logits
        if nudge is not None and read_out is not None:
            if step == 1:
                _check_read_out(lm, read_out, logits)
            logits = _read_out(lm, nudge(step, read_out))
        now = temperatures
        if control is not None:
            now = control(step, previous, logits, temperatures).to(device)
        logp = sampling_distribution(logits, now, top_p)
        probs = logp.exp()
        token = sample_tokens(probs, uniforms[:, step])
        token_logp = logp.gather(1, token[:, None]).squeeze(1)
        own_logit = own_logits.gather(1, token[:, None]).squeeze(1)
        untempered = own_logit - torch.logsumexp(own_logits, dim=-1)
        entropy = token_entropy(logp, probs)
        token = torch.where(alive, token, pad_id)
        # Feed the token: the state *after* reading it is this step's state.
        attention = torch.cat([attention, attention.new_ones(batch, 1)], dim=1)
        output = model(
            input_ids=token[:, None],
            attention_mask=attention,
            position_ids=attention.sum(-1, keepdim=True) - 1,
            output_hidden_states=True,
            **with_cache,
        )
        own_logits = output.logits[:, -1].float()
        hidden = torch.stack([output.hidden_states[layer][:, -1] for layer in layers], dim=1)
        if control is not None and control.layer is not None:
            previous = output.hidden_states[control.layer][:, -1].float()
        if nudge is not None:
            read_out = output.hidden_states[lm.n_layers][:, -1].float()
        recorded = {
            "states": hidden.float(),
            "tokens": token,
            "logprobs": token_logp,
            "entropies": entropy,
            "temperatures": now,
            "untempered_logprobs": untempered,
            "mask": alive,
        }
        for key, value in recorded.items():
            pending[key].append(value)
        alive = alive & ~torch.isin(token, eos)
        if len(pending["mask"]) == steps_per_copy or step == max_new_tokens - 1:
            steps = slice(first_pending, step + 1)
            out["states"][:, :, steps] = torch.stack(pending.pop("states"), dim=2).cpu()
            for key, values in pending.items():
                out[key][:, steps] = torch.stack(values, dim=1).cpu()
            pending = {key: [] for key in out}
            first_pending = step + 1
            if not alive.any():
                break
    not_recorded = ~out["mask"]
    out["tokens"][not_recorded] = -1
    out["logprobs"][not_recorded] = torch.nan
    out["entropies"][not_recorded] = torch.nan
    out["temperatures"][not_recorded] = torch.nan
    out["untempered_logprobs"][not_recorded] = torch.nan
    out["states"][not_recorded[:, None].expand(-1, len(layers), -1)] = 0.0
    return out


def _read_out(lm: LM, state: torch.Tensor) -> torch.Tensor:
    """Next-token logits (batch, vocab) from last-layer states (batch, hidden)."""
    head = lm.model.get_output_embeddings()
    return head(state.to(head.weight.dtype)).float()


def _check_read_out(lm: LM, state: torch.Tensor, logits: torch.Tensor) -> None:
    """Refuse to nudge where the last hidden state is not the output layer's input."""
    again = _read_out(lm, state)
    tolerance = 1e-3 * float(logits.abs().max().clamp_min(1.0))
    if not torch.allclose(again, logits, atol=tolerance, rtol=0):
        raise ValueError(
            f"{lm.name}'s logits are not its output layer applied to its last hidden state "
            "(e.g. a final soft-cap or scaling), so a nudge of that state cannot be read out; "
            "use a temperature control instead."
        )


def _check_memory(
    lm: LM, n_sequences: int, batch_size: int, n_layers: int, max_new_tokens: int
) -> None:
    """Refuse an extraction whose recorded states cannot fit in memory, before it starts.

    Counts the CPU output (states of ``n_sequences x n_layers x max_new_tokens x hidden``
    float32 numbers plus the per-step values, twice: the batches and their concatenation) and
    one batch's KV cache on the model's device.

    Args:
        lm: The model.
        n_sequences: Sequences to generate.
        batch_size: Sequences generated together.
        n_layers: Layers recorded.
        max_new_tokens: Steps per sequence at most.

    Raises:
        ValueError: If a device lacks the memory; the message gives the figures in GiB.

    """
    text = lm.model.config.get_text_config()
    heads = getattr(text, "num_attention_heads", None) or 1
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or lm.hidden_size // heads
    per_step = n_layers * lm.hidden_size * 4 + 8 + 4 * 4 + 1  # states, token, 4 floats, mask
    recorded = 2 * n_sequences * max_new_tokens * per_step
    per_token = 2 * lm.n_layers * kv_heads * head_dim * lm.model.dtype.itemsize  # keys, values
    kv_cache = batch_size * max_new_tokens * per_token
    cpu = torch.device("cpu")
    needs = {cpu: recorded} if lm.device == cpu else {cpu: recorded, lm.device: 0}
    needs[lm.device] += kv_cache
    check_memory(
        needs,
        "extract",
        f"the recorded trajectories ({n_sequences} sequences x {n_layers} layers x "
        f"max_new_tokens={max_new_tokens} x hidden size {lm.hidden_size}) and the KV cache of "
        f"a batch (on {lm.device})",
        "Lower max_new_tokens, batch_size, the number of layers or of sequences, or extract in "
        "shards (sdelm.generation.extract_shards).",
    )


def _check_hooks(lm: LM, control: TemperatureControl | None, nudge: StateNudge | None) -> None:
    """Refuse a control of a layer ``lm`` lacks, or a nudge of another layer than the last."""
    if control is not None and control.layer is not None:
        check_layers(lm, [control.layer])
    if nudge is not None and nudge.layer != lm.n_layers:
        raise ValueError(
            f"A nudge moves the last layer's state ({lm.n_layers} for {lm.name}), but this one "
            f"was fitted on layer {nudge.layer}; fit the SDE on layer {lm.n_layers}."
        )


def extract(
    lm: LM,
    prompts: Sequence[str | Prompt],
    *,
    max_new_tokens: int = 48,
    temperatures: Sequence[float] = (1.0,),
    samples_per_prompt: int = 1,
    top_p: float = 1.0,
    layers: Sequence[int] | None = None,
    batch_size: int = 64,
    seed: int = 0,
    chat: bool = True,
    first_index: int = 0,
    control: TemperatureControl | None = None,
    nudge: StateNudge | None = None,
    progress: bool = True,
) -> Trajectories:
    """Let the LLM sample continuations and record its hidden-state trajectories.

    Every (prompt, temperature, sample) triple is one sequence. Step ``k`` of a sequence is its
    ``k``-th generated token ``y_k``: its hidden states after reading ``y_k`` (one per requested
    layer; the last token's state is included), the token id, the log-probability of ``y_k`` and
    the entropy of the distribution (after temperature and top-p) it was drawn from, and the
    log-probability of ``y_k`` under the model itself (temperature 1, no top-p, no nudge: what
    :func:`rescore` computes by reading the text again). A sequence ends after its
    end-of-sequence token, which is recorded; later steps are masked out.

    Args:
        lm: The model, from :func:`sdelm.load_lm`.
        prompts: Non-empty list of strings or :class:`sdelm.corpus.Prompt`.
        max_new_tokens: Number of tokens to generate per sequence at most.
        temperatures: List of sampling temperatures, each finite and > 0.
        samples_per_prompt: Independent samples per prompt and temperature.
        top_p: Nucleus sampling mass in (0, 1]; 1.0 samples from the whole vocabulary.
        layers: Hidden-state layers to record: 0 is the token embedding (the paper's state),
            ``lm.n_layers`` the last block. Default: ``lm.default_layers()`` (0, middle, last).
        batch_size: Sequences generated together (64: on two CPU cores about 1.8 times the
            speed of 16, and 128 adds little; see ``benchmarks/extraction.py``).
        seed: Seed of all sampling.
        chat: Wrap prompts in the model's chat template (when it has one).
        first_index: Position of ``prompts[0]`` in a larger list that was split into shards:
            each sequence's random stream is keyed by its prompt's position in that list, so a
            shard samples exactly the sequences the whole list would.
        control: Choose each token's temperature during sampling, e.g.
            :class:`sdelm.control.DiffusionTemperature`; the row's temperature is then its
            base temperature and ``Trajectories.temperatures`` records the ones used.
        nudge: Move the last layer's state before each token after the first is read out,
            e.g. :class:`sdelm.control.DriftNudge`; the recorded states are the model's own.
        progress: Show a progress bar over batches.

    Returns:
        :class:`Trajectories` with source ``"generated"``.

    Raises:
        ValueError: On an empty prompt list, an empty prompt or one that is not text, a count
            that is not a positive integer (a bool is not), a negative or non-integer seed or
            first_index, temperatures that are not a list of finite numbers > 0, top_p
            outside (0, 1], a layer that is not an integer, out of range or repeated, or an
            output that would not fit in memory (the message gives the estimate in GiB).
        LMLoadError: If the model's forward pass ignores the KV cache (an unsupported
            transformers version).

    """
    items = as_prompts(prompts)
    check_integers(
        1,
        max_new_tokens=max_new_tokens,
        samples_per_prompt=samples_per_prompt,
        batch_size=batch_size,
    )
    check_integers(0, seed=seed, first_index=first_index)
    temperatures = check_temperatures(temperatures)
    nucleus = as_float(top_p)
    if nucleus is None or not 0 < nucleus <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}; 1.0 disables nucleus sampling.")
    layers = check_layers(lm, layers)
    _check_hooks(lm, control, nudge)
    has_template = chat and bool(lm.tokenizer.chat_template)

    n_jobs = len(items) * len(temperatures) * samples_per_prompt
    _check_memory(lm, n_jobs, min(batch_size, n_jobs), len(layers), max_new_tokens)  # first
    jobs = [
        (p, t, s)
        for p in range(len(items))
        for t in range(len(temperatures))
        for s in range(samples_per_prompt)
    ]
    parts = []
    bar = tqdm(total=len(jobs), desc="extract", unit="seq", disable=not progress)
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        parts.append(
            _generate_batch(
                lm,
                [lm.format_prompt(items[p].text, chat=chat) for p, _, _ in chunk],
                torch.tensor([temperatures[t] for _, t, _ in chunk]),
                uniform_table(
                    seed, [(first_index + p, t, s) for p, t, s in chunk], max_new_tokens
                ),
                max_new_tokens=max_new_tokens,
                top_p=top_p,
                layers=layers,
                add_special_tokens=not has_template,
                control=control,
                nudge=nudge,
            )
        )
        bar.update(len(chunk))
    bar.close()

    merged = {key: torch.cat([part[key] for part in parts]) for key in parts[0]}
    n_steps = int(merged["mask"].any(dim=0).nonzero().max()) + 1
    merged = {
        key: value[:, :, :n_steps] if key == "states" else value[:, :n_steps]
        for key, value in merged.items()
    }
    rows = pd.DataFrame(
        {
            "prompt_id": [items[p].id for p, _, _ in jobs],
            "prompt": [items[p].text for p, _, _ in jobs],
            "category": [items[p].category for p, _, _ in jobs],
            "temperature": [temperatures[t] for _, t, _ in jobs],
            "sample": [s for _, _, s in jobs],
            "source": "generated",
            "text": decode(lm, merged["tokens"], merged["mask"]),
        }
    )
    meta = provenance(
        lm,
        layers,
        kind="generated",
        seed=seed,
        max_new_tokens=max_new_tokens,
        temperatures=temperatures,
        samples_per_prompt=samples_per_prompt,
        top_p=top_p,
        chat=has_template,
        control=None if control is None else control.describe(),
        nudge=None if nudge is None else nudge.describe(),
    )
    return Trajectories(**merged, rows=rows, layers=layers, meta=meta)
