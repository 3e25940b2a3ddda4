"""Fitting speed: sdelm's likelihood fit against a torchsde latent-SDE fit, side by side.

Both fit the same synthetic 2-D double-well process with state-dependent noise (observed every
``dt``), and both are judged by the same yardstick: the Euler–Maruyama transition NLL of their
drift and diffusion on the validation sequences (nats per dimension per step).

1. ``sdelm.fit`` (NeuralSDE, exact transition likelihood, minibatches of transitions): wall time
   until its validation NLL first comes within 1% of its best.
2. A latent SDE as in torchsde's own example (``examples/latent_sde.py``): a posterior SDE whose
   drift sees the next observation, a prior SDE (the model we keep), ``sdeint(..., logqp=True)``
   inside every training step, and the ELBO = Gaussian observation log-likelihood − KL. Wall
   time until the prior's validation NLL reaches the same target, or the time budget runs out
   (then the ratio is a lower bound).

Prints the ratio (goal >= 50) and sdelm's throughput in transitions per second.

3. With ``--throughput``: ``sdelm.fit``'s training transitions per second with
   ``batch_size=4096`` and with ``batch_size="auto"`` (65,536 on CUDA, 4,096 on the CPU) on a
   larger synthetic OU data set, alternating, and their ratio (about 9x on a GPU).

4. With ``--correlated``: ``sdelm.fit``'s training transitions per second for the neural SDE
   with diagonal noise and with correlated noise (:mod:`sdelm.noise`, one triangular solve per
   batch) in the book's 16 dimensions, alternating, and their ratio: the cost of the
   correlation.

Usage: ``python benchmarks/fitting.py [--budget 300] [--device auto] [--throughput]
[--correlated]``.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torchsde
from torch import nn

import sdelm
from sdelm.synthetic import as_trajectories, double_well_paths, ou_paths


class LatentSDE(nn.Module):
    """torchsde-style latent SDE: posterior drift sees the next observation; prior is kept."""

    sde_type = "ito"
    noise_type = "diagonal"

    def __init__(self, dim: int, hidden: int, observations: torch.Tensor, dt: float) -> None:
        super().__init__()
        self.prior = sdelm.NeuralSDE(dim, hidden=hidden, time_scale=0, seed=0)
        self.correction = nn.Sequential(
            nn.Linear(2 * dim, hidden), nn.SiLU(), nn.Linear(hidden, dim)
        )
        self.log_noise = nn.Parameter(torch.tensor(-3.0))
        self.observations = observations  # (batch, steps, dim), the context
        self.dt = dt

    def _context(self, t: torch.Tensor) -> torch.Tensor:
        index = min(int(torch.ceil(t / self.dt - 1e-6)), self.observations.shape[1] - 1)
        return self.observations[:, index]

    def f(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # posterior drift
        return self.h(t, y) + self.correction(torch.cat([y, self._context(t)], dim=1))

    def h(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # prior drift
        return self.prior.f(t, y)

    def g(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # shared diffusion
        return self.prior.g(t, y)


def sdelm_time_to_target(data: sdelm.PreparedData, device: str) -> tuple[float, float, float]:
    result = sdelm.fit(
        sdelm.NeuralSDE(data.dim, hidden=64, time_scale=0, seed=0),
        data,
        lr=3e-3,
        epochs=400,
        patience=40,
        batch_size=2048,
        device=device,
        progress=False,
    )
    val = result.history[result.history["split"] == "val"]
    target = result.best_val_nll + 0.01 * abs(result.best_val_nll)
    reached = val[val["nll"] <= target].iloc[0]
    return float(reached["seconds"]), target, result.transitions_per_second


def latent_time_to_target(
    data: sdelm.PreparedData, target: float, budget: float, device: str
) -> tuple[float, float, bool]:
    observed = data.train.states.to(device)  # (n, steps, dim), every step valid here
    steps, dt = observed.shape[1], data.dt
    ts = torch.arange(steps, device=device, dtype=torch.float32) * dt
    model = LatentSDE(data.dim, 64, observed, dt).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    start, best = time.perf_counter(), float("inf")
    while time.perf_counter() - start < budget:
        batch = torch.randperm(len(observed), generator=generator)[:64].to(device)
        model.observations = observed[batch]
        y0 = model.observations[:, 0]
        bm = torchsde.BrownianInterval(
            float(ts[0]),
            float(ts[-1]),
            size=(len(y0), y0.shape[1] + 1),  # logqp adds a state dt=dt / 4, device=device
        )
        paths, logqp = torchsde.sdeint(model, y0, ts, bm=bm, dt=dt / 4, logqp=True, method="euler")
        noise = model.log_noise.exp()
        log_likelihood = (
            torch.distributions.Normal(paths.transpose(0, 1), noise)
            .log_prob(model.observations)
            .sum(dim=(1, 2))
        )
        loss = -(log_likelihood - logqp.sum(dim=0)).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        best = min(best, sdelm.nll(model.prior, data.val.transitions().to(device)))
        if best <= target:
            return time.perf_counter() - start, best, True
    return time.perf_counter() - start, best, False


def _median_rates(
    data: sdelm.PreparedData, settings: dict[str, dict], epochs: int, repeats: int, device: str
) -> list[float]:
    """Print and return the median training transitions per second of each setting's fit.

    The settings alternate, so that a change of the machine's load touches them alike.

    Args:
        data: The data.
        settings: Name -> ``correlated`` and ``batch_size`` of a neural SDE fit.
        epochs: Epochs per fit.
        repeats: Fits per setting.
        device: Where to fit.

    """
    rates: dict[str, list[float]] = {name: [] for name in settings}
    batch = {}
    for _ in range(repeats):
        for name, setting in settings.items():
            model = sdelm.NeuralSDE(data.dim, correlated=setting["correlated"], seed=0)
            result = sdelm.fit(model, data, epochs=epochs, patience=epochs, device=device,
                               batch_size=setting["batch_size"], progress=False)  # fmt: skip
            rates[name].append(result.transitions_per_second)
            batch[name] = result.batch_size
    print(f"{len(data.train.transitions()):,} training transitions, {epochs} epochs, {device}")
    median = {name: sorted(values)[len(values) // 2] for name, values in rates.items()}
    for name, rate in median.items():
        print(f"{name} (batches of {batch[name]:,}): {rate:,.0f} transitions/s")
    return list(median.values())


def batch_throughput(device: str, sequences: int, epochs: int, repeats: int) -> None:
    """Print training transitions per second at batch 4,096 and at ``"auto"``, alternating."""
    trajs = as_trajectories(ou_paths(n=sequences, steps=50, dt=0.1), dt=0.1)
    data = sdelm.prepare(trajs, dim=None, standardise=False, seed=0)
    settings = {
        "batch_size=4096": {"correlated": False, "batch_size": 4096},
        "batch_size='auto'": {"correlated": False, "batch_size": "auto"},
    }
    fixed, auto = _median_rates(data, settings, epochs, repeats, device)
    print(f"ratio auto / 4096 = {auto / fixed:.2f}")


def noise_throughput(device: str, sequences: int, epochs: int, repeats: int) -> None:
    """Print training transitions per second with diagonal and correlated noise, alternating."""
    steps = torch.randn(sequences, 50, 16, generator=torch.Generator().manual_seed(0))
    trajs = as_trajectories(0.1 * steps.cumsum(dim=1), dt=1.0)
    data = sdelm.prepare(trajs, dim=16, seed=0)
    settings = {
        "diagonal noise": {"correlated": False, "batch_size": 4096},
        "correlated noise": {"correlated": True, "batch_size": 4096},
    }
    diagonal, correlated = _median_rates(data, settings, epochs, repeats, device)
    print(f"ratio of times correlated / diagonal = {diagonal / correlated:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=300.0, help="seconds for torchsde")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--throughput", action="store_true", help="batch 4096 against auto")
    parser.add_argument("--correlated", action="store_true", help="correlated against diagonal")
    parser.add_argument("--sequences", type=int, default=20000, help="for --throughput")
    parser.add_argument("--epochs", type=int, default=5, help="for --throughput")
    parser.add_argument("--repeats", type=int, default=3, help="for --throughput")
    args = parser.parse_args()
    device = str(sdelm.resolve_device(args.device))
    print(f"load average {os.getloadavg()}, torch threads {torch.get_num_threads()}, {device}")
    if args.throughput:
        batch_throughput(device, args.sequences, args.epochs, args.repeats)
        return
    if args.correlated:
        noise_throughput(device, args.sequences, args.epochs, args.repeats)
        return
    trajs = as_trajectories(double_well_paths(n=400, steps=40, dt=0.05), dt=0.05)
    data = sdelm.prepare(trajs, dim=None, standardise=False, seed=0)
    print(data.summary().to_string())

    sdelm_seconds, target, throughput = sdelm_time_to_target(data, device)
    latent_seconds, latent_best, reached = latent_time_to_target(data, target, args.budget, device)
    print(f"target validation NLL (within 1% of sdelm's best): {target:.4f} nats/dim/step")
    print(
        f"sdelm.fit reached it in {sdelm_seconds:.2f} s ({throughput:,.0f} training transitions/s)"
    )
    if reached:
        print(f"torchsde latent SDE reached it in {latent_seconds:.1f} s")
        print(f"ratio latent / sdelm = {latent_seconds / sdelm_seconds:.0f}x (goal >= 50)")
    else:
        print(
            f"torchsde latent SDE did not reach it in {latent_seconds:.0f} s "
            f"(best {latent_best:.4f})"
        )
        print(f"ratio latent / sdelm > {latent_seconds / sdelm_seconds:.0f}x (goal >= 50)")


if __name__ == "__main__":
    main()
