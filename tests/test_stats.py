"""One bootstrap for every effect (clusters resampled, a percentile interval) and Holm."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import sdelm
from sdelm.stats import cluster_bootstrap, log_ratios, pair_weights


def test_cluster_bootstrap_and_holm():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {"prompt_id": np.repeat(np.arange(20), 5), "x": rng.normal(0.5, 1.0, 100)}
    )
    effect = cluster_bootstrap(frame, lambda f: f["x"].mean(), n_resamples=500)
    assert effect["low"] < effect["estimate"] < effect["high"]
    assert effect["low"] > 0 and effect["p_value"] < 0.01 and effect["n_clusters"] == 20
    null = cluster_bootstrap(frame, lambda f: f["x"].mean(), null=0.5, n_resamples=500)
    assert null["p_value"] > 0.2
    assert np.allclose(sdelm.stats.holm([0.01, 0.04, 0.3]), [0.03, 0.08, 0.3])
    with pytest.raises(ValueError, match="two"):
        cluster_bootstrap(frame.assign(prompt_id=1), lambda f: 0.0)


def test_the_interval_of_a_statistic_that_resampling_shifts_holds_its_estimate():
    # Distinct prompts: 20 in the data, about 12.6 in a resample of 20 drawn with
    # replacement. The uncentred percentile interval would lie wholly below the estimate.
    frame = pd.DataFrame({"prompt_id": np.repeat(np.arange(20), 3), "x": 1.0})
    distinct = cluster_bootstrap(frame, lambda f: f["prompt_id"].nunique(), null=20)
    assert distinct["low"] < 20 < distinct["high"] and distinct["p_value"] > 0.9
    assert distinct["high"] - distinct["low"] < 10  # the resamples' spread, kept


def test_few_clusters_widen_the_interval_by_the_t_critical_value():
    # Four prompts, all with a positive mean: the plain bootstrap would call it certain (every
    # resample positive); the t(3) stretch widens the interval by 3.18 / 1.96.
    frame = pd.DataFrame({"prompt_id": np.arange(4), "x": [0.4, 1.0, 1.6, 2.2]})
    few = cluster_bootstrap(frame, lambda f: f["x"].mean(), n_resamples=4000)
    assert few["estimate"] == pytest.approx(1.3)
    assert few["low"] < 0.4 and few["p_value"] > 0.001
    many = pd.DataFrame({"prompt_id": np.arange(400), "x": np.tile([0.4, 1.0, 1.6, 2.2], 100)})
    plain = cluster_bootstrap(many, lambda f: f["x"].mean(), n_resamples=4000)
    width = plain["high"] - plain["low"]  # ≈ 2 · 1.96 · sd / √400, stretched by 1.003
    assert width == pytest.approx(2 * 1.96 * frame["x"].std(ddof=0) / 20 * 1.003, rel=0.06)


def test_pair_weights_keep_each_copy_with_itself_and_no_pair_of_copies():
    counts = torch.tensor([2.0, 0.0, 1.0])
    v_statistic = pair_weights(counts, counts, counts)
    assert v_statistic.tolist() == [[2, 0, 2], [0, 0, 0], [2, 0, 1]]
    u_statistic = pair_weights(counts, counts, torch.zeros(3))
    assert u_statistic.diagonal().tolist() == [0, 0, 0] and u_statistic[0, 2] == 2


def test_log_ratios_are_per_cluster_so_one_sequence_cannot_decide_their_median():
    rng = np.random.default_rng(0)
    rows = [
        {"prompt_id": p, "temperature": t, "increment_sq": rng.uniform(0.9, 1.1) * (1 + t)}
        for p in range(12)
        for t in (0.5, 0.9, 1.3)
        for _ in range(4)
    ]
    frame = pd.DataFrame(rows)
    ratios = log_ratios(frame, "increment_sq")
    assert list(ratios.columns) == ["prompt_id", "log_ratio"] and len(ratios) == 12
    assert ratios["log_ratio"].median() == pytest.approx(np.log(2.3 / 1.5), abs=0.05)
    # One sequence with 50x the steps at the lowest temperature: the pooled log ratio of means
    # turns negative, the median of per-prompt ratios hardly moves.
    frame.loc[(frame["prompt_id"] == 0) & (frame["temperature"] == 0.5), "increment_sq"] *= 50
    means = frame.groupby("temperature")["increment_sq"].mean()
    assert np.log(means[1.3] / means[0.5]) < 0
    robust = log_ratios(frame, "increment_sq")["log_ratio"].median()
    assert robust == pytest.approx(np.log(2.3 / 1.5), abs=0.05)
    # A prompt without the highest temperature has no ratio; one level alone is refused.
    assert len(log_ratios(frame[~((frame.prompt_id == 3) & (frame.temperature == 1.3))],
                          "increment_sq")) == 11  # fmt: skip
    with pytest.raises(ValueError, match="two levels"):
        log_ratios(frame[frame["temperature"] == 0.9], "increment_sq")
