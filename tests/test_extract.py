"""Extraction on tiny random models (fast) and on the packaged SmolLM2 (integration)."""

from __future__ import annotations

import importlib

import pytest
import torch

import sdelm
from sdelm import LM, extract
from sdelm.generation import distribution, sampling

LM_MODULE = importlib.import_module("sdelm.lm")

PROMPTS = ["hello there", "a", "the quick brown fox"]


def replay_states(lm: LM, trajs: sdelm.Trajectories, row: int, chat: bool = True) -> torch.Tensor:
    """States of one row recomputed by one forward pass over prompt + generated tokens.

    Returns:
        Tensor of size (n_layers, n_valid_steps, dim).
    """
    prompt = lm.format_prompt(trajs.rows["prompt"][row], chat=chat)
    has_template = chat and bool(lm.tokenizer.chat_template)
    prompt_ids = lm.tokenizer(prompt, add_special_tokens=not has_template)["input_ids"]
    n_valid = int(trajs.lengths[row])
    generated = trajs.tokens[row, :n_valid].tolist()
    ids = torch.tensor([prompt_ids + generated])
    with torch.inference_mode():
        out = lm.model(input_ids=ids, output_hidden_states=True)
    return torch.stack([out.hidden_states[layer][0, len(prompt_ids) :] for layer in trajs.layers])


def test_shapes_rows_and_meta(lm):
    trajs = extract(
        lm,
        PROMPTS,
        max_new_tokens=7,
        temperatures=[0.5, 1.5],
        samples_per_prompt=2,
        batch_size=4,
        seed=3,
        progress=False,
    )
    n = len(PROMPTS) * 2 * 2
    assert trajs.states.shape == (n, 3, 7, 32)
    assert trajs.layers == (0, 1, 3)  # embedding, middle, last
    assert trajs.rows["temperature"].tolist() == [0.5, 0.5, 1.5, 1.5] * len(PROMPTS)
    assert trajs.rows["sample"].tolist() == [0, 1, 0, 1] * len(PROMPTS)
    assert set(trajs.rows["source"]) == {"generated"}
    assert trajs.meta["seed"] == 3 and trajs.meta["model"] == lm.name
    assert trajs.meta["sdelm_version"] == sdelm.__version__
    valid = trajs.mask
    assert torch.isfinite(trajs.logprobs[valid]).all() and (trajs.logprobs[valid] <= 0).all()
    assert (trajs.entropies[valid] >= 0).all()
    assert (trajs.tokens[valid] >= 0).all()


def test_same_arguments_give_bit_identical_trajectories(llama):
    kwargs = dict(
        max_new_tokens=9, temperatures=[1.0], samples_per_prompt=2, seed=11, progress=False
    )
    first, second = extract(llama, PROMPTS, **kwargs), extract(llama, PROMPTS, **kwargs)
    for name in ("states", "tokens", "logprobs", "entropies", "mask"):
        torch.testing.assert_close(
            getattr(first, name), getattr(second, name), rtol=0, atol=0, equal_nan=True
        )
    other_seed = extract(llama, PROMPTS, **{**kwargs, "seed": 12})
    assert not torch.equal(first.tokens, other_seed.tokens)


def test_samples_of_one_prompt_differ(llama):
    trajs = extract(llama, ["hello"], max_new_tokens=12, samples_per_prompt=3, progress=False)
    assert len({tuple(row.tolist()) for row in trajs.tokens}) == 3


@pytest.mark.parametrize("chat", [True, False])
def test_recorded_states_equal_a_replay_forward_pass(lm, chat):
    trajs = extract(
        lm, PROMPTS, max_new_tokens=8, temperatures=[1.0], batch_size=3, chat=chat, progress=False
    )
    for row in range(trajs.n_sequences):
        replay = replay_states(lm, trajs, row, chat=chat)
        recorded = trajs.states[row, :, : int(trajs.lengths[row])]
        scale = recorded.abs().max()
        assert (recorded - replay).abs().max() <= 1e-4 * scale


