"""Recording hidden-state trajectories while an LLM samples, or while it reads human text.

:func:`extract` runs its own batched sampling loop over the model's KV cache (left padding), so
that every quantity is recorded from the same forward pass that produced the token: the hidden
states of the requested layers, the token, its log-probability and the entropy of the
distribution it was drawn from. :func:`encode_texts` records the same for fixed text with one
teacher-forced forward pass.

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

import math
from collections.abc import Iterable, Sequence
from importlib.metadata import version
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from sdelm.corpus import Passage, Prompt, check_integers, is_integer
from sdelm.devices import check_memory
from sdelm.lm import LM, cache_keyword, check_cache_used
from sdelm.trajectories import Trajectories

if TYPE_CHECKING:
    from sdelm.control import StateNudge, TemperatureControl

__all__ = [
    "STEPS_PER_COPY",
    "TEMPERATURE_RANGE",
    "encode_texts",
    "extract",
    "layer_trajectories",
    "rescore",
]

#: On a GPU, recorded steps are copied to the CPU in blocks of this many steps.
STEPS_PER_COPY = 32


def _check_layers(lm: LM, layers: Sequence[int] | None) -> tuple[int, ...]:
    """Return the layers to record, refusing non-integers, duplicates and out-of-range ones."""
    if layers is None:
        return lm.default_layers()
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Iterable):
        raise ValueError(f"layers must be a list of layer indices such as [0, 3], got {layers!r}.")
    layers = list(layers)
    not_integers = [layer for layer in layers if not is_integer(layer)]
    if not_integers:
        raise ValueError(
            f"Layer indices must be integers, got {not_integers} in layers={layers}; "
            f"{lm.name} has hidden-state layers 0 to {lm.n_layers}."
        )
    layers = tuple(int(layer) for layer in layers)
    bad = [layer for layer in layers if not 0 <= layer <= lm.n_layers]
    if not layers or bad:
        raise ValueError(
            f"Layer indices {bad or '[]'} are out of range: {lm.name} has hidden-state layers 0 "
            f"(token embedding) to {lm.n_layers} (last block). Default: {lm.default_layers()}."
        )
    repeated = sorted({layer for layer in layers if layers.count(layer) > 1})
    if repeated:
        raise ValueError(
            f"Layers {repeated} are listed more than once in layers={list(layers)}; "
            "give each layer once."
        )
    return layers


def _as_float(value: object) -> float | None:
    """Return ``value`` as a float, or None if it is not a number (a bool or string is not)."""
    if isinstance(value, (bool, np.bool_, str, bytes)):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


#: The range of sampling temperatures: logits divided by less than the lowest can overflow
#: float32 (a logit over T above 3.4e38), and above the highest every token is equally likely to
#: float32's precision.
TEMPERATURE_RANGE = (1e-6, 1e6)


def _check_temperatures(temperatures: Sequence[float]) -> list[float]:
    """Return the temperatures as floats, refusing a scalar, NaN, inf and values out of range."""
    if isinstance(temperatures, (str, bytes)) or not isinstance(temperatures, Iterable):
        raise ValueError(
            f"temperatures must be a list of values > 0 such as [1.0], got {temperatures!r}."
        )
    temperatures = list(temperatures)
    values = [_as_float(t) for t in temperatures]
    if None in values:
        raise ValueError(f"temperatures must be numbers, got {temperatures!r}.")
    if any(not math.isfinite(t) for t in values):
        raise ValueError(
            f"temperatures must be finite, got {values}: NaN samples nonsense and inf samples "
            "uniformly from the vocabulary. Use values > 0 such as 0.7 or 1.3."
        )
    if not values or min(values) <= 0:
        raise ValueError(
            f"temperatures must be a non-empty list of values > 0, got {values}. "
            "For greedy decoding use top_p=1e-9 (only the most likely token survives), or a "
            "tiny temperature such as 1e-4."
        )
    low, high = TEMPERATURE_RANGE
    outside = [t for t in values if not low <= t <= high]
    if outside:
        raise ValueError(
            f"temperatures {outside} lie outside [{low:g}, {high:g}]: below, the tempered "
            "logits overflow float32 (use top_p=1e-9 for greedy decoding); above, sampling is "
            "uniform over the vocabulary to float32's precision."
        )
    return values


def _as_prompts(prompts: Sequence[str | Prompt]) -> list[Prompt]:
    if isinstance(prompts, (str, Prompt)) or len(prompts) == 0:
        raise ValueError(
            "prompts must be a non-empty list of strings or sdelm.corpus.Prompt; "
            "try sdelm.corpus.prompts(16)."
        )
    out = []
    for i, prompt in enumerate(prompts):
        if isinstance(prompt, str):
            prompt = Prompt(f"prompt-{i:03d}", "", prompt)
        if not isinstance(prompt, Prompt) or not isinstance(prompt.text, str):
            raise ValueError(
                f"Prompt {i} is {prompt!r}, not a string or an sdelm.corpus.Prompt with text; "
                "give every prompt some text."
            )
        if not prompt.text.strip():
            raise ValueError(f"Prompt {i} ({prompt.id}) is empty; give every prompt some text.")
        out.append(prompt)
    return out


def _sampling_distribution(
    logits: torch.Tensor, temperature: torch.Tensor, top_p: float
) -> torch.Tensor:
    """Log-probabilities of the distribution a token is drawn from.

    Args:
        logits: Float tensor of size (batch, vocab).
        temperature: Float tensor of size (batch,).
        top_p: Nucleus mass; 1.0 keeps every token.

    Returns:
        Float tensor of size (batch, vocab); -inf outside the nucleus.

    """
    logp = torch.log_softmax(logits.float() / temperature[:, None], dim=-1)
    if top_p >= 1.0:
        return logp
    sorted_logp, order = logp.sort(dim=-1, descending=True)
    mass_before = sorted_logp.exp().cumsum(dim=-1) - sorted_logp.exp()
    drop_sorted = mass_before >= top_p  # always keeps the most likely token
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return torch.log_softmax(logp.masked_fill(drop, -torch.inf), dim=-1)


def _entropy(logp: torch.Tensor, probs: torch.Tensor | None = None) -> torch.Tensor:
    """Entropy in nats of each row of log-probabilities (batch, vocab) -> (batch,).

    ``probs``, ``logp.exp()`` where the caller has it, saves computing it again; tokens of
    probability 0 (log-probability -inf) contribute 0.
    """
    probs = logp.exp() if probs is None else probs
    return -(probs * logp).nansum(dim=-1)


def _sample(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling: one token per row of probabilities (batch, vocab) from uniforms."""
    cdf = probs.cumsum(dim=-1)
    target = (uniforms.to(cdf.device) * cdf[:, -1]).unsqueeze(1)
    return torch.searchsorted(cdf, target).squeeze(1).clamp(max=probs.shape[-1] - 1)


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
        logp = _sampling_distribution(logits, now, top_p)
        probs = logp.exp()
        token = _sample(probs, uniforms[:, step])
        token_logp = logp.gather(1, token[:, None]).squeeze(1)
        own_logit = own_logits.gather(1, token[:, None]).squeeze(1)
        untempered = own_logit - torch.logsumexp(own_logits, dim=-1)
        entropy = _entropy(logp, probs)
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


