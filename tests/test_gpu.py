"""The pipeline on a CUDA device: extraction, fitting and simulation (marker ``gpu``).

Run on a machine with a GPU: ``pytest tests/test_gpu.py -m gpu``. Without CUDA every test is
skipped (they check the device path, which the CPU tests cannot reach).
"""

from __future__ import annotations

import pytest
import torch

import sdelm
from sdelm import extract
from sdelm.synthetic import as_trajectories, ou_model, ou_paths
from tests.conftest import tiny_lm
from tests.test_extract import PROMPTS

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def on_cuda(kind: str) -> sdelm.LM:
    lm = tiny_lm(kind)
    lm.model.to("cuda")
    lm.device = torch.device("cuda")
    return lm


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_recorded_states_equal_a_replay_on_cuda(kind):
    lm = on_cuda(kind)
    # More steps than one block of device-side steps, and sequences that end early.
    trajs = extract(
        lm, PROMPTS, max_new_tokens=40, samples_per_prompt=2, batch_size=4, seed=1, progress=False
    )
    assert trajs.states.device.type == "cpu" and trajs.mask.any()
    for row in range(trajs.n_sequences):
        prompt = lm.format_prompt(trajs.rows["prompt"][row])
        prompt_ids = lm.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        n = int(trajs.lengths[row])
        ids = torch.tensor([prompt_ids + trajs.tokens[row, :n].tolist()], device="cuda")
        with torch.inference_mode():
            out = lm.model(input_ids=ids, output_hidden_states=True)
        for i, layer in enumerate(trajs.layers):
            replay = out.hidden_states[layer][0, len(prompt_ids) :].cpu()
            recorded = trajs.states[row, i, :n]
            assert (recorded - replay).abs().max() <= 1e-3 * recorded.abs().max()


def test_cuda_and_cpu_draw_the_same_uniform_numbers():
    """Same seed, same model: the CPU and CUDA runs mostly sample the same tokens (rounding
    differences may flip a rare near-tie, after which a sequence goes its own way)."""
    cpu = extract(tiny_lm("llama"), PROMPTS, max_new_tokens=12, seed=3, progress=False)
    cuda = extract(on_cuda("llama"), PROMPTS, max_new_tokens=12, seed=3, progress=False)
    assert (cpu.tokens[:, 0] == cuda.tokens[:, 0]).all()
    assert (cpu.tokens == cuda.tokens).float().mean() > 0.8


def test_fit_on_cuda_matches_the_cpu_fit():
    trajs = as_trajectories(ou_paths(n=120, steps=30, dt=0.1), dt=0.1)
    data = sdelm.prepare(trajs, dim=None, standardise=False, seed=0)
    results = {
        device: sdelm.fit(
            sdelm.NeuralSDE(data.dim, hidden=32, seed=0),
            data,
            epochs=15,
            batch_size=512,
            device=device,
            progress=False,
        )
        for device in ("cpu", "cuda")
    }
    assert results["cuda"].device.startswith("cuda")
    cpu, cuda = results["cpu"].best_val_nll, results["cuda"].best_val_nll
    assert cuda == pytest.approx(cpu, rel=0.02, abs=0.02)
    assert sdelm.nll(results["cuda"].model, data.val) == pytest.approx(
        sdelm.nll(results["cpu"].model, data.val), rel=0.02, abs=0.02
    )


@pytest.mark.parametrize("method", ["euler", "milstein"])
def test_simulate_on_cuda(method):
    model = ou_model()
    x0 = torch.zeros(3)
    cpu = sdelm.simulate(model, x0, steps=20, n_paths=4000, dt=0.1, method=method, seed=0)
    again = sdelm.simulate(
        model.to("cuda"), x0, steps=20, n_paths=4000, dt=0.1, method=method, seed=0
    )
    cuda = sdelm.simulate(model, x0, steps=20, n_paths=4000, dt=0.1, method=method, seed=0)
    assert cuda.device.type == "cpu" and cuda.shape == (4000, 21, 3)
    assert torch.isfinite(cuda).all()
    assert torch.equal(cuda, again)  # same seed, same device: the same paths
    # Other device, other noise: the same law (mean and spread at the last step).
    torch.testing.assert_close(cuda[:, -1].mean(0), cpu[:, -1].mean(0), atol=0.05, rtol=0)
    torch.testing.assert_close(cuda[:, -1].std(0), cpu[:, -1].std(0), atol=0.05, rtol=0.05)
