"""Layer-time extraction, the untrained null model, and Lines of Thought on the packaged model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import sdelm
from sdelm.models.lines_of_thought import LayerLinear

TEXTS = [
    "The quick brown fox jumps over the lazy dog again and again.",
    "To be, or not to be, that is the question: whether 'tis nobler.",
    "Rivers carry water from the mountains down to the open sea.",
]


def test_layer_trajectories_are_the_last_tokens_states_after_every_layer(lm):
    trajs = sdelm.layer_trajectories(lm, TEXTS, n_tokens=12, progress=False)
    assert trajs.time_axis == "layer" and trajs.layers == (0,)
    assert trajs.states.shape == (3, 1, lm.n_layers + 1, lm.hidden_size) and trajs.mask.all()
    ids = torch.tensor(
        [lm.tokenizer(t, add_special_tokens=False)["input_ids"][:12] for t in TEXTS]
    )
    with torch.no_grad():
        hidden = lm.model(input_ids=ids, output_hidden_states=True).hidden_states
    expected = torch.stack([h[:, -1] for h in hidden], dim=1)
    assert torch.allclose(trajs.layer(0), expected, atol=1e-5)
    assert (trajs.tokens == ids[:, -1:]).all()
    assert trajs.meta["n_tokens"] == 12 and not trajs.meta["shuffled"]
    assert list(trajs.rows["source"]) == ["human"] * 3


def test_gibberish_shuffles_each_piece_reproducibly(llama):
    plain = sdelm.layer_trajectories(llama, TEXTS, n_tokens=12, progress=False)
    shuffled = sdelm.layer_trajectories(llama, TEXTS, n_tokens=12, shuffle=True, progress=False)
    again = sdelm.layer_trajectories(llama, TEXTS, n_tokens=12, shuffle=True, progress=False)
    assert torch.equal(shuffled.states, again.states)
    assert not torch.allclose(plain.states[:, :, -1], shuffled.states[:, :, -1])
    for a, b in zip(plain.rows["text"], shuffled.rows["text"], strict=True):
        assert sorted(a) == sorted(b) and a != b  # the byte tokenizer: one token per character


def test_short_texts_raise_or_are_skipped(llama):
    with pytest.raises(ValueError, match="skip_short=True"):
        sdelm.layer_trajectories(llama, [*TEXTS, "Too short."], n_tokens=20, progress=False)
    trajs = sdelm.layer_trajectories(
        llama, [*TEXTS, "Too short."], n_tokens=20, skip_short=True, progress=False
    )
    assert len(trajs) == 3 and trajs.meta["skipped"] == 1
    with pytest.raises(ValueError, match="non-empty list"):
        sdelm.layer_trajectories(llama, "one string", progress=False)
    with pytest.raises(ValueError, match="n_tokens"):
        sdelm.layer_trajectories(llama, TEXTS, n_tokens=0, progress=False)


def test_untrained_has_the_architecture_and_random_weights(lm):
    null = sdelm.untrained(lm, seed=1)
    assert type(null.model) is type(lm.model) and null.tokenizer is lm.tokenizer
    assert null.name.endswith("(untrained)") and null.n_layers == lm.n_layers
    weights = dict(null.model.named_parameters())
    same = dict(sdelm.untrained(lm, seed=1).model.named_parameters())
    other = dict(sdelm.untrained(lm, seed=2).model.named_parameters())
    name = next(n for n in weights if "weight" in n and weights[n].ndim == 2)
    assert torch.equal(weights[name], same[name])
    assert not torch.equal(weights[name], other[name])
    state = torch.get_rng_state()
    sdelm.untrained(lm, seed=3)
    assert torch.equal(state, torch.get_rng_state())


def test_collect_layer_trajectories_rejects_unknown_choices():
    with pytest.raises(ValueError, match="texts must be"):
        sdelm.collect_layer_trajectories(texts="poetry")
    with pytest.raises(ValueError, match="null must be"):
        sdelm.collect_layer_trajectories(null="noise")


@pytest.mark.integration
def test_packaged_model_noise_grows_with_depth_unlike_its_untrained_twin(smollm2):
    passages = sdelm.corpus.shakespeare_passages(64, n_tokens=24, seed=0)
    rates = {}
    for name, lm in {"trained": smollm2, "untrained": sdelm.untrained(smollm2)}.items():
        trajs = sdelm.layer_trajectories(lm, passages, n_tokens=24, progress=False)
        data = sdelm.prepare(trajs, dim=8, standardise=False)
        layers = trajs.n_steps
        model = LayerLinear(8, layers).fit_least_squares(
            data.train, law_steps=range(1, layers - 2)
        )
        rates[name] = model.law
    assert rates["trained"]["rate_low"] > rates["untrained"]["rate_high"]
    assert rates["trained"]["rate"] > 0.03 and np.isfinite(rates["untrained"]["rate"])
