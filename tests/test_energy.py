"""The energy distance's estimators and the energy score (sdelm.energy)."""

import numpy as np
import pytest
import torch
from scipy import stats

import sdelm
from sdelm.energy import energy_distance, energy_distance_effect, energy_effect, energy_score
from sdelm.synthetic import ou_model, ou_paths


def test_energy_distance_is_zero_for_one_distribution_and_matches_scipy_in_1d():
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(400, 2, generator=generator), torch.randn(400, 2, generator=generator)
    assert energy_distance(x, y) < 0.05  # the V-statistic is biased up by O(1/n)
    assert energy_distance(x, y + 1.0) > 0.5
    u, v = x[:, :1], y[:, :1] + 0.3
    expected = stats.energy_distance(u[:, 0].numpy(), v[:, 0].numpy()) ** 2
    assert energy_distance(u, v) == pytest.approx(expected, rel=1e-6)


def test_the_energy_distance_effect_resamples_prompts_and_tells_the_true_model():
    real = ou_paths(n=48, steps=12, dt=0.1, seed=3)  # (48, 13, 3), from the true OU
    mask = torch.ones(real.shape[:2], dtype=torch.bool)
    mask[:6, 9:] = False  # some sequences end early
    true, wrong = ou_model(), ou_model()
    with torch.no_grad():
        wrong.log_sigma.add_(0.7)  # twice the noise
    simulated = {
        name: sdelm.simulate(m, real[:, 0], 12, dt=0.1, n_paths=4, seed=0)
        for name, m in {"true": true, "wrong": wrong}.items()
    }
    steps = [4, 8, 12]

    def gap(table):
        return float((table["true"] - table["wrong"]).mean())

    prompts = np.repeat(np.arange(24), 2)
    found = energy_distance_effect(real, mask, simulated, prompts, gap, steps=steps, seed=0)
    by_hand = np.mean([
        energy_distance(simulated["true"][:, k], real[mask[:, k], k])
        - energy_distance(simulated["wrong"][:, k], real[mask[:, k], k])
        for k in steps
    ])  # fmt: skip
    assert found["estimate"] == pytest.approx(by_hand, rel=1e-9)
    assert found["high"] < 0 and found["n_clusters"] == 24
    # Two folds (as if in two coordinate systems): each fold's distance, weighted by size.
    folds = np.repeat([0, 1], [16, 32])
    pooled = energy_distance_effect(
        real, mask, simulated, prompts, gap, steps=steps, folds=folds, seed=0
    )
    per_fold = []
    for fold in (0, 1):
        rows = torch.from_numpy(np.flatnonzero(folds == fold))
        paths = {k: v.reshape(48, 4, 13, 3)[rows].flatten(0, 1) for k, v in simulated.items()}
        real_f, mask_f = real[rows], mask[rows]
        per_fold.append(np.mean([
            energy_distance(paths["true"][:, k], real_f[mask_f[:, k], k])
            - energy_distance(paths["wrong"][:, k], real_f[mask_f[:, k], k])
            for k in steps
        ]))  # fmt: skip
    assert pooled["estimate"] == pytest.approx((16 * per_fold[0] + 32 * per_fold[1]) / 48)
    with pytest.raises(ValueError, match="must agree"):
        energy_distance_effect(real, mask, simulated, prompts[:10], gap, steps=steps)


def test_energy_effect_tells_shifted_from_equal_clustered_samples():
    rng = np.random.default_rng(0)
    offsets = rng.normal(size=(40, 1, 2))  # each cluster has its own centre
    points = (offsets + rng.normal(scale=0.5, size=(40, 3, 2))).reshape(-1, 2)
    clusters = np.repeat(np.arange(40), 3)
    groups = np.where(clusters < 20, "a", "b")  # unpaired: the groups are other clusters
    same = energy_effect(points, groups, clusters)
    shifted = energy_effect(points + (groups == "b")[:, None], groups, clusters)
    assert same["low"] < 0 < same["high"] and same["p_value"] > 0.05
    assert shifted["low"] > 0 and shifted["p_value"] < 0.01
    assert same["n_clusters"] == shifted["n_clusters"] == 40
    # paired: every cluster holds both groups; within-cluster pairs remove the offsets
    twice = np.repeat(np.arange(40), 4)
    pairs = (np.repeat(offsets, 4, axis=1) + rng.normal(scale=0.5, size=(40, 4, 2))).reshape(-1, 2)
    labels = np.tile(["low", "low", "high", "high"], 40)
    none = energy_effect(pairs, labels, twice, paired=True)
    moved = energy_effect(pairs + 0.5 * (labels == "high")[:, None], labels, twice,
                                   paired=True)  # fmt: skip
    assert none["low"] < 0 < none["high"] and moved["low"] > 0
    with pytest.raises(ValueError, match="two group labels"):
        energy_effect(points, np.zeros(len(points)), clusters)
    with pytest.raises(ValueError, match="two clusters with two points"):
        energy_effect(points, groups, clusters, paired=True)


