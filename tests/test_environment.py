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
