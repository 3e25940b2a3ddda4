"""Simulation speed as ratios measured side by side in one process.

1. ``sdelm.simulate`` / a hand-written vectorised Euler–Maruyama loop on the same model and
   the same number of paths and steps (goal <= 1.5): what torchsde and its seeded
   ``BrownianInterval`` cost over the simplest correct loop.
2. ``torchsde.sdeint`` with its default Brownian motion / ``sdelm.simulate``: the trap that
   ``sdelm.simulate`` avoids (torchsde issue #109; about 50x in our notes).

Runs alternate and medians are compared. Usage: ``python benchmarks/simulation.py``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torchsde

import sdelm


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


@torch.no_grad()
def hand_written_euler(model: sdelm.SDEModel, y0: torch.Tensor, steps: int, dt: float):
    generator = torch.Generator().manual_seed(0)
    y, out = y0, [y0]
    for k in range(steps):
        t = torch.full((len(y),), k * dt)
        noise = torch.randn(y.shape, generator=generator)
        y = y + model.drift(y, t) * dt + model.diffusion(y, t) * dt**0.5 * noise
        out.append(y)
    return torch.stack(out, dim=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--paths", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=48)
    parser.add_argument("--substeps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()}, torch threads {torch.get_num_threads()}")
    model = sdelm.NeuralSDE(args.dim, seed=0).eval()
    y0 = torch.randn(args.paths, args.dim, generator=torch.Generator().manual_seed(1))
    dt = 1.0 / args.substeps
    n_steps = args.steps * args.substeps

    def run_sdelm():
        sdelm.simulate(model, y0, args.steps, substeps=args.substeps, seed=0)

    def run_loop():
        hand_written_euler(model, y0, n_steps, dt)

    def run_default():
        with torch.no_grad():
            ts = torch.arange(args.steps + 1, dtype=torch.float32)
            torchsde.sdeint(model, y0, ts, method="euler", dt=dt)

    for warm in (run_sdelm, run_loop, run_default):
        warm()
    sdelm_s, loop_s, default_s = [], [], []
    for _ in range(args.repeats):
        sdelm_s.append(timed(run_sdelm))
        loop_s.append(timed(run_loop))
        default_s.append(timed(run_default))
    median = statistics.median
    print(
        f"{args.paths} paths x {args.steps} tokens x {args.substeps} solver steps, "
        f"dim {args.dim}, {args.repeats} alternating repeats"
    )
    print(
        f"sdelm.simulate {median(sdelm_s):.3f} s; hand-written loop {median(loop_s):.3f} s; "
        f"torchsde default Brownian motion {median(default_s):.3f} s"
    )
    print(
        f"ratio sdelm / hand-written loop = {median(sdelm_s) / median(loop_s):.2f} (goal <= 1.5)"
    )
    print(f"ratio torchsde default / sdelm = {median(default_s) / median(sdelm_s):.1f}")


if __name__ == "__main__":
    main()
