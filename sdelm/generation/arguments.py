"""Checks of the arguments every generation entry point shares: layers, temperatures, prompts.

Each refuses a bad value with one error that says what to give instead.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from sdelm.checks import is_integer
from sdelm.corpus import Prompt
from sdelm.lm import LM

__all__ = ["TEMPERATURE_RANGE", "as_prompts", "check_layers", "check_temperatures"]


def check_layers(lm: LM, layers: Sequence[int] | None) -> tuple[int, ...]:
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


def as_float(value: object) -> float | None:
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


def check_temperatures(temperatures: Sequence[float]) -> list[float]:
    """Return the temperatures as floats, refusing a scalar, NaN, inf and values out of range."""
    if isinstance(temperatures, (str, bytes)) or not isinstance(temperatures, Iterable):
        raise ValueError(
            f"temperatures must be a list of values > 0 such as [1.0], got {temperatures!r}."
        )
    temperatures = list(temperatures)
    values = [as_float(t) for t in temperatures]
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


def as_prompts(prompts: Sequence[str | Prompt]) -> list[Prompt]:
    """Return the prompts as :class:`~sdelm.corpus.Prompt`, naming bare strings by position."""
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
