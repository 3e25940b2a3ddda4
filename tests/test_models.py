"""Models: shapes, positivity, torchsde interface, Lipschitz bound, checkpoints."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

import sdelm
from sdelm.models import linear, lines_of_thought

BUILDERS = {
    "NeuralSDE": lambda: sdelm.NeuralSDE(4, hidden=16, seed=2),
    "NeuralSDE, spectral norm": lambda: sdelm.NeuralSDE(4, hidden=16, spectral_norm=True),
    "RandomWalk": lambda: linear.RandomWalk(4),
    "BrownianDrift": lambda: linear.BrownianDrift(4),
    "OrnsteinUhlenbeck": lambda: linear.OrnsteinUhlenbeck(4),
    "VectorAutoregression": lambda: linear.VectorAutoregression(4),
    "NeuralSDE, correlated noise": lambda: sdelm.NeuralSDE(4, hidden=16, correlated=True),
    "LinesOfThought": lambda: lines_of_thought.LinesOfThought(4),
    "NeuralDrift": lambda: linear.NeuralDrift(4, hidden=16),
}


def randomise(model: torch.nn.Module) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    return model


@pytest.mark.parametrize("name", BUILDERS)
def test_drift_and_positive_diffusion_have_the_state_shape(name):
    model = randomise(BUILDERS[name]()).eval()
    x, t = torch.randn(5, 4), torch.linspace(0, 10, 5)
    assert model.drift(x, t).shape == (5, 4)
    sigma = model.diffusion(x, t)
    assert sigma.shape == (5, 4) and (sigma > 0).all()
    # torchsde's interface: scalar time.
    assert torch.allclose(model.f(torch.tensor(2.0), x), model.drift(x, torch.full((5,), 2.0)))
    g = model.g(torch.tensor(2.0), x)
    if model.correlation is None:
        assert g.shape == (5, 4) and model.noise_type == "diagonal"
    else:  # the noise's factor; its rows' lengths are each coordinate's own scale
        assert g.shape == (5, 4, 4) and model.noise_type == "general"
        assert torch.equal(g, g.tril())
        assert torch.allclose(g.norm(dim=2), model.diffusion(x, torch.full((5,), 2.0)))
    assert model.sde_type == "ito"


@pytest.mark.parametrize("name", BUILDERS)
def test_checkpoints_round_trip_without_training_state(name, tmp_path):
    model = randomise(BUILDERS[name]()).eval()
    path = sdelm.save_checkpoint(model, tmp_path / "m.safetensors")
    back = sdelm.load_checkpoint(path)
    assert type(back) is type(model) and back.config == model.config
    x, t = torch.randn(6, 4), torch.arange(6.0)
    assert torch.equal(back.drift(x, t), model.drift(x, t))
    assert torch.equal(back.diffusion(x, t), model.diffusion(x, t))


def test_a_foreign_file_is_not_a_checkpoint(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match="not an sdelm model checkpoint"):
        sdelm.load_checkpoint(tmp_path / "w.safetensors")


def test_initialisation_is_seeded_and_leaves_the_global_generator_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = sdelm.NeuralSDE(3, seed=7)
    after = torch.rand(1)
    assert torch.equal(before, after)
    second = sdelm.NeuralSDE(3, seed=7)
    assert all(
        torch.equal(a, b) for a, b in zip(first.parameters(), second.parameters(), strict=True)
    )


def test_lines_of_thought_noise_grows_exponentially_in_time():
    model = lines_of_thought.LinesOfThought(2)
    with torch.no_grad():
        model.log_alpha.fill_(torch.log(torch.tensor(0.64)))
        model.rate.fill_(0.18)
    t = torch.tensor([0.0, 10.0])
    variance = model.diffusion(torch.zeros(2, 2), t).pow(2)
    assert torch.allclose(variance[:, 0], 0.64 * torch.exp(0.18 * t))
    assert model.alpha == pytest.approx(0.64)


def test_spectral_norm_bounds_the_drift_lipschitz_constant():
    model = sdelm.NeuralSDE(4, hidden=32, depth=2, spectral_norm=True)
    model.train()
    for _ in range(20):  # power iterations converge while training
        model.drift(torch.randn(8, 4), torch.zeros(8))
    model.eval()
    assert model.lipschitz_bound() <= sdelm.models.SILU_LIPSCHITZ**2 * 1.01


def test_checkpoint_carries_the_projection(tmp_path):
    trajs = sdelm.synthetic.as_trajectories(sdelm.synthetic.ou_paths(n=40, steps=8), 0.1, 2)
    data = sdelm.prepare(trajs, dim=2)
    model = sdelm.NeuralSDE(2, hidden=8)
    with_projection = sdelm.save_checkpoint(model, tmp_path / "a.safetensors",
                                            projection=data.projection)  # fmt: skip
    projection = sdelm.load_projection(with_projection)
    assert torch.equal(projection.components, data.projection.components)
    assert projection.layer == data.projection.layer
    assert isinstance(sdelm.load_checkpoint(with_projection), sdelm.NeuralSDE)
    plain = sdelm.save_checkpoint(model, tmp_path / "b.safetensors")
    with pytest.raises(ValueError, match="no projection"):
        sdelm.load_projection(plain)
    for damage, message in [
        (dict(scale=torch.zeros(2)), "scales are not all positive"),
        (dict(components=data.projection.components.T), r"components of size \(3, 2\)"),
    ]:
        broken = dataclasses.replace(data.projection, **damage)
        path = sdelm.save_checkpoint(model, tmp_path / "c.safetensors", projection=broken)
        with pytest.raises(sdelm.models.CheckpointError, match=message):
            sdelm.load_projection(path)


def test_a_checkpoint_with_integer_weights_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    path = sdelm.save_checkpoint(linear.OrnsteinUhlenbeck(2), tmp_path / "ou.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    weights = {k: v.long() if k == "matrix" else v for k, v in load_file(path).items()}
    save_file(weights, str(path), metadata=metadata)
    with pytest.raises(sdelm.models.CheckpointError, match=r"\['matrix'\] are not floating"):
        sdelm.load_checkpoint(path)


def rewrite_config(path, out, **changes):
    """Copy a checkpoint with its header's model config changed."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    header = json.loads(metadata["sdelm_model"])
    header["config"].update(changes)
    save_file(load_file(path), out, metadata={**metadata, "sdelm_model": json.dumps(header)})
    return out