def _row_generator(seed: int, *key: int) -> torch.Generator:
    """Return a CPU generator for one sequence, seeded from (seed, *key)."""
    state = np.random.SeedSequence([seed, *key]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def _uniform_table(seed: int, keys: list[tuple[int, ...]], n_steps: int) -> torch.Tensor:
    """Return the first ``n_steps`` uniform numbers of each sequence's random stream.

    A CPU generator gives the same numbers in one draw of ``n_steps`` as in ``n_steps`` draws
    of one, so the table holds exactly the numbers a step-by-step loop would draw.

    Args:
        seed: Seed of all sampling.
        keys: One key per sequence (its prompt's position, temperature and sample index).
        n_steps: Numbers per sequence.

    Returns:
        Float tensor of size (len(keys), n_steps) on the CPU.

    """
    return torch.stack([torch.rand(n_steps, generator=_row_generator(seed, *key)) for key in keys])


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
        "shards (sdelm.shards.extract_shards).",
    )


def _decode(lm: LM, tokens: torch.Tensor, mask: torch.Tensor) -> list[str]:
    return [
        lm.tokenizer.decode(row[keep].tolist(), skip_special_tokens=True)
        for row, keep in zip(tokens, mask, strict=True)
    ]


def _passage_rows(passages: Sequence[Passage], texts: list[str], source: str) -> pd.DataFrame:
    """Row table of read (not generated) passages: no prompt, temperature or sample."""
    return pd.DataFrame(
        {
            "prompt_id": [p.id for p in passages],
            "prompt": "",
            "category": [p.work for p in passages],
            "temperature": np.nan,
            "sample": 0,
            "source": source,
            "text": texts,
        }
    )


