"""The model comparison on a synthetic OU process."""

from __future__ import annotations

import pandas as pd

import sdelm
from sdelm.fit import nll
from sdelm.synthetic import as_trajectories, lines_of_thought_paths, ou_paths


def test_compare_models_ranks_ou_above_a_random_walk():
    trajs = as_trajectories(ou_paths(n=80, steps=20, dt=0.1), dt=0.1, per_prompt=2)
    core = {"random walk", "OU / VAR(1)", "neural SDE"}
    models = [m for m in sdelm.standard_models(hidden=16, paper_loss=False) if m[0] in core]
    results = sdelm.compare_models(trajs, seeds=(0, 1), models=models, dim=None, epochs=30)
    assert len(results) == 6 and set(results["model"]) == core
    table = sdelm.summarise(results)
    assert table.loc["OU / VAR(1)", "mean"] < table.loc["random walk", "mean"]
    assert table.loc["neural SDE", "gap"] == 0
    assert set(table.columns) == {"mean", "sd", "gap", "wins"}


def test_per_step_maps_win_on_a_lines_of_thought_process():
    paths = lines_of_thought_paths(n=240, steps=12, dim=4, rate=0.2)
    trajs = as_trajectories(paths, dt=1.0, per_prompt=2)
    keep = {"OU / VAR(1)", "Lines of Thought, map per step"}
    models = [
        m for m in sdelm.standard_models(paper_loss=False, per_step_maps=True) if m[0] in keep
    ]
    table = sdelm.summarise(
        sdelm.compare_models(trajs, seeds=(0,), models=models, dim=None),
        reference="Lines of Thought, map per step",
    )
    assert table.index[0] == "Lines of Thought, map per step"
    assert table.loc["OU / VAR(1)", "gap"] > 0.1


def test_cross_validation_tests_every_prompt_once_and_pairs_the_models():
    trajs = as_trajectories(ou_paths(n=80, steps=20, dt=0.1), dt=0.1, per_prompt=2)
    keep = {"random walk", "OU / VAR(1)"}
    models = [m for m in sdelm.standard_models(paper_loss=False) if m[0] in keep]
    results = sdelm.analysis.comparison.cross_validate(trajs, models=models, folds=4, dim=None)
    prompts = set(trajs.rows["prompt_id"])
    for _, rows in results.groupby("model"):
        assert sorted(rows["prompt_id"]) == sorted(prompts)  # each prompt tested once
    assert set(results["fold"]) == {0, 1, 2, 3}
    assert (results["transitions"] == 2 * 20).all()  # two sequences of 20 steps per prompt
    # A prompt's NLL is the mean over its transitions: the fold's NLL weighted back.
    data = sdelm.prepare(trajs, dim=None, split=(0.85, 0.15, 0.0), fold=(0, 4))
    ou = {name: build for name, build, _ in models}["OU / VAR(1)"](data.dim, 0, 20.0)
    ou.fit_least_squares(data.train)
    fold = results[(results["model"] == "OU / VAR(1)") & (results["fold"] == 0)]
    weights = fold["transitions"] / fold["transitions"].sum()
    assert abs((fold["nll"] * weights).sum() - nll(ou, data.test)) < 1e-5
    gaps = sdelm.analysis.comparison.paired_gaps(results, reference="OU / VAR(1)")
    assert list(gaps.index) == ["random walk"] and gaps.loc["random walk", "high"] < 0
    assert gaps.loc["random walk", "n_clusters"] == len(prompts)


def test_prepare_refuses_impossible_folds():
    trajs = as_trajectories(ou_paths(n=8, steps=5, dt=0.1), dt=0.1, per_prompt=2)
    for fold in [(4, 4), (0, 1), (0, 3.0), (0, 9)]:
        try:
            sdelm.prepare(trajs, dim=None, fold=fold)
        except ValueError as error:
            assert "fold" in str(error) or "K-fold" in str(error)
        else:
            raise AssertionError(f"fold={fold} was accepted")


def test_the_model_zoo_fits_bit_identically_twice():
    """The fitting chapter's determinism, on data small enough for a unit test."""
    trajs = as_trajectories(ou_paths(n=24, steps=12, dt=0.1), dt=0.1, per_prompt=2)
    keep = {"OU / VAR(1)", "neural drift + σ floor", "neural SDE", "neural SDE (paper loss)"}
    models = [m for m in sdelm.standard_models(hidden=8) if m[0] in keep]
    assert len(models) == len(keep)
    first, second = (
        sdelm.analysis.comparison.cross_validate(trajs, models=models, folds=3, dim=None)
        for _ in range(2)
    )
    pd.testing.assert_frame_equal(first, second, check_exact=True)
    first, second = (
        sdelm.compare_models(trajs, seeds=[0, 1], dim=None, models=models).drop(columns="seconds")
        for _ in range(2)
    )
    pd.testing.assert_frame_equal(first, second, check_exact=True)