def test_energy_effect_within_strata_compares_only_comparable_points():
    # Two folds whose planes are offset from each other, with groups mixed unevenly between
    # them: pooled pairs see the offset as a difference between the groups; pairs within a
    # fold see none, and still see a real shift.
    rng = np.random.default_rng(1)
    fold = np.repeat([0, 1], 60)
    groups = np.array((["a"] * 45 + ["b"] * 15) + (["a"] * 15 + ["b"] * 45))
    clusters = np.arange(120) // 3
    points = rng.normal(size=(120, 2)) + 3.0 * fold[:, None]
    pooled = energy_effect(points, groups, clusters)
    within = energy_effect(points, groups, clusters, strata=fold)
    shifted = energy_effect(points + (groups == "b")[:, None], groups, clusters,
                                     strata=fold)  # fmt: skip
    assert pooled["low"] > 0 and pooled["estimate"] > 1.0
    assert within["low"] < 0 < within["high"] and abs(within["estimate"]) < 0.1
    assert shifted["low"] > 0
    with pytest.raises(ValueError, match="strata need unpaired"):
        energy_effect(points, groups, clusters, paired=True, strata=fold)


def test_the_energy_score_rewards_a_centred_cloud_of_the_right_width():
    real = torch.zeros(1, 3, 2)
    mask = torch.ones(1, 3, dtype=torch.bool)
    # A deterministic forecast scores its distance: here 1 at every step.
    shifted = torch.zeros(1, 5, 3, 2)
    shifted[..., 0] = 1.0
    assert energy_score(shifted, real, mask).item() == pytest.approx(1.0)
    # A cloud around the truth beats the same cloud moved away from it.
    cloud = torch.randn(1, 400, 3, 2, generator=torch.Generator().manual_seed(0))
    centred = energy_score(cloud, real, mask).item()
    assert centred < energy_score(cloud + 2.0, real, mask).item()
    assert centred < energy_score(torch.zeros(1, 400, 3, 2) + 1.0, real, mask)


def test_refits_enter_the_estimate_as_a_mean_and_the_interval_as_a_draw():
    real = ou_paths(n=48, steps=12, dt=0.1, seed=3)
    mask = torch.ones(real.shape[:2], dtype=torch.bool)
    true, noisy = ou_model(), ou_model()
    with torch.no_grad():
        noisy.log_sigma.add_(0.7)
    models = {"fit": true, "refit": noisy, "baseline": noisy}
    simulated = {
        name: sdelm.simulate(m, real[:, 0], 12, dt=0.1, n_paths=4, seed=i)
        for i, (name, m) in enumerate(models.items())
    }
    prompts, folds, steps = np.repeat(np.arange(24), 2), np.repeat([0, 1], 24), [4, 8, 12]

    columns = set()

    def gap(table):
        columns.add(tuple(table.columns))
        return float((table["fit"] - table["baseline"]).mean())

    def effect(**kwargs):
        return energy_distance_effect(
            real, mask, simulated, prompts, gap, steps=steps, folds=folds, seed=0, **kwargs
        )

    both = effect(refits={"fit": ["refit"]})
    assert columns == {("fit", "baseline")}  # the refit is not a model of its own
    alone = effect(refits={"fit": []})
    swapped = {**simulated, "fit": simulated["refit"]}
    other = energy_distance_effect(
        real, mask, swapped, prompts, gap, steps=steps, folds=folds, seed=0,
        refits={"fit": []},
    )  # fmt: skip
    # The estimate is the mean of the two fits'; a resample takes one fit per fold, so two
    # fits this different widen the interval to span both.
    assert both["estimate"] == pytest.approx((alone["estimate"] + other["estimate"]) / 2)
    assert both["low"] < min(alone["estimate"], other["estimate"])
    assert max(alone["estimate"], other["estimate"]) < both["high"]
    assert both["high"] - both["low"] > 1.5 * (alone["high"] - alone["low"])
    with pytest.raises(ValueError, match="lacks"):
        effect(refits={"fit": ["nowhere"]})