def _read_text(
    merged: dict[str, torch.Tensor],
    rows: pd.DataFrame,
    layers: tuple[int, ...],
    meta: dict[str, object],
) -> Trajectories:
    """Trajectories of read (teacher-forced) text: its own distribution is the untempered one."""
    return Trajectories(
        **merged,
        untempered_logprobs=merged["logprobs"].clone(),
        rows=rows,
        layers=layers,
        meta=meta,
    )


def _meta(lm: LM, layers: tuple[int, ...], **extra: object) -> dict[str, object]:
    return {
        "model": lm.name,
        "model_class": type(lm.model).__name__,
        "hidden_size": lm.hidden_size,
        "n_layers": lm.n_layers,
        "layers": list(layers),
        "sdelm_version": version("sdelm"),
        "torch_version": torch.__version__,
        **extra,
    }


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
    items = _as_prompts(prompts)
    check_integers(
        1,
        max_new_tokens=max_new_tokens,
        samples_per_prompt=samples_per_prompt,
        batch_size=batch_size,
    )
    check_integers(0, seed=seed, first_index=first_index)
    temperatures = _check_temperatures(temperatures)
    nucleus = _as_float(top_p)
    if nucleus is None or not 0 < nucleus <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}; 1.0 disables nucleus sampling.")
    layers = _check_layers(lm, layers)
    if control is not None and control.layer is not None:
        _check_layers(lm, [control.layer])
    if nudge is not None and nudge.layer != lm.n_layers:
        raise ValueError(
            f"A nudge moves the last layer's state ({lm.n_layers} for {lm.name}), but this one "
            f"was fitted on layer {nudge.layer}; fit the SDE on layer {lm.n_layers}."
        )
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
                _uniform_table(
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
            "text": _decode(lm, merged["tokens"], merged["mask"]),
        }
    )
    meta = _meta(
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


@torch.inference_mode()
def rescore(lm: LM, trajs: Trajectories, *, batch_size: int = 16) -> torch.Tensor:
    """Log-probability of each generated token under the model itself, at temperature 1.

    The recorded ``logprobs`` are those of the distribution a token was drawn from (after
    temperature and top-p), so they cannot compare runs at different temperatures. This reads
    each prompt and its continuation again, teacher-forced, and returns the untempered
    log-probability of every generated token given everything before it: the model's own
    judgement of the text, the same yardstick for every run.

    Args:
        lm: The model that generated the trajectories.
        trajs: Generated trajectories from :func:`extract`.
        batch_size: Sequences per forward pass.

    Returns:
        Float tensor of size (n_sequences, n_steps), NaN where a step is masked out.

    Raises:
        ValueError: If a row is not generated text, or the trajectories come from another
            model.

    """
    if not (trajs.rows["source"] == "generated").all():
        raise ValueError("rescore needs generated rows; select them with where(source=...).")
    if trajs.meta.get("model") != lm.name:
        raise ValueError(
            f"These trajectories were generated by {trajs.meta.get('model')!r}, not {lm.name!r}; "
            "rescore them with the model that generated them."
        )
    chat = bool(trajs.meta.get("chat", False))
    out = torch.full(trajs.mask.shape, torch.nan)
    pad_id = lm.tokenizer.pad_token_id
    for start in range(0, trajs.n_sequences, batch_size):
        rows = range(start, min(start + batch_size, trajs.n_sequences))
        sequences = [
            lm.tokenizer(
                lm.format_prompt(trajs.rows["prompt"][i], chat=chat), add_special_tokens=not chat
            )["input_ids"]
            + trajs.tokens[i][trajs.mask[i]].tolist()
            for i in rows
        ]
        width = max(len(s) for s in sequences)
        ids = torch.tensor([[pad_id] * (width - len(s)) + s for s in sequences])
        attention = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in sequences])
        logits = lm.model(
            input_ids=ids.to(lm.device),
            attention_mask=attention.to(lm.device),
            position_ids=(attention.cumsum(-1) - 1).clamp(min=0).to(lm.device),
        ).logits
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        scores = logp.gather(-1, ids[:, 1:, None].to(lm.device)).squeeze(-1).cpu()
        for row, i in enumerate(rows):
            n = int(trajs.mask[i].sum())
            out[i, :n] = scores[row, width - 1 - n :]
    return out


