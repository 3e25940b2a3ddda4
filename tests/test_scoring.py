"""Per-sequence scores and their evaluation on cases with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import sdelm
from sdelm.analysis import scoring
from sdelm.models.linear import OrnsteinUhlenbeck
from sdelm.synthetic import as_trajectories, ou_model, ou_paths


def test_sequence_scores_of_the_true_model():
    trajs = as_trajectories(ou_paths(n=200, steps=40, dt=0.1), dt=0.1, per_prompt=2)
    split = sdelm.SDEData(trajs.layer(0), trajs.mask, 0.1, trajs.rows)
    scores = scoring.sequence_scores(ou_model(), split)
    assert len(scores) == 200 and {"nll", "log_diffusion", "residual_scale"} <= set(scores)
    assert scores["residual_scale"].mean() == pytest.approx(1.0, abs=0.03)
    assert scores["nll"].mean() == pytest.approx(sdelm.nll(ou_model(), split), abs=1e-4)
    expected = float((sdelm.synthetic.OU_SIGMA**2).sum().log())
    assert np.allclose(scores["log_diffusion"], expected, atol=1e-5)
    centre = split.states.mean(dim=1).norm(dim=1).numpy()
    assert np.allclose(scores["mean_distance"], centre, atol=1e-5)
    short = sdelm.SDEData(trajs.layer(0)[:, :1], trajs.mask[:, :1], 0.1, trajs.rows)
    with pytest.raises(ValueError, match="two valid steps"):
        scoring.sequence_scores(ou_model(), short)


def test_held_out_scores_read_each_prompt_with_the_model_fitted_without_it():
    trajs = as_trajectories(ou_paths(n=60, steps=20, dt=0.1), dt=0.1)
    folds = [
        sdelm.prepare(trajs, dim=3, split=(0.85, 0.15, 0.0), fold=(i, 3), seed=0) for i in range(3)
    ]
    models = [ou_model(), OrnsteinUhlenbeck(3), ou_model()]
    scores = scoring.held_out_scores(models, folds)
    assert sorted(scores["prompt_id"]) == sorted(trajs.rows["prompt_id"])  # each row once
    for i, fold in enumerate(folds):
        own = scoring.sequence_scores(models[i], fold.test)
        mine = scores[scores["fold"] == i].reset_index(drop=True)
        assert set(mine["prompt_id"]) == set(fold.test.rows["prompt_id"])
        assert np.allclose(mine["nll"], own["nll"])
    # Other rows of the same prompts (a second run) are read by the fold that holds them out,
    # in its projection: here the same rows, so the same scores.
    again = scoring.held_out_scores(models, folds, trajs)
    merged = again.merge(scores, on=[*scoring.KEYS, "fold"], suffixes=("", " first"))
    assert len(merged) == len(trajs) and np.allclose(merged["nll"], merged["nll first"])
    with pytest.raises(ValueError, match="one per fold"):
        scoring.held_out_scores(models[:2], folds)
    strangers = as_trajectories(ou_paths(n=4, steps=20, dt=0.1), dt=0.1)
    strangers.rows["prompt_id"] = [f"new{i}" for i in range(4)]
    with pytest.raises(ValueError, match="held out by a fold"):
        scoring.held_out_scores(models, folds, strangers)


def test_token_scores_average_valid_steps():
    trajs = as_trajectories(torch.zeros(2, 3, 1), dt=1.0)
    trajs.logprobs[:] = torch.tensor([[-1.0, -3.0, -100.0], [-2.0, -2.0, -2.0]])
    trajs.mask[0, 2] = False
    scores = scoring.token_scores(trajs)
    assert scores["logprob"].tolist() == [-2.0, -2.0] and scores["length"].tolist() == [2, 3]


def test_repetition_counts_repeated_ngrams():
    tokens = torch.tensor([[1, 2, 3, 1, 2, 3], [1, 2, 3, 4, 5, 6], [7, 7, 0, 0, 0, 0]])
    mask = torch.tensor([[True] * 6, [True] * 6, [True, True, False, False, False, False]])
    shares = scoring.repetition(tokens, mask, n=3)
    assert shares[0] == pytest.approx(0.25) and shares[1] == 0 and np.isnan(shares[2])


def test_cluster_auc_of_separated_identical_and_paired_scores():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "prompt_id": np.repeat(np.arange(40), 4),
            "human": np.tile([True, False, False, False], 40),
        }
    )
    frame["separated"] = frame["human"] * 3.0 + rng.normal(size=len(frame))
    frame["noise"] = rng.normal(size=len(frame))
    separated = scoring.cluster_auc(frame, "separated")
    assert separated["estimate"] > 0.95 and separated["low"] > 0.9 and separated["p_value"] < 0.01
    assert separated["n_clusters"] == 40
    same = scoring.cluster_auc(frame, "noise")
    assert same["low"] < 0.5 < same["high"]
    gain = scoring.cluster_auc(frame, "separated", minus="noise")
    assert gain["estimate"] == pytest.approx(separated["estimate"] - same["estimate"])
    assert gain["low"] > 0.3
    # Any boolean column can be the label.
    flipped = scoring.cluster_auc(frame.assign(made=~frame["human"]), "separated", label="made")
    assert flipped["estimate"] == pytest.approx(1 - separated["estimate"])


def test_minimum_detectable_effect_is_280_standard_errors():
    assert sdelm.stats.minimum_detectable({"low": -1.96, "high": 1.96}) == pytest.approx(
        2.8016, abs=1e-3
    )


def test_temperature_is_predicted_from_an_informative_feature_fold_by_fold():
    rng = np.random.default_rng(0)
    temperature = np.repeat([0.5, 1.0, 1.5], 40)
    frame = pd.DataFrame({
        "temperature": temperature,
        "feature": 2 * temperature + rng.normal(scale=0.1, size=120),
        "noise": rng.normal(size=120),
        "prompt_id": [f"p{i % 20}" for i in range(120)],
    })  # fmt: skip
    frame["fold"] = frame["prompt_id"].str[1:].astype(int) % 4
    informed = scoring.predict_temperature(frame, ["feature"])
    null = scoring.predict_temperature(frame, [])
    assert informed["mae"] < 0.1 < null["mae"] and informed["r_squared"] > 0.9
    assert informed["low"] <= informed["mae"] <= informed["high"]
    errors, _ = scoring.temperature_errors(frame, ["feature"])
    assert sorted(errors.index) == sorted(frame["prompt_id"].unique())  # every prompt once
    # Each fold is read by a fit on the others: a feature that is the temperature only in
    # fold 0 (noise elsewhere) predicts fold 0 no better than the mean temperature (0.33).
    leaky = frame.assign(
        feature=np.where(frame["fold"] == 0, frame["temperature"], frame["noise"])
    )
    errors, _ = scoring.temperature_errors(leaky, ["feature"])
    fold_of = frame.groupby("prompt_id")["fold"].first()
    assert errors[fold_of[errors.index] == 0].mean() > 0.25
    with pytest.raises(ValueError, match="two folds"):
        scoring.temperature_errors(frame.assign(fold=0), ["feature"])
