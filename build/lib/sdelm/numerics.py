"""Pinned CPU kernels: the same seed gives the same text and numbers at any thread count.

PyTorch picks its CPU kernels by the processor's vector instructions (AVX2, AVX-512), and MKL,
which multiplies the matrices, picks its code path the same way. Kernels of different widths
add in different orders, so the last bits of a logit depend on the machine; now and then a
sampled token differs, and the rest of its sequence with it. Measured on an AVX-512 machine:
3 of 16 sequences sampled at T = 1 (48 tokens each) changed when torch used its AVX2 kernels,
and a claim near its threshold (the share of outer states pulled back, data minus i.i.d.)
read −0.090, −0.066, −0.092 and −0.042 under four choices of kernels.

sdelm therefore pins the kernels when it is imported, before torch starts
(:func:`pin_kernels`): ATen's AVX2 kernels (``ATEN_CPU_CAPABILITY=avx2``) and MKL's
conditional numerical reproducibility on its AVX2 code path (``MKL_CBWR=AVX2``), which every
x86 processor of the last decade runs. That gives the same tokens on one kind of processor at
any number of threads, not across vendors: on these kernels an AMD EPYC samples other tokens
than an Intel Xeon now and then (``MKL_CBWR=COMPATIBLE`` changes the tokens again and costs
1.5x the time on the AMD machine). The book therefore asserts only the verdicts that survive
other tokens (:mod:`sdelm.book.record`). On that machine they cost about 8% of a CPU forward
pass against the AVX-512 kernels (torch's unvectorised kernels, which any x86 processor runs,
cost 65%). A variable already set wins: ``ATEN_CPU_CAPABILITY=avx512`` before importing sdelm
buys speed, and numbers that may differ from the book's. The kernels in force are part of
every cache key (:func:`kernels`). GPUs are not affected.
"""

from __future__ import annotations

import os

__all__ = ["PINNED", "kernels", "pin_kernels"]

#: The environment that pins the kernels.
PINNED = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2"}


def pin_kernels() -> None:
    """Ask for the pinned kernels, unless the variables are set already.

    Takes effect only if torch has not run an operation yet (ATen and MKL read the variables
    once, at their first use): sdelm calls it on import.
    """
    for name, value in PINNED.items():
        os.environ.setdefault(name, value)


def kernels() -> str:
    """Return the CPU kernels in force, e.g. ``"AVX2/AVX2"`` (ATen's, then MKL's)."""
    import torch

    return f"{torch.backends.cpu.get_cpu_capability()}/{os.environ.get('MKL_CBWR', 'AUTO')}"
