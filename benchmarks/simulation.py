"""Simulation speed as ratios measured side by side in one process.

1. ``sdelm.simulate`` / a hand-written vectorised Euler–Maruyama loop on the same model and
   the same number of paths and steps (goal <= 1.2 from 64 to 4,096 paths): what torchsde's
   solver step, sdelm's seeded Brownian increments and its fixed-step driver cost over the
   simplest correct loop.
2. The same Euler solve driven by a seeded :class:`torchsde.BrownianInterval` (sdelm's
   Brownian motion for Euler until issue 14) / ``sdelm.simulate``: what the increments drawn
   from a seeded generator save, most at small ensembles.
3. With ``--trap``: ``torchsde.sdeint`` with its default Brownian motion / ``sdelm.simulate``,
   the trap that ``sdelm.simulate`` avoids (torchsde issue #109; about 50x in our notes).

For each number of paths the runs alternate and medians are compared; the machine's load is
printed first and last (run it on a quiet machine, or with ``--threads 1`` on a shared one, where
``--cpu-time`` times each run by the process's CPU time rather than the wall clock, so that time
spent waiting for a core is not counted).
Usage: ``python benchmarks/simulation.py [--paths 64 256 1024 4096] [--threads 1] [--cpu-time]
[--trap]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
import torchsde

import sdelm


def timed(function: Callable[[], object], clock: Callable[[], float]) -> float:
    start = clock()
    function()
    return clock() - start


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


@torch.no_grad()
def interval_euler(model: sdelm.SDEModel, y0: torch.Tensor, steps: int, substeps: int):
    """Euler with a seeded BrownianInterval, as ``sdelm.simulate`` did before issue 14."""
    ts = torch.arange(steps + 1, dtype=torch.float32)
    bm = torchsde.BrownianInterval(
        t0=0.0, t1=float(steps), size=tuple(y0.shape), dt=1.0 / substeps, entropy=0
    )
    return torchsde.sdeint(model, y0, ts, bm=bm, method="euler", dt=1.0 / substeps)


def compare(model: sdelm.SDEModel, paths: int, args: argparse.Namespace) -> dict[str, float]:
    """Median seconds of each way to simulate ``paths`` paths, run alternately."""
    y0 = torch.randn(paths, args.dim, generator=torch.Generator().manual_seed(1))
    runs = {
        "sdelm": lambda: sdelm.simulate(model, y0, args.steps, substeps=args.substeps, seed=0),
        "loop": lambda: hand_written_euler(
            model, y0, args.steps * args.substeps, 1.0 / args.substeps
        ),
        "interval": lambda: interval_euler(model, y0, args.steps, args.substeps),
    }
    if args.trap:
        ts = torch.arange(args.steps + 1, dtype=torch.float32)
        runs["default"] = lambda: torchsde.sdeint(
            model, y0, ts, method="euler", dt=1.0 / args.substeps
        )
    with torch.no_grad():
        for run in runs.values():
            run()  # warm up
        clock = time.process_time if args.cpu_time else time.perf_counter
        seconds: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, run in runs.items():
                seconds[name].append(timed(run, clock))
    return {name: statistics.median(values) for name, values in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--paths", type=int, nargs="+", default=[64, 256, 1024, 4096])
    parser.add_argument("--steps", type=int, default=48)
    parser.add_argument("--substeps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--cpu-time", action="store_true", help="time by process CPU time")
    parser.add_argument("--trap", action="store_true", help="also time the default BM")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"load average {os.getloadavg()}, torch threads {torch.get_num_threads()}")
    print(
        f"{args.steps} tokens x {args.substeps} solver steps, dim {args.dim}, "
        f"{args.repeats} alternating repeats, medians of "
        f"{'process CPU time' if args.cpu_time else 'wall time'}"
    )
    model = sdelm.NeuralSDE(args.dim, seed=0).eval()
    header = "paths  sdelm s  loop s  sdelm/loop (goal <= 1.2)  interval/sdelm"
    print(header + ("  default/sdelm" if args.trap else ""))
    for paths in args.paths:
        m = compare(model, paths, args)
        line = (
            f"{paths:5d}  {m['sdelm']:7.3f}  {m['loop']:6.3f}  {m['sdelm'] / m['loop']:24.2f}"
            f"  {m['interval'] / m['sdelm']:14.2f}"
        )
        if args.trap:
            line += f"  {m['default'] / m['sdelm']:13.1f}"
        print(line, flush=True)
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
