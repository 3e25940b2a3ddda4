"""Surrogate nulls: a fitted VAR(1), time-shuffled sequences and i.i.d. resamples."""

from __future__ import annotations

import pytest
import torch

import sdelm
from sdelm.analysis import surrogates
from sdelm.synthetic import as_trajectories


def var1_paths(n: int = 200, steps: int = 30, seed: int = 0) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    matrix = torch.tensor([[0.6, 0.2, 0.0], [-0.1, 0.4, 0.0], [0.0, 0.1, 0.8]])
    bias = torch.tensor([0.5, -0.2, 0.1])
    x = torch.randn(n, 3, generator=generator)
    states = [x]
    for _ in range(steps - 1):
        x = x @ matrix.T + bias + 0.3 * torch.randn(n, 3, generator=generator)
        states.append(x)
    states = torch.stack(states, dim=1)
    mask = torch.ones(n, steps, dtype=torch.bool)
    mask[::3, 20:] = False  # some shorter sequences
    return states * mask[..., None], mask, matrix, bias


def test_fit_var1_recovers_its_coefficients():
    states, mask, matrix, bias = var1_paths()
    var1 = surrogates.fit_var1(states, mask)
    assert torch.allclose(var1.matrix, matrix, atol=0.03)
    assert torch.allclose(var1.bias, bias, atol=0.03)
    assert torch.allclose(var1.covariance, 0.09 * torch.eye(3), atol=0.01)
    with pytest.raises(ValueError, match="cannot fit"):
        surrogates.fit_var1(states[:1, :2], mask[:1, :2])


def test_var1_surrogate_keeps_starts_and_lengths_and_refits_to_the_same_process():
    states, mask, matrix, _ = var1_paths()
    mask[1, :4] = False  # a sequence that starts late
    surrogate = surrogates.var1_surrogate(states, mask, seed=1)
    assert surrogate.shape == states.shape
    assert torch.equal(surrogate[0, 0], states[0, 0])
    assert torch.equal(surrogate[1, 4], states[1, 4])
    assert (surrogate[~mask] == 0).all()
    assert not torch.allclose(surrogate[mask], states[mask])
    refit = surrogates.fit_var1(surrogate, mask)
    assert torch.allclose(refit.matrix, matrix, atol=0.05)
    with pytest.raises(ValueError, match="at least one valid step"):
        surrogates.var1_surrogate(states, torch.zeros_like(mask))


def test_shuffle_keeps_the_multiset_of_states_per_sequence():
    states, mask, _, _ = var1_paths(n=20)
    shuffled = surrogates.shuffle_in_time(states, mask, seed=0)
    assert not torch.equal(shuffled, states)
    for i in range(len(states)):
        before = states[i, mask[i]].tolist()
        after = shuffled[i, mask[i]].tolist()
        assert sorted(before) == sorted(after)
    assert torch.equal(shuffled[~mask], states[~mask])


def test_iid_resample_keeps_the_marginal_and_breaks_the_order():
    states, mask, _, _ = var1_paths(n=400)
    resampled = surrogates.iid_resample(states, mask, seed=0)
    pool = {tuple(row) for row in states[mask].tolist()}
    assert all(tuple(row) in pool for row in resampled[mask].tolist())
    assert torch.allclose(resampled[mask].mean(0), states[mask].mean(0), atol=0.05)
    assert torch.allclose(resampled[mask].std(0), states[mask].std(0), rtol=0.05)
    lag = surrogates.fit_var1(resampled, mask).matrix
    assert lag.abs().max() < 0.05  # no dynamics left


def test_surrogate_split_keeps_everything_but_the_states():
    states, _, _, _ = var1_paths(n=60)
    data = sdelm.prepare(as_trajectories(states, dt=1.0), dim=None, standardise=False).train
    for kind in surrogates.KINDS:
        surrogate = surrogates.surrogate_split(data, kind, seed=0)
        assert surrogate.states.shape == data.states.shape
        assert torch.equal(surrogate.mask, data.mask) and surrogate.entropies is None
        assert surrogate.rows.equals(data.rows) and kind in surrogate.name
    with pytest.raises(ValueError, match="kind must be"):
        surrogates.surrogate_split(data, "bogus")
