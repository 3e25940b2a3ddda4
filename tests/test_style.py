"""The code is ruff clean (lint and format), as the style guide asks."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUFF = [sys.executable, "-m", "ruff"]
PATHS = ["sdelm", "tests", "benchmarks"]


def test_ruff_check_passes():
    result = subprocess.run([*RUFF, "check", *PATHS], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_ruff_format_is_applied():
    result = subprocess.run(
        [*RUFF, "format", "--check", *PATHS], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout


# --- The chapters' code cells --------------------------------------------------------------
# The book's chapters are notebooks: their code is linted cell by cell with the rules a reader
# would expect of the package, at the line length that fits a rendered page.
BOOK = ROOT / "book"
CHAPTERS = sorted(path for path in BOOK.glob("*.md") if "kernelspec:" in path.read_text())
CHAPTER_RULES = [
    "--line-length",
    "88",
    "--target-version",
    "py310",
    "--select",
    "E,F,W,B,UP,NPY,RUF",
    # E402: imports may follow the parameters cell. RUF001-3: the prose uses Greek letters.
    # B018 ("useless expression"): a cell whose last expression is a table displays it, as
    # notebooks do; ruff cannot tell that from a statement that does nothing.
    "--ignore",
    "E402,RUF001,RUF002,RUF003,B018",
]
MAX_CELL_LINES = 25


def _code_cells(chapter: Path) -> list[list[tuple[int, str]]]:
    """The code cells of a chapter, each as its numbered lines, without IPython magics or
    shell lines (a line number counts from 1 within the cell, magics included)."""
    import jupytext

    return [
        [
            (number, line)
            for number, line in enumerate(cell.source.splitlines(), start=1)
            if not line.lstrip().startswith(("%", "!"))
        ]
        for cell in jupytext.read(chapter).cells
        if cell.cell_type == "code"
    ]


def _where(chapter: Path, cell: int, cells: list[list[tuple[int, str]]]) -> str:
    first = next((line for _, line in cells[cell] if line.strip()), "")
    return f"{chapter.relative_to(ROOT)} code cell {cell + 1} ({first.strip()[:40]!r})"


def test_chapters_are_found():
    names = {chapter.stem for chapter in CHAPTERS}
    assert {"fitting", "drift_diffusion", "applications"} <= names, names


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda path: path.stem)
def test_chapter_code_cells_pass_ruff(chapter, tmp_path):
    cells = _code_cells(chapter)
    lines, origin = [], {}  # origin: line of the script -> (cell, line within the cell)
    for number, cell in enumerate(cells):
        lines.append("# %%")
        origin[len(lines)] = (number, 0)
        for within, line in cell:
            lines.append(line)
            origin[len(lines)] = (number, within)
    script = tmp_path / f"{chapter.stem}.py"
    script.write_text("\n".join(lines) + "\n")
    result = subprocess.run(
        [*RUFF, "check", "--isolated", *CHAPTER_RULES, "--output-format", "json", str(script)],
        capture_output=True,
        text=True,
    )
    assert result.returncode in (0, 1), result.stderr
    problems = []
    for finding in json.loads(result.stdout or "[]"):
        row = finding["location"]["row"]
        cell, within = origin.get(row, (len(cells) - 1, row))
        problems.append(
            f"{_where(chapter, cell, cells)} line {within}: {finding['code']} {finding['message']}"
        )
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda path: path.stem)
def test_chapter_code_cells_are_short(chapter):
    cells = _code_cells(chapter)
    long = [
        f"{_where(chapter, number, cells)} has {len(cell)} lines (at most {MAX_CELL_LINES}):"
        " move the computation into sdelm and call it"
        for number, cell in enumerate(cells)
        if len(cell) > MAX_CELL_LINES
    ]
    assert not long, "\n".join(long)


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda path: path.stem)
def test_papermill_reads_every_parameter_of_a_chapter(chapter, tmp_path):
    # A parameter papermill cannot parse (e.g. a comment holding "=") draws "Passed unknown
    # parameter" when a student overrides it.
    import jupytext
    import papermill

    from sdelm.book.chapter import parameter_defaults

    declared = parameter_defaults(chapter)
    notebook = tmp_path / f"{chapter.stem}.ipynb"
    jupytext.write(jupytext.read(chapter), notebook)
    assert set(declared) <= set(papermill.inspect_notebook(str(notebook)))


# --- A chapter reads as a lecture ----------------------------------------------------------
# Every visible code cell follows a sentence that says what it does and why (a hidden cell holds
# only claim assertions or figure styling, so it needs none), and the imports are shown.
MIN_INTRODUCED = 0.9
NOT_PROSE = ("```", ":::", "$$", "#", "|", "- ", "* ", "+ ", ">", "<", "!")


def _hidden(cell) -> bool:
    return "remove-cell" in cell.metadata.get("tags", [])


def _ends_with_a_sentence(markdown: str) -> bool:
    """Whether the last paragraph of a markdown cell is prose: not a heading, directive, list,
    table, label or equation, and ending as a sentence does."""
    last = markdown.strip().split("\n\n")[-1].strip()
    if last.startswith(NOT_PROSE) or re.fullmatch(r"\(\S+\)=", last):
        return False
    return len(last.split()) >= 5 and re.search(r"[.:?][)*_`'\"]*$", last) is not None


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda path: path.stem)
def test_chapter_code_cells_follow_a_sentence(chapter):
    import jupytext

    cells = jupytext.read(chapter).cells
    code = [i for i, cell in enumerate(cells) if cell.cell_type == "code"]
    visible = [i for i in code if not _hidden(cells[i])]
    bare = [
        f"{chapter.relative_to(ROOT)} code cell {code.index(i) + 1} "
        f"({cells[i].source.strip().splitlines()[0][:40]!r})"
        for i in visible
        if not (
            i > 0
            and cells[i - 1].cell_type == "markdown"
            and _ends_with_a_sentence(cells[i - 1].source)
        )
    ]
    introduced = len(visible) - len(bare)
    assert introduced >= MIN_INTRODUCED * len(visible), (
        f"{introduced} of {len(visible)} visible code cells follow a sentence; without one:\n"
        + "\n".join(bare)
    )


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda path: path.stem)
def test_chapter_shows_its_imports(chapter):
    import jupytext

    imports = [
        cell
        for cell in jupytext.read(chapter).cells
        if cell.cell_type == "code" and re.search(r"^import sdelm$", cell.source, re.M)
    ]
    assert imports, f"{chapter.name} has no cell with `import sdelm`"
    assert not any(_hidden(cell) for cell in imports), f"{chapter.name} hides its imports"
