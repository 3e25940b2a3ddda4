"""The branching experiment: many next tokens sampled from one prefix, and the states they lead to.

A fitted SDE claims that the next state X_{k+1}, given the state X_k, is Gaussian with mean
X_k + μ Δt and covariance σσᵀ Δt. Sampling at temperature T, the only randomness of one
generation step is the token draw, so the conditional law of X_{k+1} given the prefix can be
measured directly: read the prefix once, draw the next token ``n_branches`` times from the same
distribution, and read each drawn token from one shared KV cache. :func:`branch` does that for
prefixes taken from recorded generations; :mod:`sdelm.analysis.branching` compares what it
measures with fitted models.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from sdelm.branches import BRANCH_TENSORS, Branches
from sdelm.checks import check_integers
from sdelm.generation.arguments import check_layers, check_temperatures
from sdelm.generation.distribution import (
    row_generator,
    sample_tokens,
    sampling_distribution,
    token_entropy,
)
from sdelm.lm import LM, cache_keyword, check_cache_used
from sdelm.trajectories import Trajectories

__all__ = ["branch", "prefix_positions"]


def prefix_positions(
    trajs: Trajectories, steps: Sequence[int], *, n_prefixes: int | None = None, seed: int = 0
) -> list[tuple[int, int]]:
    """Choose prefixes: (sequence, step) pairs where the sequence goes on after the step.

    Args:
        trajs: Generated trajectories.
        steps: Candidate positions k (0-based generated-token indices).
        n_prefixes: Keep this many, drawn at random without replacement; default all.
        seed: Seed of that draw.

    Returns:
        Sorted (sequence, step) pairs whose steps k and k + 1 are both recorded.

    """
    pairs = [
        (i, k)
        for i in range(trajs.n_sequences)
        for k in steps
        if 0 <= k < trajs.n_steps - 1 and trajs.mask[i, k] and trajs.mask[i, k + 1]
    ]
    if n_prefixes is not None and n_prefixes < len(pairs):
        picks = np.random.default_rng(seed).choice(len(pairs), n_prefixes, replace=False)
        pairs = [pairs[j] for j in sorted(picks)]
    return pairs


def _top_mass(logp: torch.Tensor, mass: float = 0.9) -> torch.Tensor:
    """Tokens needed to reach ``mass`` of each row's probability: (rows, vocab) -> (rows,)."""
    sorted_p = logp.exp().sort(dim=-1, descending=True).values
    return (sorted_p.cumsum(dim=-1) < mass).sum(dim=-1) + 1


def _read_in_one_row(
    body: torch.nn.Module, cache: Any, drawn: torch.Tensor, position: int, length: int
) -> list[torch.Tensor]:
    """Read every branch token in one row: each sees the prefix up to y_k and itself only.

    One copy of the prefix's KV cache serves all branches (a tree mask). Valid while no
    sliding window binds: every prefix position must be in the cache and in reach.

    Args:
        body: The model without its read-out.
        cache: The prefix's KV cache, ``length`` positions (left unchanged).
        drawn: Long tensor of size (width,): the branch tokens.
        position: Position of y_k, the branch point.
        length: Positions in the cache.

    Returns:
        Every layer's states, each a float tensor of size (width, hidden).

    """
    width, device = len(drawn), drawn.device
    allowed = torch.zeros(width, length + width, dtype=torch.bool, device=device)
    allowed[:, : position + 1] = True  # the recorded tokens after y_k are masked
    allowed[:, length:] = torch.eye(width, dtype=torch.bool, device=device)
    dtype = next(body.parameters()).dtype
    additive = torch.zeros(allowed.shape, dtype=dtype, device=device)
    additive[~allowed] = torch.finfo(dtype).min
    branched = body(
        input_ids=drawn[None],
        attention_mask=additive[None, None],
        position_ids=torch.full((1, width), position + 1, device=device),
        output_hidden_states=True,
        **{cache_keyword(body): copy.deepcopy(cache)},
    )
    return [hidden[0] for hidden in branched.hidden_states]