def test_a_config_that_disagrees_with_the_weights_is_refused_before_building(tmp_path):
    path = sdelm.save_checkpoint(sdelm.NeuralSDE(4, hidden=8), tmp_path / "m.safetensors")
    huge = rewrite_config(path, tmp_path / "huge.safetensors", hidden=10**6)
    # Building this model would allocate terabytes: the sizes are compared first.
    with pytest.raises(sdelm.models.CheckpointError, match="does not match the stored weights"):
        sdelm.load_checkpoint(huge)
    deeper = rewrite_config(path, tmp_path / "deep.safetensors", depth=3)
    with pytest.raises(sdelm.models.CheckpointError, match=r"diffusion_net\.6\.weight is missing"):
        sdelm.load_checkpoint(deeper)
    odd = rewrite_config(path, tmp_path / "odd.safetensors", width=3)
    with pytest.raises(sdelm.models.CheckpointError, match="does not build a NeuralSDE"):
        sdelm.load_checkpoint(odd)


def test_damaged_checkpoints_are_refused_naming_the_file(tmp_path):
    trajs = sdelm.synthetic.as_trajectories(sdelm.synthetic.ou_paths(n=40, steps=8), 0.1, 2)
    data = sdelm.prepare(trajs, dim=2)
    path = sdelm.save_checkpoint(sdelm.NeuralSDE(2, hidden=8), tmp_path / "m.safetensors",
                                 projection=data.projection)  # fmt: skip
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[:-40])
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a checkpoint at all")
    for bad in (truncated, garbage, tmp_path / "missing.safetensors"):
        with pytest.raises(sdelm.models.CheckpointError, match=re.escape(str(bad))):
            sdelm.load_checkpoint(bad)
        with pytest.raises(sdelm.models.CheckpointError, match=re.escape(str(bad))):
            sdelm.load_projection(bad)


def test_a_checkpoint_with_nan_weights_is_refused_naming_the_tensor(tmp_path):
    model = sdelm.NeuralSDE(4, hidden=16)
    with torch.no_grad():
        model.drift_net[0].weight[0, 0] = float("nan")
    path = sdelm.save_checkpoint(model, tmp_path / "nan.safetensors")
    with pytest.raises(sdelm.models.CheckpointError, match=r"drift_net\.0\.weight.*NaN"):
        sdelm.load_checkpoint(path)


def test_a_baseline_checkpoint_loads_in_a_fresh_process(tmp_path):
    import subprocess
    import sys

    path = sdelm.save_checkpoint(linear.VectorAutoregression(2), tmp_path / "v.safetensors")
    code = f"import sdelm; print(type(sdelm.load_checkpoint({str(path)!r})).__name__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "VectorAutoregression"


def test_the_zoo_is_the_one_registry_of_models():
    from sdelm.cli import MODELS
    from sdelm.models.zoo import ZOO, label

    labels = [entry.label for entry in ZOO.values()]
    assert len(set(labels)) == len(labels)
    assert set(MODELS) <= set(ZOO)  # the command line builds by the zoo's names
    # the book's claims are named after these labels: they must not move
    assert [name for name, *_ in sdelm.standard_models(per_step_maps=True)] == [
        "random walk",
        "Brownian + drift",
        "OU / VAR(1)",
        "VAR(1), full covariance",
        "Lines of Thought",
        "neural drift + σ floor",
        "neural SDE",
        "neural SDE, correlated noise",
        "neural SDE (paper loss)",
        "Lines of Thought, map per step",
    ]
    assert label("ou") == "OU / VAR(1)"
    for entry in ZOO.values():
        model = entry.build(3, 0, 8.0, 16, 1)
        assert isinstance(model, sdelm.SDEModel) and model.dim == 3, entry.key
        assert model.config.get("seed", 0) == 0
