"""Drift and diffusion analyses and Kramers–Moyal estimates on processes with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import sdelm
from sdelm.analysis import drift_diffusion, kramers_moyal
from sdelm.data import SDEData
from sdelm.stats import cluster_bootstrap
from sdelm.synthetic import (
    OU_MATRIX,
    OU_SIGMA,
    DoubleWell,
    as_trajectories,
    euler_maruyama,
    ou_model,
    ou_paths,
)


@pytest.fixture(scope="module")
def ou_split():
    trajs = as_trajectories(ou_paths(n=600, steps=40, dt=0.1), dt=0.1, per_prompt=3)
    return sdelm.prepare(trajs, dim=None, standardise=False, seed=0)


@pytest.fixture(scope="module")
def ou_folds():
    trajs = as_trajectories(ou_paths(n=600, steps=40, dt=0.1), dt=0.1, per_prompt=3)
    return [
        sdelm.prepare(trajs, dim=None, standardise=False, split=(0.85, 0.15, 0.0), fold=(i, 2))
        for i in range(2)
    ]


def test_cross_validation_reads_every_prompt_once_with_its_folds_model(ou_folds):
    models = [
        ou_model(),
        sdelm.models.linear.OrnsteinUhlenbeck(3).fit_least_squares(ou_folds[1].train),
    ]
    field, table, grids = drift_diffusion.cross_validated(models, ou_folds, bins=4)
    held_out = [set(fold.test.rows["prompt_id"]) for fold in ou_folds]
    assert not held_out[0] & held_out[1]
    assert set(field["prompt_id"]) == held_out[0] | held_out[1]
    # Sequences are numbered across folds, and each fold is read by its own model.
    assert field["sequence"].nunique() == sum(len(fold.test) for fold in ou_folds)
    assert field.groupby("sequence")["fold"].nunique().eq(1).all()
    alone = drift_diffusion.field_along_steps(models[1], ou_folds[1].test)
    assert np.allclose(field[field["fold"] == 1]["drift_norm"], alone["drift_norm"])
    assert len(table) == sum(len(fold.test.transitions()) for fold in ou_folds)
    # The agreement is the mean of the folds' agreements.
    per_fold = [
        kramers_moyal.agreement(table[table["fold"] == i], grid) for i, grid in enumerate(grids)
    ]
    statistic = drift_diffusion.agreement(table, grids)
    assert statistic(table) == pytest.approx(np.mean(per_fold))
    # The drift's bootstrap through per-prompt sums is the bootstrap of the statistic.
    fast = drift_diffusion.agreement_effect(table, grids, n_resamples=40, seed=2)
    slow = cluster_bootstrap(table, statistic, n_resamples=40, seed=2)
    assert fast == pytest.approx(slow, rel=1e-9, abs=1e-12)
    with pytest.raises(ValueError, match="one per fold"):
        drift_diffusion.cross_validated(models[:1], ou_folds)


def test_field_along_steps_for_a_known_ou(ou_split):
    field = drift_diffusion.field_along_steps(ou_model(), ou_split.test)
    assert len(field) == int(ou_split.test.mask.sum())
    assert np.allclose(field["diffusion_trace"], float((OU_SIGMA**2).sum()), rtol=1e-5)
    x = ou_split.test.states[ou_split.test.mask]
    expected = (x @ OU_MATRIX.T).norm(dim=1)
    assert np.allclose(field["drift_norm"], expected.numpy(), rtol=1e-4, atol=1e-6)
    assert np.allclose(
        field["determinism"],
        (expected**2 * 0.1 / (OU_SIGMA**2).sum()).numpy(),
        rtol=1e-4,
        atol=1e-7,
    )
    assert field.groupby("sequence")["increment_sq"].apply(lambda s: s.isna().sum()).eq(1).all()


def test_field_pairs_the_noise_of_a_step_with_the_entropy_of_the_token_it_reads():
    # σ(X_k) drives X_k -> X_{k+1}, which reads token y_{k+1}: H_{k+1} is set to tr σσᵀ(X_k).
    # The states are independent, so H_k = tr σσᵀ(X_{k-1}) says nothing about σ(X_k).
    states = torch.randn(6, 8, 2, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(6, 8, dtype=torch.bool)
    mask[0, 5:] = False
    model = DoubleWell()
    trace = model.diffusion(states.flatten(0, 1), torch.zeros(48)).pow(2).sum(1).view(6, 8)
    entropies = torch.full((6, 8), 5.0)
    entropies[:, 1:] = trace[:, :-1]
    rows = pd.DataFrame(
        {"prompt_id": [f"p{i}" for i in range(6)], "source": "generated", "temperature": 1.0}
    )
    data = SDEData(states * mask[..., None], mask, 1.0, rows, "test", entropies)
    field = drift_diffusion.field_along_steps(model, data)
    paired = field.dropna(subset=["next_entropy"])
    assert len(paired) == int(mask.sum()) - 6  # every step but each sequence's last
    assert field.groupby("sequence")["next_entropy"].apply(lambda s: s.isna().sum()).eq(1).all()
    assert np.allclose(paired["next_entropy"], paired["diffusion_trace"], rtol=1e-5)
    rho = drift_diffusion.spearman("diffusion_trace", "next_entropy")(field)
    assert rho == pytest.approx(1.0)
    # The old pairing, σ(X_k) with H_k, is unrelated here.
    same_step = entropies[torch.as_tensor(field["sequence"]), torch.as_tensor(field["step"])]
    assert abs(np.corrcoef(same_step.numpy(), field["diffusion_trace"])[0, 1]) < 0.5


def synthetic_field(effect: float, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for prompt in range(30):
        offset = rng.normal(0, 0.2)
        for temperature in (0.5, 1.0, 1.5):
            for _ in range(2):
                level = np.exp(effect * temperature + offset + rng.normal(0, 0.1))
                rows += [
                    {
                        "sequence": len(rows) // 10,
                        "prompt_id": f"p{prompt}",
                        "temperature": temperature,
                        "diffusion_trace": level,
                        "next_entropy": level + rng.normal(0, 0.01),
                    }
                    for _ in range(10)
                ]
    frame = pd.DataFrame(rows)
    frame["sequence"] = np.repeat(np.arange(len(frame) // 10), 10)
    return frame


def test_temperature_slope_recovers_a_known_effect_and_a_null():
    field = synthetic_field(0.5)
    slope = drift_diffusion.temperature_slope(field, "diffusion_trace", n_resamples=300)
    assert slope["estimate"] == pytest.approx(0.5, abs=0.05)
    assert 0.3 < slope["low"] < slope["estimate"] < slope["high"]
    assert slope["p_value"] < 0.01
    null = drift_diffusion.temperature_slope(
        synthetic_field(0.0, seed=1), "diffusion_trace", n_resamples=300
    )
    assert null["low"] < 0 < null["high"] and null["p_value"] > 0.05
    assert slope["n_clusters"] == 30 and slope["n_sequences"] == 180
    with pytest.raises(ValueError, match="two or more temperatures"):
        one = synthetic_field(0.5)
        drift_diffusion.temperature_slope(one[one["temperature"] == 0.5], "diffusion_trace")


def test_spearman_bootstrapped_over_prompts_for_dependent_and_independent_columns():
    frame = synthetic_field(0.5)
    rank = drift_diffusion.spearman("diffusion_trace", "next_entropy")
    strong = cluster_bootstrap(frame, rank, n_resamples=200)
    assert strong["estimate"] > 0.9 and strong["low"] > 0.8
    frame["noise"] = np.random.default_rng(3).normal(size=len(frame))
    null = cluster_bootstrap(
        frame, drift_diffusion.spearman("diffusion_trace", "noise"), n_resamples=200
    )
    assert null["low"] < 0 < null["high"]


def test_source_gap_and_noise_share_statistics():
    frame = pd.DataFrame(
        {
            "source": ["human", "human", "generated", "generated"],
            "value": [3.0, 5.0, 1.0, 2.0],
            "determinism": [0.5, 2.0, 0.1, 0.9],
        }
    )
    assert drift_diffusion.source_gap()(frame) == pytest.approx(2.5)
    assert np.isnan(drift_diffusion.source_gap()(frame[frame["source"] == "human"]))
    assert drift_diffusion.noise_share(frame) == pytest.approx(0.75)
    both = pd.concat([frame.assign(series="data"), frame.assign(series="iid", determinism=5.0)])
    assert drift_diffusion.versus(drift_diffusion.noise_share, "iid")(both) == 0.75


def test_kramers_moyal_recovers_ou_drift_and_noise(ou_split):
    km = kramers_moyal.binned_moments(ou_split.train, bins=5, min_count=200)
    centres = torch.tensor(km[["x0", "x1"]].to_numpy(), dtype=torch.float32)
    # Drift of coordinates 0 and 1 depends on them only (the OU matrix is block diagonal).
    expected = centres @ OU_MATRIX[:2, :2].T
    assert np.allclose(km["drift0"], expected[:, 0].numpy(), atol=0.25)
    assert np.allclose(km["diffusion0"], float(OU_SIGMA[0]), rtol=0.1)
    assert np.allclose(km["diffusion1"], float(OU_SIGMA[1]), rtol=0.1)
    grid = kramers_moyal.Grid.fit(ou_split.train.states[ou_split.train.mask], bins=4)
    assert grid.pairs == ((0, 1), (2, 0))  # every coordinate, the odd one paired around
    both = kramers_moyal.compare_with_model(ou_model(), ou_split.test, grid, min_count=100)
    assert set(both["coordinate"]) == {0, 1, 2}
    for _, cells in both.groupby("coordinate"):
        assert np.corrcoef(cells["drift"], cells["model_drift"])[0, 1] > 0.9
    assert np.allclose(both["model_diffusion"], OU_SIGMA[both["coordinate"]].numpy(), rtol=1e-4)
    assert np.allclose(both["diffusion"], both["model_diffusion"], rtol=0.2)
    table = kramers_moyal.transition_table(ou_split.test, grid, ou_model())
    assert kramers_moyal.agreement(table, grid, min_count=100) > 0.9
    with pytest.raises(ValueError, match="fewer than min_count"):
        kramers_moyal.binned_moments(ou_split.test, min_count=10**6)


def test_kramers_moyal_second_moment_leaves_out_the_drift_at_unit_time_step():
    # One token per step (Δt = 1) and a pull of coordinate 0 towards coordinate 2, which its
    # grid (coordinates 0 and 1) does not bin: inside a cell the drift μ_0 still varies, and
    # the plain variance of the increments, σ² + Var(μ | cell) Δt, overstates σ².
    sigma = torch.tensor([0.4, 0.6, 0.5])
    matrix = torch.tensor([[-0.8, 0.0, 0.8], [0.0, -0.8, 0.0], [0.0, 0.0, -0.8]])
    start = torch.randn(2000, 3, generator=torch.Generator().manual_seed(0))
    paths = euler_maruyama(
        lambda x: x @ matrix.T, lambda x: sigma.expand_as(x), start, 30, 1.0, seed=0
    )
    data = sdelm.prepare(as_trajectories(paths, dt=1.0), dim=None, standardise=False)
    grid = kramers_moyal.Grid.fit(data.train.states[data.train.mask], bins=5)
    cells = kramers_moyal.compare_with_model(
        sdelm.models.linear.OrnsteinUhlenbeck(3).fit_least_squares(data.train),
        data.test,
        grid,
        min_count=50,
    )
    truth = sigma[cells["coordinate"]].numpy()
    assert np.allclose(cells["diffusion"], truth, rtol=0.12)
    assert np.allclose(cells["model_diffusion"], truth, rtol=0.05)
    table = kramers_moyal.transition_table(data.test.transitions(), grid)
    plain = table.groupby("cell0")["dx0"].std()  # the estimate before the correction
    assert plain.median() > 1.2 * float(sigma[0])


@pytest.mark.parametrize("n_folds", [1, 2])
def test_drift_agreement_against_a_surrogate_equals_the_bootstrap_over_the_table(
    ou_split, ou_folds, n_folds
):
    folds = [ou_split] if n_folds == 1 else ou_folds
    _, tables, grids = drift_diffusion.surrogate_tables(folds, bins=4, seed=0)
    assert sorted(tables["fold"].unique()) == list(range(n_folds))
    fast = drift_diffusion.agreement_versus(tables, grids, "iid", n_resamples=40, seed=3)

    # The agreement on each series' rows, read on the cells each series populates, averaged
    # over the folds.
    statistics = {
        name: drift_diffusion.agreement(
            tables[tables["series"] == name], [fold[name] for fold in grids]
        )
        for name in ("data", "iid")
    }

    def difference(frame: pd.DataFrame) -> float:
        data, iid = (statistics[name](frame[frame["series"] == name]) for name in statistics)
        return data - iid

    slow = cluster_bootstrap(tables, difference, n_resamples=40, seed=3)
    assert fast == pytest.approx(slow, rel=1e-9, abs=1e-12)
    # A linear drift agrees with the binned increments of an i.i.d. series too (its drift is
    # a full pull to the mean): the agreement is generic, and the difference small.
    assert abs(fast["estimate"]) < 0.2


def test_a_resample_of_the_agreement_reads_the_cells_the_data_populate(ou_split):
    grid = kramers_moyal.Grid.fit(ou_split.train.states[ou_split.train.mask], bins=6)
    table = kramers_moyal.transition_table(ou_split.test, grid, ou_model()).assign(fold=0)
    statistic = drift_diffusion.agreement(table, [grid], min_count=100)
    assert statistic(table) == kramers_moyal.agreement(table, grid, min_count=100)
    # Every prompt drawn twice: the same cell means, and no cell admitted that the data leave
    # below min_count, although each now holds twice its transitions.
    doubled = pd.concat([table, table], ignore_index=True)
    assert statistic(doubled) == pytest.approx(statistic(table), rel=1e-9)
    sparse = kramers_moyal.populated_cells(doubled, grid, min_count=100)
    assert (sparse & ~kramers_moyal.populated_cells(table, grid, min_count=100)).any()
    assert kramers_moyal.agreement(doubled, grid, min_count=100) != pytest.approx(
        statistic(table), rel=1e-6
    )