def untempered(lm: LM, trajs: Trajectories) -> torch.Tensor:
    """Each token's log-probability under the model itself, at temperature 1.

    Trajectories from :func:`extract` and :func:`encode_texts` record it
    (``Trajectories.untempered_logprobs``); generated rows saved before it was recorded are
    read again with :func:`rescore`, and read text's own ``logprobs`` are untempered already.

    Args:
        lm: The model that recorded the trajectories (used only for rows that lack the record).
        trajs: Trajectories with a ``source`` row attribute.

    Returns:
        Float tensor of size (n_sequences, n_steps), NaN where a step is masked out.

    """
    out = trajs.untempered_logprobs.clone()
    lacking = torch.isnan(out).logical_and(trajs.mask).any(dim=1).numpy()
    generated = (trajs.rows["source"] == "generated").to_numpy()
    if (lacking & generated).any():
        rows = torch.from_numpy(lacking & generated)
        out[rows] = rescore(lm, trajs[rows])
    if (lacking & ~generated).any():
        rows = torch.from_numpy(lacking & ~generated)
        out[rows] = trajs.logprobs[rows]
    return out


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
    layers = _check_layers(lm, layers)
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
                "entropies": _entropy(logp.flatten(0, 1)).view(ids.shape).cpu(),
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
    rows = _passage_rows(passages, _decode(lm, merged["tokens"], merged["mask"]), "human")
    return _read_text(merged, rows, layers, _meta(lm, layers, kind="human", max_tokens=max_tokens))


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
    items = _as_prompts(prompts)
    if len(items) != len(texts):
        raise ValueError(f"Give one prompt per text: {len(items)} prompts for {len(texts)} texts.")
    check_integers(1, max_tokens=max_tokens, batch_size=batch_size)
    layers = _check_layers(lm, layers)
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
            merged["entropies"][i, :n] = _entropy(logp).cpu()
            merged["mask"][i, :n] = True
    rows = _passage_rows(passages, _decode(lm, merged["tokens"], merged["mask"]), "human")
    rows["prompt"] = [p.text for p in items]
    meta = _meta(lm, layers, kind="human", max_tokens=max_tokens, chat=has_template, context=True)
    return _read_text(merged, rows, layers, meta)


