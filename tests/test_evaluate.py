"""The model comparison on a synthetic OU process."""

from __future__ import annotations

import sdelm
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
