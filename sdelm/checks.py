"""Argument validators shared by every layer: counts, seeds and time steps.

Each refuses a bad value with one error that names the argument and says what to give instead.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = ["TIME_STEP_RANGE", "check_integers", "check_time_step", "is_integer"]


def is_integer(value: object) -> bool:
    """Whether ``value`` is an integer (Python or NumPy); a bool is not."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def check_integers(minimum: int, **values: object) -> None:
    """Refuse any value that is not an integer >= ``minimum``, naming its argument.

    Args:
        minimum: Smallest allowed value (1: a count, 0: a seed or a position).
        **values: The arguments to check, by name.

    Raises:
        ValueError: ``"<name> must be a positive integer, got ..."`` (or ``an integer >= 0``).

    """
    what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    for name, value in values.items():
        if not is_integer(value) or value < minimum:
            raise ValueError(f"{name} must be {what}, got {value!r}.")


#: The time steps sdelm accepts: far outside, float32 likelihoods overflow or lose all
#: precision (a variance of 1e-300 is 0 in float32).
TIME_STEP_RANGE = (1e-6, 1e6)


def check_time_step(value: object, name: str = "dt") -> float:
    """Return ``value`` as a float if it is a usable time step, else raise.

    Args:
        value: The time step to check (a real number, not a bool).
        name: What to call it in the error, e.g. ``"dt"`` or ``"header field 'dt'"``.

    Returns:
        ``float(value)``.

    Raises:
        ValueError: If ``value`` is not a real number, or lies outside
            :data:`TIME_STEP_RANGE` (zero, negative, NaN and infinite included).

    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a positive, finite number, got {value!r}.")
    step = float(value)
    if not (math.isfinite(step) and step > 0):
        raise ValueError(
            f"{name} must be a positive, finite number, got {value!r}; it is the time between "
            "consecutive steps (1.0 for one token)."
        )
    low, high = TIME_STEP_RANGE
    if not low <= step <= high:
        raise ValueError(
            f"{name} = {value!r} lies outside [{low:g}, {high:g}]: the likelihood's variances "
            "σ²·dt and rates ΔX/dt leave float32's range there. It is the time between "
            "consecutive steps (1.0 for one token); rescale time so that it is near 1."
        )
    return step