def test_logprob_and_entropy_describe_the_sampling_distribution(llama):
    trajs = extract(
        llama,
        PROMPTS,
        max_new_tokens=40,
        temperatures=[1.0],
        samples_per_prompt=8,
        seed=0,
        progress=False,
    )
    valid = trajs.mask
    # E[log p(y)] = −H when y is drawn from p: a check on the sampler itself.
    mean_logprob = trajs.logprobs[valid].mean()
    mean_entropy = trajs.entropies[valid].mean()
    assert abs(mean_logprob + mean_entropy) < 0.05 * mean_entropy


def test_entropy_grows_with_temperature(llama):
    trajs = extract(llama, PROMPTS, max_new_tokens=10, temperatures=[0.3, 3.0], progress=False)
    cold = trajs.where(temperature=0.3).entropies.nanmean()
    hot = trajs.where(temperature=3.0).entropies.nanmean()
    assert hot > cold


def test_tiny_top_p_is_greedy(llama):
    trajs = extract(llama, PROMPTS, max_new_tokens=6, top_p=1e-9, progress=False)
    assert torch.all(trajs.entropies[trajs.mask] == 0)
    assert torch.all(trajs.logprobs[trajs.mask] == 0)
    again = extract(llama, PROMPTS, max_new_tokens=6, top_p=1e-9, seed=99, progress=False)
    assert torch.equal(trajs.tokens, again.tokens)  # no randomness left


def test_top_p_narrows_the_distribution(llama):
    full = extract(llama, PROMPTS, max_new_tokens=8, progress=False)
    nucleus = extract(llama, PROMPTS, max_new_tokens=8, top_p=0.5, progress=False)
    assert nucleus.entropies[nucleus.mask].mean() < full.entropies[full.mask].mean()


def test_sequences_stop_after_end_of_sequence(llama):
    eos = llama.eos_token_ids[0]
    bias = torch.zeros(llama.model.config.vocab_size)  # make the end token likely
    bias[eos] = 3.5
    hook = llama.model.lm_head.register_forward_hook(lambda m, i, out: out + bias)
    try:
        trajs = extract(llama, PROMPTS, max_new_tokens=30, samples_per_prompt=4, progress=False)
    finally:
        hook.remove()
    lengths = trajs.lengths
    assert (lengths < 30).any(), "some sequences must end early"
    for row, length in enumerate(lengths.tolist()):
        assert trajs.mask[row, :length].all() and not trajs.mask[row, length:].any()
        if length < trajs.n_steps:
            assert trajs.tokens[row, length - 1] == eos  # the end token is recorded
            assert (trajs.tokens[row, length:] == -1).all()
            assert (trajs.states[row, :, length:] == 0).all()
            assert torch.isnan(trajs.logprobs[row, length:]).all()
        assert "<eos>" not in trajs.rows["text"][row]


def test_prompt_objects_keep_ids_and_categories(llama):
    prompts = sdelm.corpus.prompts(3)
    trajs = extract(llama, prompts, max_new_tokens=3, progress=False)
    assert trajs.rows["prompt_id"].tolist() == [p.id for p in prompts]
    assert trajs.rows["category"].tolist() == [p.category for p in prompts]