def _read_row_per_branch(
    body: torch.nn.Module, cache: Any, drawn: torch.Tensor, position: int, length: int
) -> list[torch.Tensor]:
    """Read each branch token in its own row, from the prefix's KV cache repeated.

    The model builds its own masks, sliding windows included. Arguments and result as
    :func:`_read_in_one_row`.
    """
    width, device = len(drawn), drawn.device
    shared = copy.deepcopy(cache)
    shared.batch_repeat_interleave(width)
    attention_mask = torch.ones(width, length + 1, dtype=torch.long, device=device)
    attention_mask[:, position + 1 : length] = 0  # the recorded tokens after y_k
    branched = body(
        input_ids=drawn[:, None],
        attention_mask=attention_mask,
        position_ids=torch.full((width, 1), position + 1, device=device),
        output_hidden_states=True,
        **{cache_keyword(body): shared},
    )
    return [hidden[:, -1] for hidden in branched.hidden_states]


def _branch_sequence(
    lm: LM,
    prompt_ids: list[int],
    tokens: torch.Tensor,
    steps: list[int],
    temperatures: tuple[float, ...],
    n_branches: int,
    top_p: float,
    layers: tuple[int, ...],
    seed: int,
    sequence: int,
) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    """Branch one recorded sequence at each of its branch points, reading the sequence once.

    Args:
        lm: The model that generated the sequence.
        prompt_ids: Token ids of the formatted prompt.
        tokens: Long tensor of size (n_steps,): the generated tokens y_0, y_1, ….
        steps: Branch points k, increasing.
        temperatures: Branching temperatures.
        n_branches: Tokens drawn per branch point and temperature.
        top_p: Nucleus mass in (0, 1].
        layers: Layers to record.
        seed: Seed of the draws.
        sequence: The sequence's row in its trajectories, which keys its random streams.

    Yields:
        (k, parts): ``prefix_states`` (n_layers, hidden), ``states`` (n_temperatures,
        n_branches, n_layers, hidden), ``tokens`` and ``logprobs`` (n_temperatures,
        n_branches), ``entropies`` and ``top_mass`` (n_temperatures,).

    """
    model, device = lm.model, lm.device
    body = model.base_model  # the branched tokens' logits are never used
    ids = torch.tensor([prompt_ids + tokens[: steps[-1] + 1].tolist()], device=device)
    length = ids.shape[1]
    from transformers import DynamicCache  # imported with the model, not with sdelm

    cache = DynamicCache(config=model.config)
    positions = [len(prompt_ids) + k for k in steps]
    out = model(
        input_ids=ids,
        output_hidden_states=True,
        logits_to_keep=torch.tensor(positions, device=device),  # the branch points' only
        **{cache_keyword(model): cache},
    )
    check_cache_used(cache, length)
    every_position = out.logits.shape[1] == length  # a model that ignores logits_to_keep
    # A sliding window that binds (its cache keeps only its last tokens) needs the model's
    # own masks: one row per branch. Otherwise all branches share one row.
    window = getattr(model.config.get_text_config(), "sliding_window", None)
    read = _read_in_one_row if window is None or length + 1 < window else _read_row_per_branch
    n_temperatures = len(temperatures)
    for j, (k, position) in enumerate(zip(steps, positions, strict=True)):
        logits = out.logits[0, position if every_position else j].float()
        logp = sampling_distribution(
            logits.expand(n_temperatures, -1), torch.tensor(temperatures, device=device), top_p
        )
        uniforms = torch.stack(
            [
                torch.rand(n_branches, generator=row_generator(seed, sequence, k, t))
                for t in range(n_temperatures)
            ]
        )
        probs = logp.exp()
        drawn = sample_tokens(probs.repeat_interleave(n_branches, 0), uniforms.flatten())
        hidden = read(body, cache, drawn, position, length)
        states = torch.stack([hidden[layer] for layer in layers], dim=1)
        prefix = torch.stack([out.hidden_states[layer][0, position] for layer in layers])
        yield (
            k,
            {
                "prefix_states": prefix.float().cpu(),
                "states": states.float().cpu().view(n_temperatures, n_branches, len(layers), -1),
                "tokens": drawn.view(n_temperatures, n_branches).cpu(),
                "logprobs": torch.log_softmax(logits, dim=-1)[drawn]
                .view(n_temperatures, n_branches)
                .cpu(),
                "entropies": token_entropy(logp, probs).cpu(),
                "top_mass": _top_mass(logp).cpu(),
            },
        )


