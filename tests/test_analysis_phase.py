"""Phase-space analyses on systems whose fixed points and exponents are known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import sdelm
from sdelm.analysis import lyapunov, phase
from sdelm.simulate import simulate_split
from sdelm.synthetic import DoubleWell, as_trajectories, ou_paths


def linear_model(
    matrix: torch.Tensor, sigma: float = 0.5
) -> sdelm.models.linear.OrnsteinUhlenbeck:
    model = sdelm.models.linear.OrnsteinUhlenbeck(matrix.shape[0])
    with torch.no_grad():
        model.matrix.copy_(matrix)
        model.log_sigma.fill_(np.log(sigma))
    return model


def starts(n: int = 200, dim: int = 2, scale: float = 1.5) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(0)) * scale


def test_double_well_fixed_points_are_two_wells_and_a_saddle():
    points = phase.fixed_points(DoubleWell(), starts())
    by_x = sorted(points, key=lambda p: float(p.location[0]))
    assert [p.kind for p in by_x] == ["stable", "saddle", "stable"]
    expected = torch.tensor([[-1.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    assert torch.allclose(torch.stack([p.location for p in by_x]), expected, atol=1e-4)
    assert np.allclose(sorted(by_x[0].eigenvalues.real), [-2, -1], atol=1e-4)
    assert np.allclose(sorted(by_x[1].eigenvalues.real), [-1, 1], atol=1e-4)
    assert by_x[1].unstable_directions == 1
    assert sum(p.starts for p in points) == 200
    table = phase.fixed_point_table(points, starts())
    assert list(table["kind"]).count("stable") == 2
    assert (table["residual"] < 1e-5).all()


def test_linear_drift_has_one_fixed_point_with_the_matrix_eigenvalues():
    matrix = torch.tensor([[-0.5, 0.3], [-0.3, -0.5]])  # a stable spiral
    model = linear_model(matrix)
    with torch.no_grad():
        model.bias.copy_(torch.tensor([0.2, -0.1]))
    (point,) = phase.fixed_points(model, starts())
    assert torch.allclose(point.location, -torch.linalg.solve(matrix, model.bias.detach()))
    assert point.kind == "stable"
    assert np.allclose(
        np.sort_complex(point.eigenvalues), np.sort_complex([-0.5 + 0.3j, -0.5 - 0.3j])
    )


def test_ftle_of_a_linear_flow_are_its_eigenvalues():
    model = linear_model(torch.diag(torch.tensor([-1.0, 0.5])))
    exponents = lyapunov.finite_time_lyapunov(model, starts(5), horizon=4.0, dt=0.001)
    assert exponents.shape == (5, 2)
    assert np.allclose(exponents, [[0.5, -1.0]] * 5, atol=2e-3)


def test_ftle_separates_the_stable_well_from_the_saddle():
    exponents = lyapunov.finite_time_lyapunov(
        DoubleWell(), torch.tensor([[1.0, 0.0], [0.0, 0.0]]), horizon=5.0, dt=0.001
    )
    assert np.allclose(exponents[0], [-1, -2], atol=5e-3)
    assert np.allclose(exponents[1], [1, -1], atol=5e-3)


def test_plane_field_matches_the_drift_on_the_grid():
    field = phase.plane_field(DoubleWell(), (-2, 2, -1, 1), resolution=5)
    assert field.u.shape == field.v.shape == field.diffusion.shape == (5, 5)
    gx, gy = np.meshgrid(field.x, field.y)
    assert np.allclose(field.u, gx - gx**3)
    assert np.allclose(field.v, -gy)
    assert np.allclose(field.diffusion, 2 * (0.3 + 0.3 * np.abs(gx)) ** 2)


def test_plane_field_holds_other_coordinates_at_the_background():
    model = linear_model(-torch.eye(3))
    background = torch.tensor([0.0, 0.0, 2.0])
    field = phase.plane_field(model, (-1, 1, -1, 1), resolution=3, background=background)
    assert np.allclose(field.u, -np.meshgrid(field.x, field.y)[0])
    field = phase.plane_field(model, (-1, 1, -1, 1), resolution=3, components=(2, 0))
    assert np.allclose(field.v, -np.meshgrid(field.x, field.y)[1])


def test_generator_by_distance_for_a_known_ou():
    trajs = as_trajectories(ou_paths(n=120, steps=20, dt=0.1), dt=0.1, per_prompt=2)
    split = sdelm.prepare(trajs, dim=None, standardise=False, seed=0).test
    model = linear_model(-torch.eye(3), sigma=0.5)
    table = phase.generator_by_distance(model, split, torch.zeros(3), bins=4)
    assert len(table) == 4 and table["states"].sum() == int(split.mask.sum())
    assert table["distance"].is_monotonic_increasing
    # LV = −2|x|² + 3 σ²: negative exactly beyond |x| = √1.5 σ.
    x = split.states[split.mask]
    expected = (-2 * x.pow(2).sum(dim=1) + 3 * 0.25 < 0).float().mean()
    overall = (table["share_negative"] * table["states"]).sum() / table["states"].sum()
    assert overall == pytest.approx(float(expected))
    assert table["share_negative"].iloc[-1] == 1.0


def test_pair_separation_of_known_offsets():
    base = torch.randn(4, 6, 2, generator=torch.Generator().manual_seed(0))
    offsets = torch.tensor([3.0, 4.0])
    paths = torch.stack([base[0], base[0] + offsets, base[1], base[1] + 2 * offsets], dim=0)
    trajs = as_trajectories(paths, dt=1.0, per_prompt=2)
    split = sdelm.SDEData(paths, trajs.mask, 1.0, trajs.rows)
    table = lyapunov.pair_separation(split)
    assert set(table["pair"]) == {0, 1} and len(table) == 12
    assert np.allclose(table.groupby("pair")["separation"].mean(), [5.0, 10.0], atol=1e-5)
    across = lyapunov.pair_separation(split, pairs="different prompts")
    assert across["pair"].nunique() == 4  # 2 × 2 sequences of different prompts
    expected = (paths[0] - paths[2]).norm(dim=1)
    assert np.allclose(across[across["pair"] == 0]["separation"], expected.numpy(), atol=1e-5)
    assert (across["prompt_id"] != across["other_prompt_id"]).all()
    assert (table["prompt_id"] == table["other_prompt_id"]).all()


def test_simulated_split_keeps_rows_and_starts():
    trajs = as_trajectories(ou_paths(n=40, steps=10, dt=0.1), dt=0.1, per_prompt=2)
    split = sdelm.prepare(trajs, dim=None, standardise=False, seed=0).train
    simulated = simulate_split(linear_model(-torch.eye(3)), split, seed=1)
    assert torch.equal(simulated.states[:, 0], split.states[:, 0])
    assert simulated.rows.equals(split.rows) and torch.equal(simulated.mask, split.mask)
    assert torch.equal(
        simulate_split(linear_model(-torch.eye(3)), split, seed=1).states, simulated.states
    )
    assert lyapunov.pair_separation(simulated)["separation"].gt(0).all()


def test_bad_inputs_get_clear_errors():
    model = DoubleWell()
    with pytest.raises(ValueError, match=r"size \(n, 2\)"):
        phase.fixed_points(model, torch.zeros(5, 3))
    with pytest.raises(ValueError, match="non-empty"):
        lyapunov.finite_time_lyapunov(model, torch.zeros(0, 2), horizon=1.0)
    with pytest.raises(ValueError, match="positive"):
        lyapunov.finite_time_lyapunov(model, torch.zeros(1, 2), horizon=0.0)
    with pytest.raises(ValueError, match="resolution"):
        phase.plane_field(model, (-1, 1, -1, 1), resolution=1)
    with pytest.raises(ValueError, match="extent"):
        phase.plane_field(model, (1, -1, -1, 1))
    with pytest.raises(ValueError, match="components"):
        phase.plane_field(model, (-1, 1, -1, 1), components=(0, 0))
    lone = as_trajectories(ou_paths(n=6, steps=4), dt=0.1, per_prompt=1)
    split = sdelm.SDEData(lone.layer(0), lone.mask, 0.1, lone.rows)
    with pytest.raises(ValueError, match="samples_per_prompt"):
        lyapunov.pair_separation(split)
    with pytest.raises(ValueError, match="pairs must be"):
        lyapunov.pair_separation(split, pairs="all")


def test_plane_states_lists_every_valid_state():
    trajs = as_trajectories(ou_paths(n=20, steps=6), dt=0.1, per_prompt=2)
    split = sdelm.SDEData(trajs.layer(0), trajs.mask, 0.1, trajs.rows)
    table = phase.plane_states(split, components=(0, 2))
    assert len(table) == 20 * 7 and {"pc1", "pc3", "group"} <= set(table.columns)
    assert np.allclose(table["pc3"], split.states[..., 2].reshape(-1).numpy())
    with pytest.raises(ValueError, match="components"):
        phase.plane_states(split, components=(0, 3))


def test_map_reading_of_fixed_points_uses_one_plus_lambda():
    by_x = sorted(phase.fixed_points(DoubleWell(), starts()), key=lambda p: float(p.location[0]))
    # Wells: J = diag(−2, −1), so I + J = diag(−1, 0): a multiplier on the unit circle.
    assert by_x[0].kind == "stable"
    assert np.allclose(np.sort(by_x[0].multipliers.real), [-1, 0], atol=1e-4)
    (edge,) = phase.fixed_points(linear_model(torch.diag(torch.tensor([-2.0, -1.0]))), starts())
    assert edge.kind == "stable" and edge.map_kind == "marginal"
    assert by_x[1].map_kind == "saddle" and by_x[1].map_unstable_directions == 1
    halved = phase.fixed_points(DoubleWell(), starts(), dt=0.5)
    assert sorted(p.map_kind for p in halved) == ["saddle", "stable", "stable"]
    # A drift eigenvalue below −2: a stable flow, but the map overshoots and grows.
    (point,) = phase.fixed_points(linear_model(torch.diag(torch.tensor([-2.5, -0.2]))), starts())
    assert point.kind == "stable" and point.map_kind == "saddle"
    table = phase.fixed_point_table([point], starts())
    row = table.iloc[0]
    assert row["flips"] == 1 and row["max_modulus"] == pytest.approx(1.5)
    assert row["min_modulus"] == pytest.approx(0.8) and np.isinf(row["relaxation"])
    assert row["flow_relaxation"] == pytest.approx(5.0)
    (point,) = phase.fixed_points(linear_model(torch.diag(torch.tensor([-0.5, -0.2]))), starts())
    row = phase.fixed_point_table([point], starts()).iloc[0]
    assert row["map_kind"] == "stable" and row["flips"] == 0
    assert row["relaxation"] == pytest.approx(-1 / np.log(0.8))
    with pytest.raises(ValueError, match="dt must be > 0"):
        phase.fixed_points(DoubleWell(), starts(), dt=0.0)


def test_relaxation_times_of_multipliers():
    times = phase.relaxation_times(np.array([0.5, -0.5, 0.6 + 0.8j, 1.2, 0.0]), dt=2.0)
    assert np.allclose(times[:2], 2 / np.log(2))
    assert np.isinf(times[2]) and np.isinf(times[3]) and times[4] == 0.0


def test_drift_orbits_iterate_the_map():
    matrix = torch.tensor([[-0.2, 1.0], [0.0, -0.7]])
    orbits = lyapunov.drift_orbits(linear_model(matrix), starts(3), 5, dt=0.5)
    step = torch.eye(2) + 0.5 * matrix
    expected = starts(3) @ torch.linalg.matrix_power(step, 5).T
    assert orbits.shape == (3, 6, 2) and torch.allclose(orbits[:, -1], expected, atol=1e-5)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        lyapunov.drift_orbits(linear_model(matrix), starts(3), 0)


def test_map_lyapunov_of_a_linear_map_is_log_of_its_eigenvalue_moduli():
    matrix = torch.tensor([[-0.2, 1.0], [0.0, -0.7]])  # I + A: eigenvalues 0.8 and 0.3
    model = linear_model(matrix)
    paths = lyapunov.drift_orbits(model, starts(4), 400)
    exponents = lyapunov.map_lyapunov(model, paths)
    assert exponents.shape == (4, 2)
    assert np.allclose(exponents, [[np.log(0.8), np.log(0.3)]] * 4, atol=0.01)
    halved = lyapunov.map_lyapunov(
        model, lyapunov.drift_orbits(model, starts(2), 400, dt=0.5), dt=0.5
    )
    assert np.allclose(halved, [[np.log(0.9) / 0.5, np.log(0.65) / 0.5]] * 2, atol=0.01)
    # Not the drift's eigenvalues −0.2 and −0.7 (the flow's exponents): log 0.3 = −1.20.
    assert abs(exponents[0, 1] - -0.7) > 0.4


def test_map_lyapunov_separates_the_well_from_the_saddle():
    paths = torch.tensor([[1.0, 0.0], [0.0, 0.0]])[:, None].expand(2, 11, 2)
    exponents = lyapunov.map_lyapunov(DoubleWell(), paths, dt=0.5)
    # Well: I + J/2 = diag(0, 0.5), one direction annihilated in a step; saddle: diag(1.5, 0.5).
    assert exponents[0, 0] == pytest.approx(np.log(0.5) / 0.5) and exponents[0, 1] < -50
    assert np.allclose(exponents[1], [np.log(1.5) / 0.5, np.log(0.5) / 0.5])


def test_map_lyapunov_rejects_bad_paths():
    model = DoubleWell()
    with pytest.raises(ValueError, match=r"size \(n, K \+ 1, 2\)"):
        lyapunov.map_lyapunov(model, torch.zeros(3, 1, 2))
    with pytest.raises(ValueError, match="non-finite"):
        lyapunov.map_lyapunov(model, torch.full((1, 3, 2), float("nan")))
    with pytest.raises(ValueError, match="dt must be > 0"):
        lyapunov.map_lyapunov(model, torch.zeros(1, 3, 2), dt=-1.0)


def test_generator_by_distance_map_reading_for_a_known_ou():
    trajs = as_trajectories(ou_paths(n=120, steps=20, dt=0.1), dt=0.1, per_prompt=2)
    split = sdelm.prepare(trajs, dim=None, standardise=False, seed=0).test
    model = linear_model(-torch.eye(3), sigma=0.5)
    table = phase.generator_by_distance(model, split, torch.zeros(3), reading="map")
    # ΔV = (−2Δt + Δt²)|x|² + 3 σ² Δt with Δt = 0.1.
    x = split.states[split.mask]
    values = (-0.2 + 0.01) * x.pow(2).sum(dim=1) + 3 * 0.25 * 0.1
    overall = (table["LV"] * table["states"]).sum() / table["states"].sum()
    assert overall == pytest.approx(float(values.mean()), rel=1e-4)
    with pytest.raises(ValueError, match="reading must be"):
        phase.generator_by_distance(model, split, torch.zeros(3), reading="both")