def test_layers_can_be_chosen(llama):
    trajs = extract(llama, PROMPTS, max_new_tokens=3, layers=[3, 0], progress=False)
    assert trajs.layers == (3, 0)
    assert torch.equal(trajs.layer(3), trajs.states[:, 0])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompts": []}, "non-empty list"),
        ({"prompts": "just one string"}, "non-empty list"),
        ({"prompts": ["ok", "  "]}, "empty"),
        ({"max_new_tokens": 0}, "max_new_tokens must be a positive integer"),
        ({"samples_per_prompt": -1}, "samples_per_prompt must be a positive integer"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"temperatures": [1.0, 0.0]}, "greedy decoding"),
        ({"temperatures": []}, "non-empty list"),
        ({"top_p": 0.0}, "top_p must be in"),
        ({"layers": [0, 4]}, "out of range"),
        ({"layers": [-1]}, "out of range"),
        ({"temperatures": [float("nan")]}, "must be finite"),
        ({"temperatures": [1.0, float("inf")]}, "must be finite"),
        ({"temperatures": [1e-45]}, "overflow float32"),
        ({"temperatures": [1e39]}, "uniform over the vocabulary"),
        ({"temperatures": 1.0}, r"temperatures must be a list of values > 0 such as \[1.0\]"),
        ({"temperatures": ["hot"]}, "temperatures must be numbers"),
        ({"seed": -1}, "seed must be an integer >= 0, got -1"),
        ({"seed": 1.5}, "seed must be an integer >= 0"),
        ({"first_index": -3}, "first_index must be an integer >= 0"),
        ({"prompts": ["ok", None]}, "Prompt 1 is None, not a string"),
        ({"layers": [2.7]}, r"Layer indices must be integers, got \[2.7\]"),
        ({"layers": [1, 3, 1]}, r"Layers \[1\] are listed more than once"),
        ({"layers": 2}, "layers must be a list"),
        ({"max_new_tokens": True}, "max_new_tokens must be a positive integer, got True"),
        ({"batch_size": 2.0}, "batch_size must be a positive integer"),
        ({"top_p": float("nan")}, "top_p must be in"),
        ({"max_new_tokens": 10**9}, r"GiB of cpu memory .* are available"),
        # Before, the list of 10^9 jobs was built first, and the OOM killer ended the process.
        ({"samples_per_prompt": 10**9}, r"GiB of cpu memory .* are available"),
    ],
)
def test_bad_input_gets_one_clear_error(llama, kwargs, message):
    arguments = {"prompts": PROMPTS, "max_new_tokens": 3, "progress": False, **kwargs}
    with pytest.raises(ValueError, match=message):
        extract(llama, **arguments)


def test_a_refused_extraction_runs_no_forward_pass(llama, monkeypatch):
    """Every argument is checked before the model reads anything."""

    def forward(*args, **kwargs):
        raise AssertionError("the model ran before the arguments were checked")

    monkeypatch.setattr(llama.model, "forward", forward)
    with pytest.raises(ValueError, match="GiB"):
        extract(llama, PROMPTS * 50, max_new_tokens=10**9, progress=False)
    with pytest.raises(ValueError, match="listed more than once"):
        sdelm.encode_texts(llama, ["to be or not"], layers=[0, 0], progress=False)


def test_uniform_table_holds_the_numbers_of_one_draw_per_step():
    """One draw of n numbers equals n draws of one, so the bulk table changes no sample."""
    keys = [(0, 0, 0), (5, 1, 2), (17, 0, 1)]
    table = distribution.uniform_table(11, keys, 300)
    for row, key in enumerate(keys):
        generator = distribution.row_generator(11, *key)
        one_by_one = torch.stack([torch.rand((), generator=generator) for _ in range(300)])
        assert torch.equal(table[row], one_by_one)


def test_outputs_equal_those_recorded_before_the_bulk_draws(llama):
    """Tokens and log-probabilities recorded by the step-by-step sampler (before the uniform
    numbers were drawn in bulk and the steps copied in blocks), for a fixed seed."""
    trajs = extract(
        llama,
        PROMPTS,
        max_new_tokens=9,
        temperatures=[0.7, 1.3],
        samples_per_prompt=2,
        batch_size=3,
        seed=5,
        progress=False,
    )
    assert trajs.tokens[:2].tolist() == [
        [119, 151, 47, 196, 237, 237, 258, 218, 172],
        [99, 150, 92, 257, 38, 243, 108, 73, 96],
    ]
    assert float(trajs.logprobs.nansum()) == pytest.approx(-566.4674072265625, abs=1e-3)
    assert float(trajs.states.double().sum()) == pytest.approx(-109.02502805064978, abs=1e-3)


