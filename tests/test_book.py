"""Every chapter executes under papermill, passes nbval, and the book builds with figures.

Each chapter is executed from an empty trajectory cache (the model cache is shared) by
papermill, with its claims enforced. Two chapters (:data:`NBVAL`) are executed again by nbval,
from another empty cache, which compares every text output: the chapter that extracts the
book's standard data (generated and teacher-forced human text) and the cheapest one that fits
the neural SDE to it and simulates the fit. The two executions extract, fit and simulate
independently, so nbval checks that the same seed gives the same outputs on the real model. The
other ways of extracting and fitting are checked for bit-identical repetition on tiny models,
in less time: sampling (``tests/test_extract.py``), branching (``tests/test_branching.py``),
layer time (``tests/test_layer_time.py``) and the fitting chapter's model zoo, cross-validated
and compared over seeds (``tests/test_evaluate.py``). Each of the two runs has one cache
for all chapters, as a reader's machine does: what one chapter extracted or fitted, a later
chapter of the same run reuses. The HTML is built from the notebooks papermill executed, with
execution off: no chapter runs a third time.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
import papermill
import pytest
import yaml

from sdelm import cache_dir
from sdelm.book.build import LEDGER, execute_book

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted(p for p in (ROOT / "book").glob("*.md") if "kernelspec:" in p.read_text())
CHAPTERS = [c for c in CHAPTERS if c.stem != LEDGER] + [ROOT / "book" / f"{LEDGER}.md"]
pytestmark = pytest.mark.book


def fresh_cache(folder: Path) -> Path:
    """An empty sdelm cache that shares the (expensive to create) model copies."""
    folder.mkdir(parents=True, exist_ok=True)
    models = cache_dir() / "models"
    models.mkdir(parents=True, exist_ok=True)
    (folder / "models").symlink_to(models, target_is_directory=True)
    return folder


def execute(chapter: Path, out: Path, cache: Path, **parameters) -> nbformat.NotebookNode:
    notebook = out.with_suffix(".source.ipynb")
    nbformat.write(jupytext.read(chapter), notebook)
    previous = os.environ.get("SDELM_CACHE")
    os.environ["SDELM_CACHE"] = str(cache)
    try:
        papermill.execute_notebook(
            notebook,
            out,
            parameters=parameters,
            kernel_name="python3",
            cwd=str(chapter.parent),
            progress_bar=False,
        )
    finally:
        if previous is None:
            del os.environ["SDELM_CACHE"]
        else:
            os.environ["SDELM_CACHE"] = previous
    return nbformat.read(out, as_version=4)


def outputs_text(notebook: nbformat.NotebookNode) -> str:
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", ""))
            parts.extend(str(v) for k, v in output.get("data", {}).items() if k.startswith("text"))
    return "\n".join(parts)


@pytest.fixture(scope="module")
def papermill_cache(tmp_path_factory):
    return fresh_cache(tmp_path_factory.mktemp("cache-papermill"))


@pytest.fixture(scope="module")
def nbval_cache(tmp_path_factory):
    return fresh_cache(tmp_path_factory.mktemp("cache-nbval"))


@pytest.fixture(scope="module")
def executed(tmp_path_factory, papermill_cache):
    """Every chapter executed once, two at a time, then the ledger, which reads their records."""
    folder = tmp_path_factory.mktemp("executed")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SDELM_CACHE", str(papermill_cache))
        paths = execute_book(folder, [c.stem for c in CHAPTERS], jobs=2, root=ROOT)
    return {name: (nbformat.read(path, as_version=4), path) for name, path in paths.items()}


def test_there_are_chapters():
    assert {"trajectories", "sde_model", "fitting"} <= {c.stem for c in CHAPTERS}


@pytest.mark.parametrize("chapter", [c.stem for c in CHAPTERS])
def test_chapter_executes_and_enforces_its_claims(executed, chapter):
    notebook, _ = executed[chapter]
    text = outputs_text(notebook)
    assert "Traceback" not in text
    if chapter == LEDGER:  # the claims of every other chapter, read from their records
        assert all(other.stem in text for other in CHAPTERS if other.stem != LEDGER)
    else:
        summary = re.search(
            r"(\d+) claims: (\d+) robust \(asserted\), (\d+) fragile, (\d+) unchecked; "
            r"0 changed; enforced\.",
            text,
        )
        assert summary and int(summary.group(1)) > 0, "the default run must enforce its claims"
        assert summary.group(4) == "0", (
            f"{chapter} has claims that book/robustness.json lacks (or measured otherwise): "
            "remake it with `sdelm robustness`."
        )
    figures = sum(
        "image/png" in o.get("data", {}) for c in notebook.cells for o in c.get("outputs", [])
    )
    assert figures >= 2


def test_the_robustness_record_holds_this_machines_verdicts(executed, papermill_cache):
    # Where the record holds a run of this processor and these kernels at a chapter's default
    # seed, that run must be this one: the same verdict for every claim. A change of the
    # analysis that moves a verdict therefore fails here until the record is remade.
    from sdelm.book import read_robustness
    from sdelm.book.chapter import parameter_defaults
    from sdelm.book.record import processor
    from sdelm.numerics import kernels

    record = read_robustness(ROOT)
    here = {
        run["seed"]: label
        for label, run in record["runs"].items()
        if run["kernels"] == kernels() and run["processor"] == processor()
    }
    if not here:
        pytest.skip(f"book/robustness.json holds no run on {processor()} with {kernels()}")
    entries = {(e["chapter"], e["name"]): e for e in record["claims"]}
    differ, compared = [], 0
    for chapter in CHAPTERS:
        seed = parameter_defaults(chapter).get("seed")
        if chapter.stem == LEDGER or seed not in here:
            continue
        path = papermill_cache / "claims" / re.sub(r"[^a-z0-9]+", "-", kernels().lower())
        for claim in json.loads((path / f"{chapter.stem}.json").read_text())["claims"]:
            entry = entries.get((chapter.stem, claim["name"]), {})
            recorded = entry.get("verdicts", {}).get(here[seed])
            compared += 1
            if recorded != claim["verdict"]:
                differ.append(f"{chapter.stem} {claim['name']}: {claim['verdict']} ({recorded})")
    assert compared > 50
    assert not differ, "Verdicts other than the record's run on this machine:\n" + "\n".join(
        differ
    )


#: The chapters re-executed by nbval from a fresh cache: the determinism check of the book's
#: standard data (generation and teacher-forced Shakespeare on the real model), of a neural SDE
#: fitted to it and of its simulation. The other chapters are executed once, by papermill, with
#: their claims enforced; branching, layer time and the model zoo's fits repeat bit for bit in
#: the unit tests named in this module's text.
NBVAL = ["trajectories", "simulation"]


@pytest.mark.parametrize("chapter", NBVAL)
def test_chapter_passes_nbval_from_a_fresh_cache(executed, nbval_cache, chapter):
    _, path = executed[chapter]
    env = {**os.environ, "SDELM_CACHE": str(nbval_cache)}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--nbval",
            "--nbval-current-env",
            "-p",
            "no:cacheprovider",
            "--nbval-sanitize-with",
            str(ROOT / "tests" / "nbval_sanitize.cfg"),
            "-q",
            str(path),
        ],
        cwd=path.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


def test_trajectories_chapter_runs_with_other_parameters(tmp_path):
    notebook = execute(
        ROOT / "book" / "trajectories.md",
        tmp_path / "other.ipynb",
        fresh_cache(tmp_path / "cache"),
        temperatures=[1.0],
        n_prompts=4,
        samples_per_prompt=1,
        n_passages=3,
        max_new_tokens=12,
        layers=[0, 30],
    )
    text = outputs_text(notebook)
    assert "not enforced (parameters differ from defaults)" in text
    assert "Only one temperature was sampled" in text


def executed_book(executed: dict, folder: Path) -> Path:
    """A copy of the book whose chapters are the executed notebooks, set not to execute."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("_toc.yml", "references.bib"):
        shutil.copy(ROOT / name, folder / name)
    shutil.copytree(ROOT / "book", folder / "book")
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config["execute"]["execute_notebooks"] = "off"
    (folder / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    for stem, (_, notebook) in executed.items():
        (folder / "book" / f"{stem}.md").unlink()
        shutil.copy(notebook, folder / "book" / f"{stem}.ipynb")
    return folder


def test_book_builds_with_figures_and_no_warnings(executed, tmp_path):
    source = executed_book(executed, tmp_path / "source")
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "jupyter-book"),
            "build",
            str(source),
            "--warningiserror",
            "--keep-going",
            "--path-output",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    html = tmp_path / "_build" / "html" / "book"
    for chapter in CHAPTERS:
        page = (html / f"{chapter.stem}.html").read_text()
        assert page.count("<img") >= 2, chapter.stem
        assert "changed; enforced" not in page  # hidden checks stay hidden
        assert "solution" in page.lower()
    assert (
        "prf:theorem" in (html / "sde_model.html").read_text()
        or "theorem" in (html / "sde_model.html").read_text().lower()
    )
    assert "sdelm.fit" in (html / "api.html").read_text()
    references = (html / "references.html").read_text().lower()
    assert "lines of thought in large language models" in references and "risken" in references
    trajectories = (html / "trajectories.html").read_text()
    assert "mybinder.org" in trajectories and "colab.research.google.com" in trajectories
    assert "On a GPU" in trajectories
