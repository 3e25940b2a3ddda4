"""sdelm pins torch's CPU kernels on import, unless told otherwise."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sdelm import numerics


def python_prints(code: str, environment: dict[str, str]) -> str:
    command = [sys.executable, "-c", code]
    result = subprocess.run(command, env=environment, capture_output=True, text=True, check=True)
    return result.stdout.strip()


def kernels_in(environment: dict[str, str]) -> str:
    code = "import sdelm, torch; torch.ones(3).exp(); print(sdelm.numerics.kernels())"
    return python_prints(code, environment)


def test_importing_sdelm_pins_the_kernels_unless_set_before():
    bare = {k: v for k, v in os.environ.items() if k not in numerics.PINNED}
    assert kernels_in(bare) == "AVX2/AVX2"
    assert kernels_in({**bare, "MKL_CBWR": "AUTO"}) == "AVX2/AUTO"
    assert kernels_in({**bare, "ATEN_CPU_CAPABILITY": "default"}) == "DEFAULT/AVX2"


def test_the_tests_run_on_the_kernels_asked_for():
    # The pinned ones, unless ATEN_CPU_CAPABILITY was set before sdelm was imported (as the
    # check on other kernels does: make test with ATEN_CPU_CAPABILITY=default).
    asked = os.environ["ATEN_CPU_CAPABILITY"].upper()
    assert numerics.kernels() == f"{asked}/{os.environ['MKL_CBWR']}"


@pytest.mark.integration
def test_the_packaged_model_samples_the_same_tokens_on_any_number_of_threads():
    # What is guaranteed: the same tokens on the same kind of processor and kernels, whatever
    # the thread count. Not across vendors: on the same pinned kernels this run's tokens
    # hashed 33e9fb204e66 on an Intel Xeon and 38db29110191 on an AMD EPYC. The one setting
    # that might align them, MKL_CBWR=COMPATIBLE, costs 1.5x the time (AMD EPYC), beyond the
    # 1.2x the project accepts. The book asserts only the verdicts that survive other tokens
    # (book/robustness.json).
    code = (
        "import hashlib, sdelm; t = sdelm.collect_trajectories(n_prompts=8, "
        "temperatures=[1.0], samples_per_prompt=2, max_new_tokens=48, n_passages=0, "
        "cache=False); print(hashlib.sha256(t.tokens.numpy().tobytes()).hexdigest()[:12])"
    )
    hashes = {
        threads: python_prints(code, {**os.environ, "OMP_NUM_THREADS": threads})
        for threads in ("1", "2")
    }
    assert len(hashes["1"]) == 12
    assert hashes["1"] == hashes["2"], f"The sampled tokens depend on the thread count: {hashes}"