def eos_likely(lm: LM, **kwargs) -> sdelm.Trajectories:
    """Extract with the end token made likely, so that sequences end at different steps."""
    bias = torch.zeros(lm.model.config.vocab_size)
    bias[lm.eos_token_ids[0]] = 3.5
    hook = lm.model.lm_head.register_forward_hook(lambda m, i, out: out + bias)
    try:
        return extract(lm, PROMPTS, samples_per_prompt=4, batch_size=5, progress=False, **kwargs)
    finally:
        hook.remove()


def test_early_ends_equal_those_recorded_before_the_bulk_draws(llama):
    trajs = eos_likely(llama, max_new_tokens=30)
    assert trajs.lengths.tolist() == [7, 2, 13, 2, 8, 30, 5, 3, 12, 6, 4, 30]


def test_steps_copied_in_blocks_equal_steps_copied_one_by_one(llama, monkeypatch):
    """A GPU's block copies (and its later stop) give the CPU's per-step trajectories."""
    per_step = eos_likely(llama, max_new_tokens=30, seed=4)
    monkeypatch.setattr(sampling, "_steps_per_copy", lambda device: 4)
    blocks = eos_likely(llama, max_new_tokens=30, seed=4)
    for name in ("states", "tokens", "logprobs", "entropies", "temperatures", "mask"):
        torch.testing.assert_close(
            getattr(blocks, name), getattr(per_step, name), rtol=0, atol=0, equal_nan=True
        )


