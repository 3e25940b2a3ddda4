"""What pinning the CPU kernels costs, as ratios measured side by side in one process.

sdelm pins torch's CPU kernels on import (:mod:`sdelm.numerics`: ATen's AVX2 kernels, MKL's
reproducible AVX2 path), so that the same seed gives the same bits on every x86 machine with
AVX2. Each ratio is pinned / native (the kernels torch picks itself, AVX-512 where the processor
has them) for the same work:

1. sampling: ``sdelm.collect_trajectories`` of 8 prompts × 2 samples, 48 tokens, uncached;
2. fitting: a neural SDE fitted to OU paths (``sdelm.fit``, 3 dimensions).

The kernels are chosen when torch starts, so each run is a fresh Python process; runs
alternate (pinned, native, pinned, ...) and the medians are compared, so that a slow moment of
a noisy machine hits both sides. Each process times only its work, not its start-up.
Usage: ``python benchmarks/kernels.py [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

from sdelm.numerics import PINNED

WORK = {
    "sampling": (
        "sdelm.collect_trajectories(n_prompts=8, temperatures=[1.0], samples_per_prompt=2, "
        "max_new_tokens=48, n_passages=0, cache=False)"
    ),
    "fitting": (
        "sdelm.fit(sdelm.NeuralSDE(3, time_scale=48.0, seed=0), sdelm.prepare("
        "synthetic.as_trajectories(synthetic.ou_paths(n=256, steps=48), dt=1.0, per_prompt=2), "
        "dim=3, seed=0), seed=0, progress=False)"
    ),
}
#: A warm-up (the model's first load, imports) runs before the clock starts.
PROGRAM = """
import time, torch, sdelm
from sdelm import synthetic
torch.set_num_threads(1)
sdelm.load_lm()
start = time.perf_counter()
{work}
print(time.perf_counter() - start, sdelm.numerics.kernels())
"""


def seconds(work: str, pinned: bool) -> tuple[float, str]:
    """Run ``work`` in a fresh process; return its seconds and the kernels it ran on."""
    environment = {k: v for k, v in os.environ.items() if k not in PINNED}
    if not pinned:  # the kernels torch picks itself, MKL's path by the processor
        environment |= {"ATEN_CPU_CAPABILITY": "", "MKL_CBWR": "AUTO"}
    program = PROGRAM.format(work=work)
    command = [sys.executable, "-c", program]
    result = subprocess.run(command, env=environment, capture_output=True, text=True, check=True)
    printed = result.stdout.split()
    return float(printed[-2]), printed[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    for name, work in WORK.items():
        runs: dict[bool, list[float]] = {True: [], False: []}
        kernels = {}
        for _ in range(args.repeats):
            for pinned in (True, False):
                value, kernels[pinned] = seconds(work, pinned)
                runs[pinned].append(value)
        pinned, native = (statistics.median(runs[p]) for p in (True, False))
        print(
            f"{name}: pinned ({kernels[True]}) {pinned:.1f} s / native ({kernels[False]}) "
            f"{native:.1f} s = {pinned / native:.2f}"
        )


if __name__ == "__main__":
    main()
