"""The branching experiment: branch states are what a replay forward pass gives."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

import sdelm
from sdelm.analysis import branching as branching_analysis
from sdelm.branches import Branches
from sdelm.generation import branch, prefix_positions

PROMPTS = ["The sea at dawn", "A short poem about rain", "Numbers: 1 2 3"]


@pytest.fixture
def generated(lm):
    return sdelm.extract(lm, PROMPTS, max_new_tokens=8, temperatures=[1.0], seed=0, progress=False)


def replay(lm, trajs, i: int, k: int, next_token: int | None, layers) -> torch.Tensor:
    """Hidden states (layers, hidden) at the last position of a full forward pass."""
    chat = trajs.meta["chat"]
    prompt = lm.format_prompt(trajs.rows["prompt"][i], chat=chat)
    ids = lm.tokenizer(prompt, add_special_tokens=not chat)["input_ids"]
    ids = ids + trajs.tokens[i, : k + 1].tolist() + ([] if next_token is None else [next_token])
    with torch.no_grad():
        out = lm.model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    return torch.stack([out.hidden_states[layer][0, -1] for layer in layers])


def test_branch_states_equal_a_replay_forward_pass(lm, generated):
    positions = prefix_positions(generated, [0, 3, 5])
    assert len(positions) >= 6
    branches = branch(lm, generated, positions, n_branches=6, temperatures=[0.7, 1.5], seed=1)
    assert branches.states.shape == (len(positions), 2, 6, 3, lm.hidden_size)
    layers = branches.layers
    for p, (i, k) in enumerate(positions):
        assert torch.allclose(branches.prefix_states[p], generated.states[i, :, k], atol=1e-4)
        assert torch.allclose(
            branches.prefix_states[p], replay(lm, generated, i, k, None, layers), atol=1e-4
        )
        for t, b in [(0, 0), (1, 5), (1, 2)]:
            token = int(branches.tokens[p, t, b])
            expected = replay(lm, generated, i, k, token, layers)
            assert torch.allclose(branches.states[p, t, b], expected, atol=1e-4)


def test_branch_log_probabilities_entropies_and_mass(lm, generated):
    llama = lm
    positions = prefix_positions(generated, [2])
    branches = branch(llama, generated, positions, n_branches=4, temperatures=[1.0, 0.01])
    for p, (i, k) in enumerate(positions):
        # The recorded log-prob of y_{k+1} in a T = 1 run is that of the same distribution.
        recorded_next = int(generated.tokens[i, k + 1])
        chat = generated.meta["chat"]
        prompt = llama.format_prompt(generated.rows["prompt"][i], chat=chat)
        ids = llama.tokenizer(prompt, add_special_tokens=not chat)["input_ids"]
        ids = ids + generated.tokens[i, : k + 1].tolist()
        with torch.no_grad():
            logp = torch.log_softmax(llama.model(input_ids=torch.tensor([ids])).logits[0, -1], -1)
        assert math.isclose(
            float(logp[recorded_next]), float(generated.logprobs[i, k + 1]), abs_tol=1e-4
        )
        drawn = branches.tokens[p, 0]
        assert torch.allclose(branches.logprobs[p, 0], logp[drawn], atol=1e-5)
        entropy = float(-(logp.exp() * logp).sum())
        assert math.isclose(float(branches.entropies[p, 0]), entropy, rel_tol=1e-4)
        # Tokens carrying 90% of the mass, counted independently at each temperature.
        for t, temperature in enumerate(branches.temperatures):
            p_sorted = torch.softmax(logp / temperature, -1).sort(descending=True).values
            needed = int(torch.searchsorted(p_sorted.cumsum(-1), torch.tensor(0.9))) + 1
            assert abs(int(branches.top_mass[p, t]) - needed) <= 1
        assert int(branches.top_mass[p, 1]) < int(branches.top_mass[p, 0])


def test_same_seed_same_branches_other_seed_other(lm, generated):
    llama = lm
    positions = prefix_positions(generated, [1, 4])
    a = branch(llama, generated, positions, n_branches=16, seed=3)
    b = branch(llama, generated, positions, n_branches=16, seed=3)
    c = branch(llama, generated, positions, n_branches=16, seed=4)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.states, b.states)
    assert not torch.equal(a.tokens, c.tokens)
    # A prefix's draws do not depend on which other prefixes are branched with it.
    alone = branch(llama, generated, positions[1:2], n_branches=16, seed=3)
    assert torch.equal(alone.tokens[0], a.tokens[1])


def test_branches_save_and_load(tmp_path, lm, generated):
    llama = lm
    branches = branch(llama, generated, prefix_positions(generated, [2]), n_branches=3)
    path = branches.save(tmp_path / "b.safetensors")
    again = Branches.load(path)
    for name in ("prefix_states", "states", "tokens", "logprobs", "entropies", "top_mass"):
        assert torch.equal(getattr(again, name), getattr(branches, name)), name
    assert again.prefixes.equals(branches.prefixes)
    assert again.temperatures == branches.temperatures and again.layers == branches.layers
    path.write_bytes(path.read_bytes()[:64])
    with pytest.raises(ValueError, match="not a readable branches file"):
        Branches.load(path)


def test_prefix_positions_keep_steps_that_continue(generated):
    pairs = prefix_positions(generated, [0, 7, 99])
    assert all(generated.mask[i, k] and generated.mask[i, k + 1] for i, k in pairs)
    assert all(k != 7 for _, k in pairs)  # the last recorded step has no successor
    some = prefix_positions(generated, [0, 1, 2, 3], n_prefixes=4, seed=0)
    assert len(some) == 4 and some == sorted(some)


def test_bad_input_is_refused(lm, generated):
    llama = lm
    positions = prefix_positions(generated, [1])
    with pytest.raises(ValueError, match="generated"):
        branch(llama, sdelm.Trajectories.from_states(torch.zeros(2, 3, 4)), positions)
    with pytest.raises(ValueError, match="positions"):
        branch(llama, generated, [])
    with pytest.raises(ValueError, match="positions"):
        branch(llama, generated, [(0, 99)])
    with pytest.raises(ValueError, match="temperature"):
        branch(llama, generated, positions, temperatures=[float("nan")])
    with pytest.raises(ValueError, match="n_branches"):
        branch(llama, generated, positions, n_branches=0)


def synthetic_branches(n_prefixes: int = 40, n_branches: int = 400, dt: float = 0.05):
    """Branches of the double well: X_{k+1} = X_k + μΔt + σ√Δt ξ, σ known at every prefix."""
    generator = torch.Generator().manual_seed(0)
    z0 = torch.randn(n_prefixes, 2, generator=generator)
    truth = sdelm.synthetic.DoubleWell()
    t = torch.zeros(n_prefixes)
    mean = z0 + truth.drift(z0, t) * dt
    scale = truth.diffusion(z0, t) * math.sqrt(dt)
    temperatures = (1.0, 2.0)  # the second cloud has twice the noise
    noise = torch.randn(n_prefixes, 2, n_branches, 2, generator=generator)
    noise[:, 1] *= 2
    z1 = mean[:, None, None] + scale[:, None, None] * noise
    branches = Branches(
        prefix_states=z0[:, None],
        states=z1[:, :, :, None],
        tokens=torch.randint(0, 50, (n_prefixes, 2, n_branches), generator=generator),
        logprobs=torch.zeros(n_prefixes, 2, n_branches),
        entropies=torch.ones(n_prefixes, 2),
        top_mass=torch.ones(n_prefixes, 2, dtype=torch.long),
        prefixes=pd.DataFrame(
            {
                "prompt_id": [f"p{i % 8}" for i in range(n_prefixes)],
                "prompt": "",
                "category": "",
                "temperature": 1.0,
                "sample": 0,
                "sequence": range(n_prefixes),
                "step": 0,
            }
        ),
        temperatures=temperatures,
        layers=(0,),
    )
    identity = sdelm.Projection(
        mean=torch.zeros(2),
        components=torch.eye(2),
        scale=torch.ones(2),
        explained_variance=torch.full((2,), 0.5),
        layer=0,
    )
    return branches, identity, truth, scale.pow(2).sum(-1)


def test_branches_recover_a_known_diffusion():
    branches, identity, _, variance = synthetic_branches()
    seen = branching_analysis.measured(branches, identity)
    at_one = seen[seen["temperature"] == 1.0]
    ratio = at_one["noise"].to_numpy() / variance.numpy()
    # tr C from 400 draws of a 2-D Gaussian: relative sd about sqrt(2/400) per coordinate.
    assert abs(ratio.mean() - 1) < 0.03
    assert np.all(np.abs(ratio - 1) < 0.35)
    doubled = seen[seen["temperature"] == 2.0]["noise"].to_numpy() / variance.numpy()
    assert abs(doubled.mean() - 4) < 0.15
    # Gaussian clouds: kurtosis matches the Gaussian surrogate's on average.
    gap = (seen["kurtosis"] - seen["surrogate_kurtosis"]).mean()
    assert abs(gap) < 0.1


def test_the_true_model_predicts_the_branches_and_a_wrong_one_does_not():
    branches, identity, truth, variance = synthetic_branches()
    wrong = sdelm.models.linear.OrnsteinUhlenbeck(2)  # zero drift, unit noise
    table = branching_analysis.against_models(
        branches, identity, {"truth": truth, "wrong": wrong}, dt=0.05
    )
    one = table[table["temperature"] == 1.0].set_index(["model", "prefix"])
    true_rows = one.loc["truth"]
    assert np.allclose(true_rows["predicted_noise"], variance.numpy(), rtol=1e-5)
    # Drift error of the truth is the sampling error of a mean of 400 draws: tr C / B.
    assert (true_rows["drift_error"] < 10 * true_rows["noise"] / 400).mean() > 0.9
    # The decomposition: mean squared residual = tr C + |m − μΔt|².
    z0, z1 = branching_analysis.project(branches, identity)
    step = truth.drift(z0, torch.zeros(len(z0))) * 0.05
    residual = (z1[:, 0] - z0[:, None] - step[:, None]).pow(2).sum(-1).mean(-1)
    assert np.allclose(residual.numpy(), true_rows["noise"] + true_rows["drift_error"], rtol=1e-4)
    assert one.loc["truth", "nll"].mean() < one.loc["wrong", "nll"].mean() - 0.3


def test_a_discrete_mixture_is_heavier_tailed_than_its_gaussian_surrogate():
    branches, identity, _, _ = synthetic_branches(n_branches=64)
    # Rare jumps: most branches stay, one in sixteen moves far (a token mixture).
    z1 = branches.states.clone()
    z1[:, :, :, 0] = branches.prefix_states[:, None, None, 0]
    z1[:, :, ::16, 0, 0] += 3.0
    jumps = Branches(**{**branches.__dict__, "states": z1})
    seen = branching_analysis.measured(jumps, identity)
    assert (seen["kurtosis"] - seen["surrogate_kurtosis"]).mean() > 5