def test_encode_texts_matches_the_models_predictions(lm):
    texts = ["to be or not to be", "hi", "all the world's a stage"]
    trajs = sdelm.encode_texts(lm, texts, max_tokens=10, progress=False)
    assert set(trajs.rows["source"]) == {"human"}
    assert trajs.lengths.tolist() == [10, 1, 10]
    for row, text in enumerate(texts):
        ids = lm.tokenizer(text)["input_ids"][:11]
        with torch.inference_mode():
            out = lm.model(input_ids=torch.tensor([ids]), output_hidden_states=True)
        logp = torch.log_softmax(out.logits[0, :-1], dim=-1)
        n = len(ids) - 1
        expected = logp[torch.arange(n), torch.tensor(ids[1:])]
        torch.testing.assert_close(trajs.logprobs[row, :n], expected, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(
            trajs.entropies[row, :n], -(logp.exp() * logp).sum(-1), atol=1e-5, rtol=1e-4
        )
        for i, layer in enumerate(trajs.layers):
            torch.testing.assert_close(
                trajs.states[row, i, :n], out.hidden_states[layer][0, 1:], atol=1e-4, rtol=1e-4
            )
        assert trajs.tokens[row, :n].tolist() == ids[1:]


def test_encode_texts_bad_input(llama):
    with pytest.raises(ValueError, match="non-empty list"):
        sdelm.encode_texts(llama, [], progress=False)
    with pytest.raises(ValueError, match="fewer than 2 tokens"):
        sdelm.encode_texts(llama, ["ok", "x"], progress=False)
    with pytest.raises(ValueError, match="max_tokens must be a positive integer"):
        sdelm.encode_texts(llama, ["ok"], max_tokens=0, progress=False)
    with pytest.raises(ValueError, match="max_tokens must be a positive integer, got True"):
        sdelm.encode_texts(llama, ["ok"], max_tokens=True, progress=False)
    with pytest.raises(ValueError, match="Layer indices must be integers"):
        sdelm.encode_texts(llama, ["ok"], layers=[0.5], progress=False)


def test_layer_trajectories_refuses_a_negative_seed(llama):
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        sdelm.layer_trajectories(llama, ["to be or not to be"], n_tokens=3, seed=-2)


@pytest.mark.integration
def test_packaged_model_states_equal_a_replay(smollm2):
    prompts = sdelm.corpus.prompts(4)
    trajs = extract(
        smollm2,
        prompts,
        max_new_tokens=16,
        temperatures=[0.7, 1.3],
        batch_size=8,
        seed=0,
        progress=False,
    )
    assert trajs.layers == (0, 15, 30) and trajs.dim == 576
    worst = 0.0
    for row in range(trajs.n_sequences):
        replay = replay_states(smollm2, trajs, row)
        recorded = trajs.states[row, :, : int(trajs.lengths[row])]
        # Compare per layer: each layer has its own scale.
        for layer in range(len(trajs.layers)):
            error = (recorded[layer] - replay[layer]).abs().max()
            worst = max(worst, float(error / recorded[layer].abs().max()))
    assert worst <= 1e-4, worst
    assert all(len(text) > 0 for text in trajs.rows["text"])


@pytest.mark.integration
def test_packaged_model_is_reproducible_and_reads_shakespeare(smollm2):
    kwargs = dict(max_new_tokens=8, temperatures=[1.0], seed=5, progress=False)
    first = extract(smollm2, ["Tell me about rivers."], **kwargs)
    second = extract(smollm2, ["Tell me about rivers."], **kwargs)
    assert torch.equal(first.states, second.states)
    passages = sdelm.corpus.shakespeare_passages(3, n_tokens=12, seed=0)
    human = sdelm.encode_texts(smollm2, passages, max_tokens=12, progress=False)
    assert human.lengths.tolist() == [12, 12, 12]
    # The model predicts Shakespeare worse than its own samples at T=1 but not absurdly.
    assert -12 < float(human.logprobs[human.mask].mean()) < -1


def test_text_read_after_its_prompt_is_read_as_generated_text_is(lm):
    texts = ["to be or not to be, that is the question", "once upon a time", "x y"]
    read = sdelm.read_in_context(lm, texts, PROMPTS, max_tokens=6, batch_size=2)
    assert list(read.rows["prompt"]) == PROMPTS and (read.rows["source"] == "human").all()
    assert read.lengths.tolist() == [
        min(6, len(lm.tokenizer(t, add_special_tokens=False)["input_ids"])) for t in texts
    ]
    for i in range(len(texts)):
        # The states a generated continuation with these tokens would have (see extract).
        n = int(read.lengths[i])
        torch.testing.assert_close(
            read.states[i, :, :n], replay_states(lm, read, i), atol=1e-4, rtol=1e-4
        )
    context = lm.tokenizer(lm.format_prompt(PROMPTS[0]), add_special_tokens=False)["input_ids"]
    ids = torch.tensor([context + read.tokens[0, :6].tolist()])
    with torch.inference_mode():
        logp = torch.log_softmax(lm.model(input_ids=ids).logits[0].float(), dim=-1)
    expected = logp[len(context) - 1 : -1].gather(1, read.tokens[0, :6, None]).squeeze(1)
    torch.testing.assert_close(read.logprobs[0, :6], expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(read.untempered_logprobs, read.logprobs, equal_nan=True)


def test_read_in_context_refuses_mismatched_or_empty_input(llama):
    with pytest.raises(ValueError, match="one prompt per text"):
        sdelm.read_in_context(llama, ["to be", "or not"], ["a prompt"])
    with pytest.raises(ValueError, match="non-empty list"):
        sdelm.read_in_context(llama, [], [])
    with pytest.raises(ValueError, match="no tokens"):
        sdelm.read_in_context(llama, ["to be", ""], ["a", "b"])


def _extract_with_threads(lm: LM, threads: int) -> sdelm.Trajectories:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return extract(
            lm, sdelm.corpus.prompts(8), max_new_tokens=12, samples_per_prompt=2, seed=0,
            progress=False,
        )  # fmt: skip
    finally:
        torch.set_num_threads(before)


@pytest.mark.integration
def test_sampled_text_and_states_do_not_depend_on_the_number_of_threads():
    # sdelm asks for eager attention on the CPU: PyTorch's fused attention (sdpa) can split a
    # decoding step's keys among the threads, so that its states differ with their number
    # (seen with the kernels torch picks itself; with the pinned ones it happened not to).
    assert LM_MODULE.attention_for(torch.device("cpu")) == "eager"
    lm = sdelm.load_lm("smollm2-135m-instruct", device="cpu")
    one, two = (_extract_with_threads(lm, threads) for threads in (1, 2))
    assert torch.equal(one.states, two.states) and torch.equal(one.tokens, two.tokens)
