"""The distribution a token is drawn from, and the random numbers that draw it.

Each sequence has its own random stream (:func:`row_generator`), derived from the seed with
:class:`numpy.random.SeedSequence`; a token is drawn by inverse-CDF sampling
(:func:`sample`) from one uniform number of that stream.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "row_generator",
    "sample_tokens",
    "sampling_distribution",
    "token_entropy",
    "uniform_table",
]


def sampling_distribution(
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


def token_entropy(logp: torch.Tensor, probs: torch.Tensor | None = None) -> torch.Tensor:
    """Entropy in nats of each row of log-probabilities (batch, vocab) -> (batch,).

    ``probs``, ``logp.exp()`` where the caller has it, saves computing it again; tokens of
    probability 0 (log-probability -inf) contribute 0.
    """
    probs = logp.exp() if probs is None else probs
    return -(probs * logp).nansum(dim=-1)


def sample_tokens(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling: one token per row of probabilities (batch, vocab) from uniforms."""
    cdf = probs.cumsum(dim=-1)
    target = (uniforms.to(cdf.device) * cdf[:, -1]).unsqueeze(1)
    return torch.searchsorted(cdf, target).squeeze(1).clamp(max=probs.shape[-1] - 1)


def row_generator(seed: int, *key: int) -> torch.Generator:
    """Return a CPU generator for one sequence, seeded from ``(seed, *key)``."""
    state = np.random.SeedSequence([seed, *key]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def uniform_table(seed: int, keys: list[tuple[int, ...]], n_steps: int) -> torch.Tensor:
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
    return torch.stack([torch.rand(n_steps, generator=row_generator(seed, *key)) for key in keys])
