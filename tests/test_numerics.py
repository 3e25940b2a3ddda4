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


def test_the_tests_run_on_the_pinned_kernels():
    assert numerics.kernels() == "AVX2/AVX2"


#: SHA-256 (first 12 hex digits) of the tokens that the packaged SmolLM2 samples from 8 bundled
#: prompts, twice each at T = 1, 48 new tokens, seed 0, on the pinned kernels.
SAMPLED_TOKENS = "33e9fb204e66"


@pytest.mark.integration
def test_the_packaged_model_samples_the_same_tokens_on_every_machine():
    code = (
        "import hashlib, sdelm; t = sdelm.collect_trajectories(n_prompts=8, "
        "temperatures=[1.0], samples_per_prompt=2, max_new_tokens=48, n_passages=0, "
        "cache=False); print(hashlib.sha256(t.tokens.numpy().tobytes()).hexdigest()[:12])"
    )
    bare = {k: v for k, v in os.environ.items() if k not in numerics.PINNED}
    for threads in ("1", "2"):
        environment = {**bare, "OMP_NUM_THREADS": threads}
        printed = python_prints(code, environment)
        assert printed == SAMPLED_TOKENS, (
            f"On {threads} thread(s) this machine samples other tokens than the pinned kernels "
            "gave where the book was executed: its chapters' numbers will differ too."
        )
