"""The `sdelm` command line, driven as a user would: subprocesses, files, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import sdelm
from sdelm.book.build import stale_chapters
from tests.conftest import chapter_source

MINI_CHAPTER = chapter_source(
    "Mini", "x = 1\n", 'assert x < 100, "x is too large"\nprint("twice x is", 2 * x)\n'
)


def sdelm_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sdelm", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
        check=False,
    )


@pytest.fixture(scope="module")
def extracted(tiny_folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "trajs.safetensors"
    result = sdelm_cli(
        "extract", "--model", str(tiny_folder), "--out", str(out), "--n-prompts", "10",
        "--temperatures", "1.0", "--samples-per-prompt", "1", "--max-new-tokens", "6",
        "--n-passages", "2", "--device", "cpu", "--no-progress",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture
def mini_book(tmp_path) -> Path:
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "mini.md").write_text(MINI_CHAPTER)
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: book/mini\n")
    (tmp_path / "_config.yml").write_text(
        textwrap.dedent("""\
        title: mini
        execute:
          execute_notebooks: force
        """)
    )
    return tmp_path


@pytest.mark.parametrize(
    "command", ["", "extract", "fit", "simulate", "chapter", "book", "robustness"]
)
def test_every_command_has_help(command):
    result = sdelm_cli(*([command] if command else []), "--help")
    assert result.returncode == 0 and "usage: sdelm" in result.stdout


def test_version_is_the_installed_package_s():
    from importlib.metadata import version

    result = sdelm_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"sdelm {version('sdelm')}"


def test_no_command_or_an_unknown_option_is_bad_input():
    assert sdelm_cli().returncode == 2
    assert sdelm_cli("fit", "--no-such-option").returncode == 2


def test_extract_writes_loadable_trajectories(extracted, tiny_folder, tmp_path):
    trajs = sdelm.Trajectories.load(extracted)
    assert len(trajs) == 12 and set(trajs.rows["source"]) == {"generated", "human"}
    again = sdelm_cli("extract", "--model", str(tiny_folder), "--out", str(extracted))
    assert again.returncode == 2 and "--force" in again.stderr
    bad = sdelm_cli(
        "extract", "--model", str(tiny_folder), "--out", str(tmp_path / "x.safetensors"),
        "--temperatures", "-1",
    )  # fmt: skip
    assert bad.returncode == 2 and "> 0" in bad.stderr
    missing = sdelm_cli("extract", "--model", str(tmp_path / "nowhere"), "--out",
                        str(tmp_path / "y.safetensors"), "--device", "cpu")  # fmt: skip
    assert missing.returncode == 2 and "smollm2-135m-instruct" in missing.stderr
    assert not (tmp_path / "y.safetensors").exists()


def test_fit_then_simulate(extracted, tmp_path):
    checkpoint = tmp_path / "model.safetensors"
    result = sdelm_cli(
        "fit", str(extracted), "--out", str(checkpoint), "--dim", "4", "--epochs", "3",
        "--no-progress",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["dim"] == 4 and set(report["nll"]) == {"val", "test"}
    model = sdelm.load_checkpoint(checkpoint)
    assert isinstance(model, sdelm.NeuralSDE)
    assert sdelm.load_projection(checkpoint).components.shape == (4, 32)

    ou = tmp_path / "ou.safetensors"
    assert sdelm_cli("fit", str(extracted), "--out", str(ou), "--model", "ou",
                     "--dim", "4").returncode == 0  # fmt: skip
    var = tmp_path / "var.safetensors"
    assert sdelm_cli("fit", str(extracted), "--out", str(var), "--model", "var",
                     "--dim", "4").returncode == 0  # fmt: skip
    correlated = sdelm.load_checkpoint(var)
    assert isinstance(correlated, sdelm.models.linear.VectorAutoregression)
    result = sdelm_cli("simulate", str(var), "--out", str(tmp_path / "v.safetensors"),
                       "--steps", "3")  # fmt: skip
    assert result.returncode == 0, result.stderr
    milstein = sdelm_cli("simulate", str(var), "--out", str(tmp_path / "w.safetensors"),
                         "--steps", "3", "--method", "milstein")  # fmt: skip
    assert milstein.returncode == 2 and "correlated noise" in milstein.stderr

    paths = tmp_path / "paths.safetensors"
    result = sdelm_cli(
        "simulate", str(checkpoint), "--out", str(paths), "--steps", "5", "--n-paths", "3",
        "--start-from", str(extracted),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    from safetensors.torch import load_file

    simulated = load_file(paths)["paths"]
    assert simulated.shape == (12 * 3, 6, 4) and torch.isfinite(simulated).all()

    assert sdelm_cli("fit", str(tmp_path / "none.safetensors"), "--out",
                     str(tmp_path / "m.safetensors")).returncode == 2  # fmt: skip
    wrong = sdelm_cli("fit", str(extracted), "--out", str(tmp_path / "m.safetensors"),
                      "--dim", "999")  # fmt: skip
    assert wrong.returncode == 2 and "dim must be" in wrong.stderr
    method = sdelm_cli("simulate", str(checkpoint), "--out", str(tmp_path / "p.safetensors"),
                       "--method", "rk45")  # fmt: skip
    assert method.returncode == 2 and "invalid choice: 'rk45'" in method.stderr


def test_chapter_reexecutes_with_parameters(mini_book, tmp_path):
    out = tmp_path / "mini-out.ipynb"
    result = sdelm_cli("chapter", "mini", "-p", "x", "21", "--root", str(mini_book),
                       "--out", str(out), "--no-progress")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "twice x is 42" in out.read_text()
    unknown = sdelm_cli("chapter", "nope", "--root", str(mini_book))
    assert unknown.returncode == 2 and "mini" in unknown.stderr
    parameter = sdelm_cli("chapter", "mini", "-p", "y", "1", "--root", str(mini_book))
    assert parameter.returncode == 2 and "['x']" in parameter.stderr
    failing = sdelm_cli("chapter", "mini", "-p", "x", "1000", "--root", str(mini_book),
                        "--out", str(tmp_path / "fail.ipynb"), "--no-progress")  # fmt: skip
    assert failing.returncode == 1 and "too large" in failing.stderr


def test_book_builds_a_book(mini_book, tmp_path):
    result = sdelm_cli("book", "--root", str(mini_book), "--out", str(tmp_path / "site"))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert (tmp_path / "site" / "_build" / "html" / "book" / "mini.html").is_file()
    assert sdelm_cli("book", "--root", str(tmp_path / "empty")).returncode == 2


def test_book_executes_chapters_side_by_side_into_jupyter_books_cache(tmp_path):
    root = tmp_path / "src"
    (root / "book").mkdir(parents=True)
    for name in ("one", "two"):
        body = f'import os\nprint("{name} ran with", os.environ.get("OMP_NUM_THREADS"))\n'
        (root / "book" / f"{name}.md").write_text(chapter_source(name, "x = 1\n", body))
    (root / "_toc.yml").write_text(
        "format: jb-book\nroot: book/one\nchapters:\n  - file: book/two\n"
    )
    (root / "_config.yml").write_text("title: two\nexecute:\n  execute_notebooks: cache\n")
    site = tmp_path / "site"
    first = sdelm_cli("book", "--root", str(root), "--out", str(site), "--jobs", "2")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    # Executed by sdelm, one torch thread per chapter on this machine's cores split in two,
    # and served to Jupyter Book from its cache: the build itself executed nothing.
    threads = str(max(1, (os.cpu_count() or 1) // 2))
    for name in ("one", "two"):
        page = (site / "_build" / "html" / "book" / f"{name}.html").read_text()
        assert f"{name} ran with {threads}" in page
    assert "Executing notebook" not in first.stdout + first.stderr
    assert stale_chapters(root, site / "_build" / ".jupyter_cache") == []
    # A changed chapter is executed again; the other stays cached.
    source = root / "book" / "two.md"
    source.write_text(source.read_text().replace("x = 1", "x = 2"))
    assert stale_chapters(root, site / "_build" / ".jupyter_cache") == ["two"]


def test_a_failed_chapter_loses_nothing(tmp_path):
    root = tmp_path / "src"
    (root / "book").mkdir(parents=True)
    bodies = {"good": 'print("good ran")\n', "bad": 'raise RuntimeError("bad on purpose")\n'}
    for name, body in bodies.items():
        (root / "book" / f"{name}.md").write_text(chapter_source(name, "x = 1\n", body))
    (root / "_toc.yml").write_text(
        "format: jb-book\nroot: book/good\nchapters:\n  - file: book/bad\n"
    )
    (root / "_config.yml").write_text("title: two\nexecute:\n  execute_notebooks: cache\n")
    site = tmp_path / "site"
    result = sdelm_cli("book", "--root", str(root), "--out", str(site), "--jobs", "2")
    kept = site / "_build" / "failed" / "bad.ipynb"
    assert result.returncode == 1
    assert "bad: cell [" in result.stderr and f"notebook: {kept}" in result.stderr
    assert "bad on purpose" in kept.read_text()
    # A line as each chapter starts and ends; the chapter that ran is in Jupyter Book's cache,
    # so the next build executes only the failed one.
    assert "sdelm: good started" in result.stdout and "sdelm: bad FAILED after" in result.stdout
    assert "sdelm: good done in" in result.stdout
    assert stale_chapters(root, site / "_build" / ".jupyter_cache") == ["bad"]


def test_sharded_extract_resumes_and_loads_as_one_set(tiny_folder, tmp_path):
    args = ["extract", "--model", str(tiny_folder), "--out", str(tmp_path / "shards"),
            "--n-prompts", "5", "--temperatures", "1.0", "--max-new-tokens", "4",
            "--shard-size", "2", "--n-passages", "0", "--no-progress"]  # fmt: skip
    first = sdelm_cli(*args)
    assert first.returncode == 0 and "wrote 3 shard(s)" in first.stdout, first.stderr
    assert "wrote 0 shard(s)" in sdelm_cli(*args).stdout
    assert len(sdelm.Trajectories.load(tmp_path / "shards")) == 10
    truncated = tmp_path / "shards" / "shard-00001.safetensors"
    truncated.write_bytes(truncated.read_bytes()[:-10])
    again = sdelm_cli(*args)
    assert again.returncode == 0 and "wrote 1 shard(s)" in again.stdout, again.stderr
    assert len(sdelm.Trajectories.load(tmp_path / "shards")) == 10
    human = sdelm_cli(*args[:-3], "--no-progress")
    assert human.returncode == 2 and "--n-passages 0" in human.stderr
