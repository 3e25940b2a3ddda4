"""Temperature controls inside the sampling loop, rescoring, and the frontier comparison."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

import sdelm
from sdelm import control, extract, rescore
from sdelm.analysis import steering
from sdelm.data import Projection
from sdelm.models import SDEModel
from tests.test_extract import replay_states

PROMPTS = ["hello there", "a", "the quick brown fox"]


class Fixed:
    """A control that always answers one temperature (what plain sampling does)."""

    layer = None

    def __init__(self, value: float) -> None:
        self.value = value

    def __call__(self, step, state, logits, base):
        return torch.full_like(base, self.value)

    def describe(self):
        return {"kind": "fixed", "value": self.value}


class RadialNoise(SDEModel):
    """σ_i(x) = |x|: tr σσᵀ = dim · |x|², a diffusion with a known value everywhere."""

    def drift(self, x, t):
        return -x

    def diffusion(self, x, t):
        return x.norm(dim=-1, keepdim=True).expand_as(x).clamp_min(1e-6)


def identity_projection(dim: int, layer: int) -> Projection:
    return Projection(
        mean=torch.zeros(dim),
        components=torch.eye(dim),
        scale=torch.ones(dim),
        explained_variance=torch.full((dim,), 1 / dim),
        layer=layer,
    )


def test_a_control_sets_the_temperature_each_token_is_drawn_at(llama):
    plain = extract(llama, PROMPTS, max_new_tokens=8, temperatures=[0.5], progress=False)
    steered = extract(
        llama,
        PROMPTS,
        max_new_tokens=8,
        temperatures=[1.0],
        control=Fixed(0.5),
        progress=False,
    )
    # Same random streams, same temperature: the same tokens and probabilities.
    assert torch.equal(plain.tokens, steered.tokens)
    torch.testing.assert_close(plain.logprobs, steered.logprobs, equal_nan=True)
    assert torch.all(steered.temperatures[steered.mask] == 0.5)
    assert torch.all(plain.temperatures[plain.mask] == 0.5)
    assert steered.rows["temperature"].eq(1.0).all()  # the base temperature
    assert steered.meta["control"] == {"kind": "fixed", "value": 0.5}
    assert torch.isnan(steered.temperatures[~steered.mask]).all()


def test_the_diffusion_control_follows_its_law(llama):
    dim = llama.hidden_size
    model = RadialNoise(dim)
    projection = identity_projection(dim, layer=llama.n_layers)
    law = control.DiffusionTemperature(
        model, projection, reference=dim * 4.0, strength=0.5, bounds=(0.1, 10.0)
    )
    base = torch.ones(3)
    state = torch.zeros(3, dim)
    state[:, 0] = torch.tensor([2.0, 4.0, 1.0])  # tr σσᵀ = dim |x|² = reference × (1, 4, 1/4)
    torch.testing.assert_close(law(5, state, torch.zeros(3, 7), base), torch.tensor([1, 0.5, 2.0]))
    assert torch.equal(law(0, None, torch.zeros(3, 7), base), base)  # no state before token 0
    clipped = control.DiffusionTemperature(
        model, projection, reference=dim * 4.0, strength=0.5, bounds=(0.8, 1.5)
    )
    torch.testing.assert_close(
        clipped(5, state, torch.zeros(3, 7), base), torch.tensor([1, 0.8, 1.5])
    )
    # Inside the sampling loop it reads the state of its layer after the previous token.
    trajs = extract(llama, PROMPTS, max_new_tokens=6, control=law, progress=False)
    states = trajs.layer(llama.n_layers)
    for row in range(3):
        n = int(trajs.lengths[row])
        expected = (dim * states[row, : n - 1].pow(2).sum(-1) / (dim * 4.0)).pow(-0.5)
        torch.testing.assert_close(
            trajs.temperatures[row, 1:n], expected.clamp(0.1, 10.0), rtol=1e-4, atol=1e-5
        )
        assert trajs.temperatures[row, 0] == 1.0


def test_calibration_puts_the_reference_at_the_median(llama):
    run = extract(llama, PROMPTS, max_new_tokens=10, samples_per_prompt=2, progress=False)
    entropy = control.EntropyTemperature.calibrated(run, strength=1.0)
    assert entropy.reference == pytest.approx(float(run.entropies[run.mask].median()))
    dim = llama.hidden_size
    projection = identity_projection(dim, layer=llama.n_layers)
    diffusion = control.DiffusionTemperature.calibrated(RadialNoise(dim), projection, run)
    states = run.layer(llama.n_layers)[run.mask]
    assert diffusion.reference == pytest.approx(float((dim * states.pow(2).sum(-1)).median()))
    hot = extract(llama, PROMPTS, max_new_tokens=4, temperatures=[1.5], progress=False)
    with pytest.raises(ValueError, match="temperature 1"):
        control.EntropyTemperature.calibrated(hot)


def test_the_entropy_control_cools_uncertain_tokens(llama):
    law = control.EntropyTemperature(reference=math.log(8), strength=1.0, bounds=(0.01, 100))
    logits = torch.full((2, 16), -1e9)
    logits[0, :8] = 0.0  # entropy log 8: the reference
    logits[1, :2] = 0.0  # entropy log 2: a third of it, so three times warmer
    torch.testing.assert_close(law(3, None, logits, torch.ones(2)), torch.tensor([1.0, 3.0]))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"reference": 0.0}, "reference"),
        ({"reference": 1.0, "bounds": (2.0, 1.0)}, "bounds"),
        ({"reference": 1.0, "strength": math.nan}, "strength"),
    ],
)
def test_bad_control_parameters_get_one_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        control.EntropyTemperature(**kwargs)


def test_a_projection_of_another_dimension_is_refused():
    with pytest.raises(ValueError, match="projection its data were prepared with"):
        control.DiffusionTemperature(
            RadialNoise(4), identity_projection(3, layer=0), reference=1.0
        )


def test_a_control_reading_a_missing_layer_is_refused(llama):
    law = control.DiffusionTemperature(
        RadialNoise(llama.hidden_size),
        identity_projection(llama.hidden_size, layer=99),
        reference=1.0,
    )
    with pytest.raises(ValueError, match="out of range"):
        extract(llama, PROMPTS, max_new_tokens=3, control=law, progress=False)


def test_rescore_gives_the_untempered_log_probabilities(lm):
    plain = extract(lm, PROMPTS, max_new_tokens=8, samples_per_prompt=2, progress=False)
    torch.testing.assert_close(
        rescore(lm, plain, batch_size=4), plain.logprobs, equal_nan=True, rtol=0, atol=1e-4
    )
    hot = extract(lm, PROMPTS, max_new_tokens=8, temperatures=[2.0], progress=False)
    scores = rescore(lm, hot)
    assert torch.equal(torch.isnan(scores), ~hot.mask)
    # Hot samples are less likely under the model than the tempered distribution says.
    assert scores[hot.mask].mean() < hot.logprobs[hot.mask].mean()


def test_extraction_records_what_rescore_computes(lm):
    hot = extract(
        lm,
        PROMPTS,
        max_new_tokens=8,
        temperatures=[2.0],
        top_p=0.9,
        samples_per_prompt=2,
        progress=False,
    )
    again = rescore(lm, hot)
    torch.testing.assert_close(hot.untempered_logprobs, again, equal_nan=True, rtol=0, atol=1e-4)
    assert (hot.untempered_logprobs[hot.mask] - hot.logprobs[hot.mask]).abs().max() > 0.1
    # Trajectories saved before the record: untempered reads the tokens again.
    older = replace(hot, untempered_logprobs=None)
    assert torch.isnan(older.untempered_logprobs).all()
    torch.testing.assert_close(sdelm.untempered(lm, older), again, equal_nan=True)
    human = sdelm.encode_texts(lm, ["some human text, read"], progress=False)
    torch.testing.assert_close(
        sdelm.untempered(lm, human), human.logprobs, equal_nan=True, rtol=0, atol=0
    )


def test_rescore_refuses_other_rows_and_models(llama):
    human = sdelm.encode_texts(llama, ["some human text"], progress=False)
    with pytest.raises(ValueError, match="generated rows"):
        rescore(llama, human)
    plain = extract(llama, PROMPTS, max_new_tokens=3, progress=False)
    plain.meta["model"] = "another-model"
    with pytest.raises(ValueError, match="model that generated them"):
        rescore(llama, plain)


def test_distinct_counts_ngrams_pooled_per_group():
    tokens = torch.tensor([[1, 2, 3, 1, 2], [1, 2, 3, 1, 2], [4, 5, 6, 7, -1]])
    mask = tokens >= 0
    shares = steering.distinct(tokens, mask, ["a", "a", "b"], n=2)
    # group a: bigrams 12 23 31 12, twice: 3 distinct of 8; group b: 45 56 67, all distinct.
    assert shares["a"] == pytest.approx(3 / 8) and shares["b"] == 1.0
    with pytest.raises(ValueError, match="group labels"):
        steering.distinct(tokens, mask, ["a"])


def frontier_table(arm_quality: float, arm_diversity: float) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for prompt in range(20):
        noise = rng.normal(0, 0.01)
        for arm, q, d in [("T1", -1.0, 0.6), ("T2", -2.0, 0.8), ("T3", -3.0, 0.9)]:
            rows.append({"arm": arm, "prompt_id": prompt, "logprob": q + noise, "distinct": d})
        rows.append(
            {
                "arm": "ctl",
                "prompt_id": prompt,
                "logprob": arm_quality + noise,
                "distinct": arm_diversity,
            }
        )
    return pd.DataFrame(rows)


def test_frontier_gain_measures_diversity_at_equal_quality():
    on = steering.frontier_gain(frontier_table(-1.5, 0.7), "ctl", ["T1", "T2", "T3"])
    assert on["estimate"] == pytest.approx(0.0, abs=1e-9) and on["inside"] == 1.0
    above = steering.frontier_gain(frontier_table(-2.5, 0.95), "ctl", ["T1", "T2", "T3"])
    assert above["estimate"] == pytest.approx(0.1) and above["low"] > 0.09
    assert above["p_value"] < 0.01 and above["n_clusters"] == 20
    outside = steering.frontier_gain(frontier_table(-4.0, 1.0), "ctl", ["T1", "T2", "T3"])
    assert outside["estimate"] == pytest.approx(0.0) and outside["inside"] == 0.0  # extrapolated
    with pytest.raises(ValueError, match="two constant"):
        steering.frontier_gain(frontier_table(-2, 1), "ctl", ["T1"])


def test_score_arms_measures_each_runs_text(llama):
    arms = {
        "cool": extract(
            llama,
            PROMPTS,
            max_new_tokens=8,
            temperatures=[0.3],
            samples_per_prompt=2,
            progress=False,
        ),
        "hot": extract(
            llama,
            PROMPTS,
            max_new_tokens=8,
            temperatures=[3.0],
            samples_per_prompt=2,
            progress=False,
        ),
    }
    table = steering.score_arms(arms)
    assert list(table.columns) == [
        "arm",
        "prompt_id",
        "logprob",
        "distinct",
        "repetition",
        "temperature",
        "length",
    ]
    assert len(table) == 2 * len(PROMPTS)
    cool = table[table["arm"] == "cool"].set_index("prompt_id")
    hot = table[table["arm"] == "hot"].set_index("prompt_id")
    assert np.allclose(cool["temperature"], 0.3) and np.allclose(hot["temperature"], 3.0)
    assert cool["logprob"].mean() > hot["logprob"].mean()
    first = arms["cool"].where(prompt_id="prompt-000")
    expected = sdelm.analysis.scoring.sequence_mean(rescore(llama, first), first.mask).mean()
    assert cool.loc["prompt-000", "logprob"] == pytest.approx(expected, abs=1e-4)
    assert cool.loc["prompt-000", "distinct"] == pytest.approx(
        steering.distinct(first.tokens, first.mask, [0, 0])[0]
    )
    older = replace(arms["hot"], untempered_logprobs=None)  # as saved before sdelm recorded them
    with pytest.raises(ValueError, match="'hot' lacks the untempered log-probabilities"):
        steering.score_arms({"hot": older})


def test_kicks_pair_the_prediction_with_the_step_that_followed(llama):
    dim = llama.hidden_size
    law = control.DiffusionTemperature(
        RadialNoise(dim), identity_projection(dim, llama.n_layers), reference=1.0
    )
    trajs = extract(llama, PROMPTS, max_new_tokens=6, progress=False)
    table = steering.kicks(law, trajs)
    assert len(table) == int((trajs.lengths - 1).clamp_min(0).sum())
    states = trajs.layer(llama.n_layers)
    row = table.iloc[0]
    before, after = states[0, int(row["step"]) - 1], states[0, int(row["step"])]
    assert row["predicted"] == pytest.approx(float(dim * before.pow(2).sum()), rel=1e-5)
    assert row["realized"] == pytest.approx(float((after - before).pow(2).sum()), rel=1e-5)
    assert row["entropy"] == pytest.approx(float(trajs.entropies[0, int(row["step"])]))


def test_held_out_prompts_sample_as_they_would_in_the_whole_list(tiny_folder):
    common = dict(
        temperatures=[1.0],
        samples_per_prompt=2,
        max_new_tokens=5,
        n_passages=0,
        batch_size=1,
        cache=False,
        device="cpu",
    )
    whole = sdelm.collect_trajectories(str(tiny_folder), n_prompts=4, **common)
    tail = sdelm.collect_trajectories(str(tiny_folder), n_prompts=2, first_prompt=2, **common)
    assert list(tail.rows["prompt_id"]) == list(whole.rows["prompt_id"][4:])
    assert torch.equal(tail.tokens, whole.tokens[4:, : tail.n_steps])


class LinearDrift(SDEModel):
    """μ(x) = −x/2 with unit noise: a nudge of known size and direction."""

    def drift(self, x, t):
        return -0.5 * x

    def diffusion(self, x, t):
        return torch.ones_like(x)


def test_a_zero_nudge_changes_nothing(llama):
    plain = extract(llama, PROMPTS, max_new_tokens=8, progress=False)
    law = control.DriftNudge(
        LinearDrift(llama.hidden_size),
        identity_projection(llama.hidden_size, llama.n_layers),
        strength=0.0,
    )
    nudged = extract(llama, PROMPTS, max_new_tokens=8, nudge=law, progress=False)
    assert torch.equal(plain.tokens, nudged.tokens)
    assert nudged.meta["nudge"]["kind"] == "drift nudge"


def test_the_next_token_is_read_out_from_the_nudged_state(llama):
    dim = llama.hidden_size
    law = control.DriftNudge(
        LinearDrift(dim), identity_projection(dim, llama.n_layers), strength=0.8
    )
    trajs = extract(llama, PROMPTS, max_new_tokens=6, nudge=law, progress=False)
    states = trajs.layer(llama.n_layers)
    head = llama.model.get_output_embeddings()
    for row in range(len(PROMPTS)):
        n = int(trajs.lengths[row])
        moved = states[row, : n - 1] * (1 - 0.8 * 0.5)  # X + 0.8 · (−X/2)
        with torch.no_grad():
            logp = torch.log_softmax(head(moved), dim=-1)
        expected = logp.gather(1, trajs.tokens[row, 1:n, None]).squeeze(1)
        torch.testing.assert_close(trajs.logprobs[row, 1:n], expected, rtol=1e-4, atol=1e-4)
    # The untempered record is the model's own judgement of the drawn tokens, not the nudged one.
    torch.testing.assert_close(
        trajs.untempered_logprobs, rescore(llama, trajs), equal_nan=True, rtol=0, atol=1e-4
    )
    # The recorded states are the model's own: a replay of the drawn tokens gives them back.
    torch.testing.assert_close(
        replay_states(llama, trajs, 0)[-1], states[0, : int(trajs.lengths[0])], atol=1e-4, rtol=0
    )


def test_the_random_placebo_moves_as_far_in_another_direction(llama):
    dim = llama.hidden_size
    projection = identity_projection(dim, llama.n_layers)
    drift = control.DriftNudge(LinearDrift(dim), projection)
    placebo = control.DriftNudge(LinearDrift(dim), projection, direction="random", seed=3)
    state = torch.randn(4, dim)
    along, across = drift.displacement(2, state), placebo.displacement(2, state)
    torch.testing.assert_close(along.norm(dim=1), across.norm(dim=1))
    cosine = torch.nn.functional.cosine_similarity(along, across, dim=1)
    assert cosine.abs().max() < 0.99
    assert torch.equal(across, placebo.displacement(2, state))  # seeded


def test_nudges_that_cannot_work_are_refused(llama, monkeypatch):
    dim = llama.hidden_size
    with pytest.raises(ValueError, match="direction"):
        control.DriftNudge(LinearDrift(dim), identity_projection(dim, 0), direction="up")
    middle = control.DriftNudge(LinearDrift(dim), identity_projection(dim, 1))
    with pytest.raises(ValueError, match="fit the SDE on layer 3"):
        extract(llama, PROMPTS, max_new_tokens=3, nudge=middle, progress=False)
    head = llama.model.get_output_embeddings()
    doubled = torch.nn.Linear(dim, head.out_features, bias=False)
    doubled.weight.data = 2 * head.weight.data
    monkeypatch.setattr(llama.model, "get_output_embeddings", lambda: doubled)
    last = control.DriftNudge(LinearDrift(dim), identity_projection(dim, llama.n_layers))
    with pytest.raises(ValueError, match="temperature control instead"):
        extract(llama, PROMPTS, max_new_tokens=3, nudge=last, progress=False)