@torch.inference_mode()
def branch(
    lm: LM,
    trajs: Trajectories,
    positions: Sequence[tuple[int, int]],
    *,
    n_branches: int = 32,
    temperatures: Sequence[float] = (1.0,),
    top_p: float = 1.0,
    layers: Sequence[int] | None = None,
    seed: int = 0,
) -> Branches:
    """Draw many next tokens from recorded prefixes and record the states they lead to.

    Each recorded sequence is read once, up to its last branch point; for each branch point its
    KV cache is repeated for every branch and temperature, and all branches' tokens are read in
    one batched one-token forward pass that masks the positions after the branch point.

    Args:
        lm: The model that generated ``trajs``.
        trajs: Generated trajectories from :func:`sdelm.extract`.
        positions: (sequence, step) pairs, e.g. from :func:`prefix_positions`.
        n_branches: Tokens drawn per prefix and temperature.
        temperatures: Branching temperatures, each > 0.
        top_p: Nucleus mass in (0, 1].
        layers: Layers to record; default those recorded in ``trajs``.
        seed: Seed of the draws; each (prefix, temperature) has its own random stream.

    Returns:
        :class:`Branches`.

    Raises:
        ValueError: On trajectories from another model or not generated, an empty or invalid
            position, or invalid counts, temperatures, layers or seed.

    """
    if trajs.meta.get("model") != lm.name or not (trajs.rows["source"] == "generated").all():
        raise ValueError(
            f"branch needs trajectories that {lm.name!r} generated (got model "
            f"{trajs.meta.get('model')!r}); select generated rows with where(source=...)."
        )
    check_integers(1, n_branches=n_branches)
    check_integers(0, seed=seed)
    temps = tuple(check_temperatures(temperatures))
    layers = check_layers(lm, trajs.layers if layers is None else layers)
    positions = [(int(i), int(k)) for i, k in positions]
    bad = [
        (i, k)
        for i, k in positions
        if not (0 <= i < trajs.n_sequences and 0 <= k < trajs.n_steps and trajs.mask[i, k])
    ]
    if not positions or bad:
        raise ValueError(
            f"positions must be recorded (sequence, step) pairs; {bad[:3] or 'none given'}. "
            "Choose them with sdelm.generation.prefix_positions."
        )
    chat = bool(trajs.meta.get("chat", False))
    by_sequence: dict[int, list[int]] = {}
    for i, k in positions:
        by_sequence.setdefault(i, []).append(k)
    found: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
    for i, steps in by_sequence.items():
        prompt = lm.format_prompt(trajs.rows["prompt"].iloc[i], chat=chat)
        prompt_ids = lm.tokenizer(prompt, add_special_tokens=not chat)["input_ids"]
        branch_points = sorted(set(steps))
        for k, branched in _branch_sequence(
            lm,
            prompt_ids,
            trajs.tokens[i],
            branch_points,
            temps,
            n_branches,
            top_p,
            layers,
            seed,
            i,
        ):
            found[i, k] = branched
    parts = {name: [found[position][name] for position in positions] for name in BRANCH_TENSORS}
    rows = trajs.rows.iloc[[i for i, _ in positions]].reset_index(drop=True)
    prefixes = rows[["prompt_id", "prompt", "category", "temperature", "sample"]].assign(
        sequence=[i for i, _ in positions], step=[k for _, k in positions]
    )
    return Branches(
        **{name: torch.stack(values) for name, values in parts.items()},
        prefixes=prefixes,
        temperatures=temps,
        layers=layers,
        meta={
            "model": lm.name,
            "seed": seed,
            "n_branches": n_branches,
            "top_p": top_p,
            "chat": chat,
        },
    )
