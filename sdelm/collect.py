"""The book's standard data: generated and human trajectories for one set of parameters.

Every chapter calls :func:`collect_trajectories` (token time),
:func:`collect_layer_trajectories` (layer time) or :func:`collect_branches` (the branching
experiment) with its parameters. The first call extracts
(and caches on disk, keyed by the parameters); later calls, in the same or another chapter,
load the cached file, so a chapter still runs on its own from a clean checkout.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sdelm.branches import Branches
from sdelm.cache import cached, cached_trajectories
from sdelm.corpus import Passage, prompts, shakespeare_passages
from sdelm.generation import (
    StateNudge,
    TemperatureControl,
    branch,
    encode_texts,
    extract,
    layer_trajectories,
    prefix_positions,
)
from sdelm.lm import load_lm, model_fingerprint, untrained
from sdelm.trajectories import Trajectories

__all__ = ["collect_branches", "collect_layer_trajectories", "collect_trajectories"]


def collect_trajectories(
    model: str = "smollm2-135m-instruct",
    *,
    n_prompts: int = 32,
    temperatures: Sequence[float] = (0.7, 1.3),
    samples_per_prompt: int = 2,
    max_new_tokens: int = 48,
    n_passages: int = 16,
    layers: Sequence[int] | None = None,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 64,
    first_prompt: int = 0,
    control: TemperatureControl | None = None,
    nudge: StateNudge | None = None,
    device: str = "auto",
    cache: bool = True,
    progress: bool = False,
) -> Trajectories:
    """Return generated trajectories of bundled prompts plus teacher-forced Shakespeare.

    Args:
        model: Model name for :func:`sdelm.load_lm`.
        n_prompts: Bundled prompts used (interleaved by category).
        temperatures: Sampling temperatures.
        samples_per_prompt: Samples per prompt and temperature.
        max_new_tokens: Generated tokens per sequence at most; also the human passages' length.
        n_passages: Human passages (0 for none).
        layers: Layers recorded; ``None`` for the model's default (0, middle, last).
        top_p: Nucleus sampling mass.
        seed: Seed of sampling and of the choice of passages.
        batch_size: Sequences per forward pass.
        first_prompt: Position of the first bundled prompt used: ``first_prompt = 32`` with
            ``n_prompts = 16`` uses prompts 32–47, which the default data never saw.
        control: A temperature control (:mod:`sdelm.control`) applied during sampling.
        nudge: A state nudge (:class:`sdelm.control.DriftNudge`) applied during sampling.
        device: Device for the LLM (``"auto"``: CUDA when present).
        cache: Reuse (and store) trajectories computed with the same parameters.
        progress: Show progress bars.

    Returns:
        Generated rows (source ``"generated"``) followed by human rows (source ``"human"``).

    """
    params = {
        "what": "collect_trajectories",
        "model": model,
        "n_prompts": n_prompts,
        "temperatures": [float(t) for t in temperatures],
        "samples_per_prompt": samples_per_prompt,
        "max_new_tokens": max_new_tokens,
        "n_passages": n_passages,
        "layers": None if layers is None else [int(layer) for layer in layers],
        "top_p": top_p,
        "seed": seed,
        "batch_size": batch_size,
        "model_files": model_fingerprint(model),
    }
    if first_prompt:  # added only when set, so that earlier cache entries stay valid
        params["first_prompt"] = first_prompt
    if control is not None:
        params["control"] = control.describe()
    if nudge is not None:
        params["nudge"] = nudge.describe()

    def compute() -> Trajectories:
        # The passages first (no model needed): a bad n_passages fails before any generation.
        passages = (
            shakespeare_passages(n_passages, n_tokens=max_new_tokens, seed=seed)
            if n_passages
            else []
        )
        lm = load_lm(model, device=device)
        parts = [
            extract(
                lm,
                prompts(first_prompt + n_prompts)[first_prompt:],
                max_new_tokens=max_new_tokens,
                temperatures=temperatures,
                samples_per_prompt=samples_per_prompt,
                top_p=top_p,
                layers=layers,
                batch_size=batch_size,
                seed=seed,
                first_index=first_prompt,
                control=control,
                nudge=nudge,
                progress=progress,
            )
        ]
        if passages:
            parts.append(
                encode_texts(
                    lm,
                    passages,
                    max_tokens=max_new_tokens,
                    layers=layers,
                    batch_size=batch_size,
                    progress=progress,
                )
            )
        return Trajectories.concat(parts)

    if not cache:
        return compute()
    return cached_trajectories(params, compute)


def collect_layer_trajectories(
    model: str = "smollm2-135m-instruct",
    *,
    texts: str = "human",
    n_pieces: int = 128,
    n_tokens: int = 40,
    null: str | None = None,
    seed: int = 0,
    device: str = "auto",
    cache: bool = True,
    progress: bool = False,
    **generation: Any,
) -> Trajectories:
    """Return layer-time trajectories of human or generated text, or of a null set-up.

    Args:
        model: Model name for :func:`sdelm.load_lm`.
        texts: ``"human"`` (``n_pieces`` Shakespeare passages) or ``"generated"`` (the texts
            that :func:`collect_trajectories` generates with ``generation`` arguments; those
            shorter than ``n_tokens`` tokens are skipped).
        n_pieces: Human passages.
        n_tokens: Tokens per piece.
        null: ``None``; ``"gibberish"`` (each piece's tokens shuffled); or ``"untrained"`` (the
            same architecture with random weights, seeded by ``seed``).
        seed: Seed of the passages, shuffles and random weights.
        device: Device for the LLM.
        cache: Reuse (and store) trajectories computed with the same parameters.
        progress: Show progress bars.
        **generation: Passed to :func:`collect_trajectories` when ``texts="generated"``.

    Returns:
        Trajectories with ``time_axis="layer"`` (see :func:`sdelm.layer_trajectories`).

    Raises:
        ValueError: On an unknown ``texts`` or ``null``.

    """
    if texts not in ("human", "generated"):
        raise ValueError(f"texts must be 'human' or 'generated', got {texts!r}.")
    if null not in (None, "gibberish", "untrained"):
        raise ValueError(f"null must be None, 'gibberish' or 'untrained', got {null!r}.")
    params = {
        "what": "collect_layer_trajectories",
        "model": model,
        "texts": texts,
        "n_pieces": n_pieces if texts == "human" else None,
        "n_tokens": n_tokens,
        "null": null,
        "seed": seed,
        "generation": generation if texts == "generated" else None,
        "model_files": model_fingerprint(model),
    }

    def compute() -> Trajectories:
        if texts == "human":
            pieces = shakespeare_passages(n_pieces, n_tokens=n_tokens, seed=seed)
        else:
            rows = collect_trajectories(model, seed=seed, device=device, **generation).rows
            rows = rows[rows["source"] == "generated"]
            pieces = [
                Passage(row.prompt_id, f"T={row.temperature:g}", row.text)
                for row in rows.itertuples()
            ]
        lm = load_lm(model, device=device)
        if null == "untrained":
            lm = untrained(lm, seed=seed)
        return layer_trajectories(
            lm,
            pieces,
            n_tokens=n_tokens,
            shuffle=null == "gibberish",
            skip_short=texts == "generated",
            source=texts,
            seed=seed,
            progress=progress,
        )

    if not cache:
        return compute()
    return cached_trajectories(params, compute)


def collect_branches(
    model: str = "smollm2-135m-instruct",
    *,
    first_prompt: int = 24,
    n_prompts: int = 24,
    source_temperature: float = 0.9,
    samples_per_prompt: int = 2,
    max_new_tokens: int = 48,
    steps: Sequence[int] = (3, 11, 23, 35),
    n_branches: int = 32,
    temperatures: Sequence[float] = (0.5, 0.9, 1.3),
    layers: Sequence[int] | None = None,
    seed: int = 0,
    device: str = "auto",
    cache: bool = True,
) -> tuple[Trajectories, Branches]:
    """Generate from bundled prompts, then branch many next tokens at chosen steps.

    Args:
        model: Name for :func:`sdelm.load_lm`.
        first_prompt: Position of the first bundled prompt: 24 takes prompts that no model
            fitted on ``collect_trajectories(n_prompts=24)`` has seen.
        n_prompts: Number of prompts.
        source_temperature: Temperature of the recorded generations the prefixes come from.
        samples_per_prompt: Recorded generations per prompt.
        max_new_tokens: Length of those generations.
        steps: Positions k at which to branch (where a generation goes on after k).
        n_branches: Tokens drawn per prefix and temperature.
        temperatures: Branching temperatures.
        layers: Layers to record; default ``lm.default_layers()``.
        seed: Seed of generation and branching.
        device: Device for the LLM.
        cache: Reuse (and store) results computed by the same code and parameters.

    Returns:
        The recorded generations and the :class:`~sdelm.branches.Branches` of their prefixes.

    """
    source = collect_trajectories(
        model,
        first_prompt=first_prompt,
        n_prompts=n_prompts,
        temperatures=[source_temperature],
        samples_per_prompt=samples_per_prompt,
        max_new_tokens=max_new_tokens,
        n_passages=0,
        layers=layers,
        seed=seed,
        device=device,
        cache=cache,
    )
    positions = prefix_positions(source, steps)
    params: dict[str, Any] = {
        "what": "collect_branches",
        "source": source.meta,
        "first_prompt": first_prompt,
        "positions": positions,
        "n_branches": n_branches,
        "temperatures": [float(t) for t in temperatures],
        "seed": seed,
        "model_files": model_fingerprint(model),
    }

    def compute() -> Branches:
        lm = load_lm(model, device=device)
        return branch(
            lm, source, positions, n_branches=n_branches, temperatures=temperatures, seed=seed
        )

    if not cache:
        return source, compute()
    return source, cached("branches", params, compute, load=Branches.load, save=Branches.save)