@torch.no_grad()
def layer_trajectories(
    lm: LM,
    texts: Sequence[str | Passage],
    *,
    n_tokens: int = 40,
    shuffle: bool = False,
    skip_short: bool = False,
    source: str = "human",
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = True,
) -> Trajectories:
    """Record layer-time trajectories: the last token's state after every layer.

    The Lines-of-Thought set-up (Sarfati et al., 2025): each text is cut to its first
    ``n_tokens`` tokens and read by the model; the hidden state of the last of them after the
    embedding (step 0) and after each transformer block (steps 1 … n_layers) is one trajectory
    whose time is the layer index.

    Args:
        lm: The model.
        texts: Non-empty list of strings or :class:`sdelm.corpus.Passage`.
        n_tokens: Tokens per piece of text. The tokens a tokenizer puts before every text
            (Gemma's ``<bos>``; SmolLM2 has none) are read first and are not counted.
        shuffle: Permute each piece's tokens at random first (the "gibberish" null input).
        skip_short: Drop texts with fewer than ``n_tokens`` tokens instead of raising.
        source: Row label, e.g. ``"human"`` or ``"generated"``.
        seed: Seed of the shuffles.
        batch_size: Pieces per forward pass.
        progress: Show a progress bar over batches.

    Returns:
        :class:`Trajectories` with ``time_axis="layer"``, size (n_texts, 1, n_layers + 1,
        hidden_size) (the single entry of the second axis is labelled 0), every step valid;
        ``tokens`` holds the last token's id at every step, ``logprobs`` and ``entropies`` are
        NaN; ``meta["n_tokens"]``, ``meta["shuffled"]`` and ``meta["skipped"]`` record the set-up.

    Raises:
        ValueError: On an empty list, a count that is not a positive integer, a negative seed,
            or (unless ``skip_short``) a text shorter than ``n_tokens`` tokens.

    """
    if isinstance(texts, str) or len(texts) == 0:
        raise ValueError(
            "texts must be a non-empty list of strings or sdelm.corpus.Passage; try "
            "sdelm.corpus.shakespeare_passages(16, n_tokens=48)."
        )
    check_integers(1, n_tokens=n_tokens, batch_size=batch_size)
    check_integers(0, seed=seed)
    passages = [
        t if isinstance(t, Passage) else Passage(f"text-{i:03d}", "", t)
        for i, t in enumerate(texts)
    ]
    ids = [lm.tokenizer(p.text, add_special_tokens=False)["input_ids"] for p in passages]
    short = [i for i, row in enumerate(ids) if len(row) < n_tokens]
    if short and not skip_short:
        raise ValueError(
            f"Texts {short[:10]} have fewer than n_tokens={n_tokens} tokens; use longer texts, "
            "a smaller n_tokens, or skip_short=True."
        )
    keep = [i for i in range(len(ids)) if i not in set(short)]
    if not keep:
        raise ValueError(f"No text has n_tokens={n_tokens} tokens.")
    pieces = torch.tensor([ids[i][:n_tokens] for i in keep])
    if shuffle:
        pieces = torch.stack(
            [
                row[torch.randperm(n_tokens, generator=_row_generator(seed, i))]
                for i, row in zip(keep, pieces, strict=True)
            ]
        )
    # The tokens a tokenizer puts before every text (Gemma's <bos>, which it needs; none for
    # SmolLM2) come first and are never shuffled.
    prefix = torch.tensor(lm.tokenizer("")["input_ids"], dtype=pieces.dtype)
    parts = []
    for start in tqdm(
        range(0, len(pieces), batch_size), desc="layers", unit="batch", disable=not progress
    ):
        batch = pieces[start : start + batch_size]
        batch = torch.cat([prefix.expand(len(batch), -1), batch], dim=1).to(lm.device)
        output = lm.model(input_ids=batch, output_hidden_states=True, logits_to_keep=1)
        parts.append(torch.stack([h[:, -1] for h in output.hidden_states], dim=1).float().cpu())
    states = torch.cat(parts).unsqueeze(1)  # (n, 1, n_layers + 1, hidden)
    n, steps = states.shape[0], states.shape[2]
    chosen = [passages[i] for i in keep]
    rows = _passage_rows(chosen, [lm.tokenizer.decode(row.tolist()) for row in pieces], source)
    meta = _meta(lm, (0,), kind="layer", n_tokens=n_tokens, shuffled=shuffle, skipped=len(short))
    return Trajectories(
        states=states,
        mask=torch.ones(n, steps, dtype=torch.bool),
        tokens=pieces[:, -1:].expand(n, steps).clone(),
        logprobs=torch.full((n, steps), torch.nan),
        entropies=torch.full((n, steps), torch.nan),
        rows=rows,
        layers=(0,),
        time_axis="layer",
        meta=meta,
    )
