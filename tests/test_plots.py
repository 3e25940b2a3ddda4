"""The chapters' shared figures draw what they say they draw."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from sdelm import plots


@pytest.fixture
def arm_scores() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    arms = ["T = 0.7", "T = 1", "T = 1.3", "control a", "control b"]
    return pd.DataFrame(
        [
            {"arm": arm, "prompt_id": p, "logprob": -1.0 - i + rng.normal(0, 0.1),
             "distinct": 0.5 + 0.1 * i + rng.normal(0, 0.01)}
            for i, arm in enumerate(arms)
            for p in range(4)
        ]
    )  # fmt: skip


def test_quality_diversity_draws_the_constant_line_and_one_marker_per_control(arm_scores):
    colours = {"control a": "C0", "control b": "C1"}
    ax = plots.quality_diversity(arm_scores, ["T = 0.7", "T = 1", "T = 1.3"], colours)
    lines = [line for line in ax.get_lines() if len(line.get_xdata())]
    means = arm_scores.groupby("arm", sort=False)[["logprob", "distinct"]].mean()
    constant = lines[0]
    np.testing.assert_allclose(np.asarray(constant.get_xdata(), float), means["logprob"].iloc[:3])
    np.testing.assert_allclose(np.asarray(constant.get_ydata(), float), means["distinct"].iloc[:3])
    assert [text.get_text() for text in ax.texts] == ["T = 0.7", "T = 1", "T = 1.3"]
    labels = ax.get_legend_handles_labels()[1]
    assert labels == ["constant temperature", "control a", "control b"]
    assert "log-probability" in ax.get_xlabel() and "bigrams" in ax.get_ylabel()
    plt.close("all")


def test_quality_diversity_skips_controls_beyond_the_markers(arm_scores):
    colours = {"control a": "C0", "control b": "C1"}
    ax = plots.quality_diversity(arm_scores, ["T = 1"], colours, markers=["s"])
    assert ax.get_legend_handles_labels()[1] == ["constant temperature", "control a"]
    plt.close("all")
