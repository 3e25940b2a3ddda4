"""Argument validators: counts, seeds and time steps."""

import pytest

from sdelm import checks


def test_integer_checks():
    checks.check_integers(1, n=3)
    checks.check_integers(0, seed=0)
    assert checks.is_integer(5) and not checks.is_integer(True) and not checks.is_integer(5.0)
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        checks.check_integers(1, batch_size=0)
    with pytest.raises(ValueError, match="seed must be an integer >= 0, got False"):
        checks.check_integers(0, seed=False)
