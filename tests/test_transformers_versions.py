"""Extraction is correct under every supported transformers version, or refuses to run.

transformers up to 5.23 takes the KV cache as ``past_key_values``, 5.24 as ``cache``, and a
forward pass silently drops a keyword it does not know: every step then runs without its
context and the recorded states are wrong, with no error. These tests run the replay checks of
extraction and branching under the oldest supported version, installed into a side folder, and
check that a forward pass which ignores the cache is refused.

The side folder: ``SDELM_OLD_TRANSFORMERS=/path`` names one made with
``python -m pip install --no-deps --target /path transformers==<OLDEST>`` (the Makefile makes
``.venv/old-transformers``); when the variable is unset, the test installs it into a temporary
folder itself (needs PyPI).
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import transformers
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from sdelm import LMLoadError, extract
from sdelm.lm import SUPPORTED_TRANSFORMERS, cache_keyword, check_transformers
from tests.conftest import tiny_lm

#: The oldest supported transformers, which the side folder must hold.
OLDEST = "5.18.0"
ROOT = Path(__file__).resolve().parents[1]

REPLAY = textwrap.dedent(
    """
    import torch, transformers
    from sdelm import extract
    from sdelm.generation import branch, prefix_positions
    from sdelm.lm import cache_keyword
    from tests.conftest import tiny_lm
    from tests.test_branching import replay as replay_branch
    from tests.test_extract import PROMPTS, replay_states

    print("transformers", transformers.__version__, "from", transformers.__file__)
    for kind in ("llama", "gpt2"):
        lm = tiny_lm(kind)
        print(kind, "takes its cache as", cache_keyword(lm.model))
        trajs = extract(lm, PROMPTS, max_new_tokens=8, batch_size=3, progress=False)
        for row in range(trajs.n_sequences):
            replay = replay_states(lm, trajs, row)
            recorded = trajs.states[row, :, : int(trajs.lengths[row])]
            error = float((recorded - replay).abs().max() / recorded.abs().max())
            assert error <= 1e-4, (kind, row, error)
        positions = prefix_positions(trajs, [1, 4])
        branches = branch(lm, trajs, positions, n_branches=3)
        for p, (i, k) in enumerate(positions):
            token = int(branches.tokens[p, 0, 2])
            expected = replay_branch(lm, trajs, i, k, token, branches.layers)
            assert torch.allclose(branches.states[p, 0, 2], expected, atol=1e-4), (kind, i, k)
    print("replay equal")
    """
)


def test_the_oldest_tested_version_is_the_lower_bound():
    lower = [s.version for s in SpecifierSet(SUPPORTED_TRANSFORMERS) if s.operator == ">="]
    assert [Version(v) for v in lower] == [Version(OLDEST)]
    assert Version(transformers.__version__) in SpecifierSet(SUPPORTED_TRANSFORMERS)


@pytest.fixture(scope="module")
def old_transformers(tmp_path_factory) -> Path:
    """A folder holding transformers OLDEST only (its dependencies come from the venv)."""
    named = os.environ.get("SDELM_OLD_TRANSFORMERS")
    if named:
        folder = Path(named).resolve()
        if not (folder / "transformers" / "__init__.py").is_file():
            pytest.fail(
                f"SDELM_OLD_TRANSFORMERS={named} holds no transformers package; make it with "
                f"{sys.executable} -m pip install --no-deps --target {named} "
                f"transformers=={OLDEST}"
            )
        return folder
    folder = tmp_path_factory.mktemp("old-transformers")
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target"]
    result = subprocess.run(
        [*pip, str(folder), f"transformers=={OLDEST}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(
            f"SDELM_OLD_TRANSFORMERS is unset and pip could not install transformers=={OLDEST} "
            f"(no PyPI?): {result.stderr.strip()[-300:]}"
        )
    return folder


def test_recorded_states_equal_a_replay_under_the_oldest_version(old_transformers):
    versions = list(importlib.metadata.distributions(name="transformers", path=[old_transformers]))
    assert [d.version for d in versions] == [OLDEST], f"{old_transformers} holds {versions}"
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(old_transformers), str(ROOT)]),
    }
    result = subprocess.run(
        [sys.executable, "-c", REPLAY],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert f"transformers {OLDEST} from {old_transformers}" in result.stdout
    assert "llama takes its cache as past_key_values" in result.stdout
    assert "replay equal" in result.stdout


def test_the_installed_version_takes_the_cache_under_its_own_name(llama):
    expected = (
        "cache" if Version(transformers.__version__) >= Version("5.24") else "past_key_values"
    )
    assert cache_keyword(llama.model) == expected


def test_a_forward_pass_that_ignores_the_cache_is_refused(llama, monkeypatch):
    forward = llama.model.forward

    def forgetful(*args, cache=None, past_key_values=None, **kwargs):
        return forward(*args, **kwargs)

    monkeypatch.setattr(llama.model, "forward", forgetful)
    message = (
        rf"did not use the KV cache .* transformers {transformers.__version__} is installed; "
        rf"sdelm supports {SUPPORTED_TRANSFORMERS}"
    )
    with pytest.raises(LMLoadError, match=message):
        extract(llama, ["hello there"], max_new_tokens=3, progress=False)


def test_an_unsupported_version_is_refused_with_what_to_install(monkeypatch):
    monkeypatch.setattr(transformers, "__version__", "4.46.0")
    with pytest.raises(LMLoadError, match=r"supports transformers >=5\.18,<6, but 4\.46\.0"):
        check_transformers()
    with pytest.raises(LMLoadError, match=r"pip install 'transformers>=5\.18,<6'"):
        tiny_lm("llama")
    monkeypatch.setattr(transformers, "__version__", "5.30.0.dev0")  # a source install
    check_transformers()


def test_a_model_whose_signature_names_no_cache_gets_the_versions_keyword(monkeypatch):
    model = torch.nn.Linear(2, 2)
    monkeypatch.setattr(model, "forward", lambda *args, **kwargs: None)
    monkeypatch.setattr(transformers, "__version__", "5.20.0")
    assert cache_keyword(model) == "past_key_values"
    monkeypatch.setattr(transformers, "__version__", "5.24.0")
    assert cache_keyword(model) == "cache"
