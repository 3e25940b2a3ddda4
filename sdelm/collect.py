"""The book's standard data: generated and human trajectories for one set of parameters.

Every chapter calls :func:`collect_trajectories` with its parameters. The first call extracts
(and caches on disk, keyed by the parameters); later calls, in the same or another chapter,
load the cached file, so a chapter still runs on its own from a clean checkout.
"""

from __future__ import annotations

from collections.abc import Sequence

from sdelm.cache import cached_trajectories
from sdelm.corpus import prompts, shakespeare_passages
from sdelm.extract import encode_texts, extract
from sdelm.lm import load_lm
from sdelm.trajectories import Trajectories

__all__ = ["collect_trajectories"]


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
    batch_size: int = 16,
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
    }

    def compute() -> Trajectories:
        lm = load_lm(model, device=device)
        parts = [
            extract(
                lm,
                prompts(n_prompts),
                max_new_tokens=max_new_tokens,
                temperatures=temperatures,
                samples_per_prompt=samples_per_prompt,
                top_p=top_p,
                layers=layers,
                batch_size=batch_size,
                seed=seed,
                progress=progress,
            )
        ]
        if n_passages:
            passages = shakespeare_passages(n_passages, n_tokens=max_new_tokens, seed=seed)
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
