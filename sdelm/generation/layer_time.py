"""Trajectories across depth: one token's hidden state, layer after layer."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm import tqdm

from sdelm.checks import check_integers
from sdelm.corpus import Passage
from sdelm.generation.distribution import row_generator
from sdelm.generation.records import passage_rows, provenance
from sdelm.lm import LM
from sdelm.trajectories import Trajectories

__all__ = ["layer_trajectories"]


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
                row[torch.randperm(n_tokens, generator=row_generator(seed, i))]
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
    rows = passage_rows(chosen, [lm.tokenizer.decode(row.tolist()) for row in pieces], source)
    meta = provenance(
        lm, (0,), kind="layer", n_tokens=n_tokens, shuffled=shuffle, skipped=len(short)
    )
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
