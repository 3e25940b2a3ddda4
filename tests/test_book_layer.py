"""The book layer: claims as measured effects, chapters that read their defaults, the ledger."""

from __future__ import annotations

import functools
import json

import pytest
import torch

from sdelm import numerics
from sdelm.book import Chapter, ChapterError, ClaimFailedError, Claims, ledger
from sdelm.book.chapter import chapter_names, parameter_defaults, record_path
from tests.conftest import chapter_source


def measured(estimate: float, low: float, high: float, p: float) -> dict[str, float]:
    return {"estimate": estimate, "low": low, "high": high, "p_value": p, "n_clusters": 24}


def test_effect_verdicts_read_holm_adjusted_p_values():
    claims = Claims(enforce=True)
    claims.effect("a", measured(0.7, 0.6, 0.8, 0.001), what="ρ", expected="greater",
                  found="as expected")  # fmt: skip
    claims.effect("b", measured(-0.2, -0.3, -0.1, 0.005), what="gap", expected="greater",
                  found="opposite")  # fmt: skip
    # Alone, p = 0.03 < 0.05; Holm over four tests makes it 0.06: inconclusive.
    claims.effect("c", measured(0.1, 0.01, 0.2, 0.03), what="slope", expected="greater",
                  found="inconclusive")  # fmt: skip
    claims.effect("d", measured(-0.1, -0.2, -0.01, 0.04), what="slope", expected="less",
                  found="inconclusive")  # fmt: skip
    table = claims.table().set_index("name")
    assert table["p_holm"].tolist() == pytest.approx([0.004, 0.015, 0.06, 0.06])
    assert table["verdict"].tolist() == ["as expected", "opposite", *["inconclusive"] * 2]
    assert table["holds"].all()
    assert "0.7 [0.6, 0.8] against 0 (24 prompts, Holm p = 0.004)" in table.loc["a", "statement"]
    assert "Not yet checked across seeds and kernels" in table.loc["a", "statement"]
    assert claims.verify() == (
        "4 claims: 0 robust (asserted), 0 fragile, 4 unchecked; 0 changed; enforced."
    )


def robustness_record(chapter: str, claims: dict[str, tuple[str, list[str]]]) -> dict:
    """A robustness record: claim name -> (its ``what``, the verdicts of runs 0, 1, …)."""
    runs = max(len(verdicts) for _, verdicts in claims.values())
    return {
        "runs": {
            f"run {i}": {"seed": i, "kernels": "AVX2/AVX2", "processor": "CPU"}
            for i in range(runs)
        },
        "claims": [
            {"chapter": chapter, "name": name, "what": what, "expected": "greater", "null": 0.0,
             "verdicts": {f"run {i}": v for i, v in enumerate(verdicts)}, "estimates": {}}
            for name, (what, verdicts) in claims.items()
        ],
    }  # fmt: skip


def test_only_a_robust_verdict_is_asserted_and_only_its_change_fails():
    record = robustness_record(
        "ch",
        {
            "robust": ("ρ", ["as expected"] * 3),
            "weakened": ("ρ", ["as expected"] * 3),
            "fragile": ("ρ", ["opposite", "inconclusive", "opposite"]),
            "renamed": ("another ρ", ["as expected"] * 3),
        },
    )
    for enforce in (True, False):
        claims = Claims(enforce=enforce, chapter="ch", record=record)
        claims.effect("robust", measured(-0.5, -0.6, -0.4, 0.001), what="ρ",
                      expected="greater", found="as expected")  # fmt: skip
        claims.effect("weakened", measured(0.01, -0.1, 0.1, 0.8), what="ρ",
                      expected="greater", found="as expected")  # fmt: skip
        claims.effect("fragile", measured(0.5, 0.4, 0.6, 0.001), what="ρ",
                      expected="greater", found="opposite")  # fmt: skip
        claims.effect("renamed", measured(-0.5, -0.6, -0.4, 0.001), what="ρ",
                      expected="greater", found="as expected")  # fmt: skip
        table = claims.table().set_index("name")
        assert table["robustness"].tolist() == ["robust", "robust", "fragile", "unchecked"]
        # The robust verdicts that changed fail: one reversed (as expected -> opposite), one
        # weakened to inconclusive (the prose about it would be false). A fragile one is shown
        # with its spread.
        assert table["holds"].tolist() == [False, False, True, True]
        assert "departs from the verdict of all 3 runs" in table.loc["weakened", "statement"]
        assert table.loc["fragile", "checked"] == (
            "opposite at seeds 0, 2 (AVX2/AVX2, CPU); inconclusive at seed 1 (AVX2/AVX2, CPU)"
        )
        assert "Fragile, not asserted: opposite at seeds 0, 2" in table.loc["fragile", "statement"]
        if enforce:
            match = r"2 robust verdict\(s\) changed on this run \(1 reversed, 1 to or from"
            with pytest.raises(ClaimFailedError, match=match) as failed:
                claims.verify()
            assert "- robust:" in str(failed.value) and "- weakened:" in str(failed.value)
            assert "- fragile" not in str(failed.value)
        else:
            assert claims.verify().endswith("2 changed; not enforced (parameters differ "
                                            "from defaults).")  # fmt: skip


def test_prose_follows_the_computed_verdict():
    record = robustness_record("ch", {"a": ("ρ", ["opposite", "inconclusive"])})
    claims = Claims(enforce=True, chapter="ch", record=record)
    claims.effect("a", measured(-0.5, -0.6, -0.4, 0.001), what="ρ", expected="greater",
                  found="opposite")  # fmt: skip
    claims.effect("b", measured(0.01, -0.1, 0.1, 0.8), what="ρ", expected="greater",
                  found="inconclusive")  # fmt: skip
    says = {"as_expected": "Up.", "opposite": "Down.", "inconclusive": "Flat."}
    assert claims.phrase("a", **says) == (
        "Down. (fragile: opposite at seed 0 (AVX2/AVX2, CPU); inconclusive at seed 1 "
        "(AVX2/AVX2, CPU))"
    )
    assert claims.phrase("b", **says) == "Flat."
    with pytest.raises(ValueError, match="one sentence per verdict"):
        claims.phrase("a", opposite="Down.")
    with pytest.raises(KeyError, match="No claim named 'c'"):
        claims.phrase("c", **says)


def test_a_robust_claim_declared_with_another_verdict_fails():
    record = robustness_record("ch", {"a": ("ρ", ["inconclusive"] * 2)})
    claims = Claims(enforce=True, chapter="ch", record=record)
    claims.effect("a", measured(0.01, -0.1, 0.1, 0.8), what="ρ", expected="greater",
                  found="as expected")  # fmt: skip
    with pytest.raises(ClaimFailedError, match="the chapter says 'as expected', the record"):
        claims.verify()


def test_effects_refuse_bad_input():
    claims = Claims(enforce=True)
    with pytest.raises(ValueError, match="expected must be"):
        claims.effect("a", measured(1, 0, 2, 0.1), what="x", expected="up", found="as expected")
    with pytest.raises(ValueError, match="found must be"):
        claims.effect("a", measured(1, 0, 2, 0.1), what="x", expected="less", found="holds")
    with pytest.raises(ValueError, match="lacks"):
        claims.effect("a", {"estimate": 1.0}, what="x", expected="less", found="opposite")
    with pytest.raises(ValueError, match="not finite"):
        claims.effect("a", measured(float("nan"), 0, 2, 0.1), what="x", expected="less",
                      found="opposite")  # fmt: skip
    claims.effect("a", measured(1, 0, 2, 0.1), what="x", expected="less", found="inconclusive")
    with pytest.raises(ValueError, match="already recorded"):
        claims.effect("a", measured(1, 0, 2, 0.1), what="x", expected="less", found="opposite")


MINI = chapter_source(
    "Mini",
    'n = 3\ntemperatures = [0.5, 1.0]\ndevice = "auto"\nlabel = str(n)\n',
    "import sdelm\n"
    'chapter = sdelm.book.Chapter.open("mini", globals())\n'
    'chapter.claims.effect("size", {"estimate": n, "low": n - 1, "high": n + 1, '
    '"p_value": 0.001}, what="n", expected="greater", found="as expected")\n'
    "print(chapter.finish())\n",
)


@pytest.fixture
def mini_book(tmp_path, monkeypatch):
    monkeypatch.setenv("SDELM_CACHE", str(tmp_path / "cache"))
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "mini.md").write_text(MINI)
    (tmp_path / "book" / "notes.md").write_text("# Notes\n")
    (tmp_path / "_toc.yml").write_text(
        "format: jb-book\nroot: book/notes\nchapters:\n  - file: book/mini\n"
    )
    return tmp_path


def test_defaults_come_from_the_parameters_cell(mini_book):
    defaults = parameter_defaults(mini_book / "book" / "mini.md")
    assert list(defaults) == ["n", "temperatures", "device", "label"]
    assert defaults["temperatures"] == [0.5, 1.0]
    namespace = {"n": 3, "temperatures": (0.5, 1.0), "device": "cuda", "label": "x"}
    # A tuple equals its list, where the chapter runs does not count, nor a computed default.
    assert Chapter.open("mini", namespace, root=mini_book).claims.enforce
    other = Chapter.open("mini", {**namespace, "n": 4}, root=mini_book)
    assert not other.claims.enforce and other.parameters["n"] == 4
    with pytest.raises(ChapterError, match=r"\['label'\]"):
        Chapter.open("mini", {"n": 3, "temperatures": [0.5, 1.0], "device": "x"}, root=mini_book)
    assert chapter_names(mini_book) == ["mini"]


def test_a_chapter_without_its_source_computes_but_does_not_enforce(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    chapter = Chapter.open("nowhere", {}, root=None)
    assert chapter.source is None and not chapter.claims.enforce


def test_finish_records_the_defaults_for_the_ledger_and_other_runs_apart(mini_book):
    chapter = Chapter.open("mini", {"n": 3, "temperatures": [0.5, 1.0], "device": "auto",
                                    "label": "3"}, root=mini_book)  # fmt: skip
    chapter.claims.effect("c", measured(1, 0, 2, 0.1), what="x", expected="less",
                          found="inconclusive")  # fmt: skip
    chapter.finish()
    record = json.loads(record_path("mini").read_text())
    assert [c["name"] for c in record["claims"]] == ["c"]
    record_path("mini").unlink()
    relaxed = Chapter.open("mini", {"n": 4, "temperatures": [1.0], "device": "auto",
                                    "label": "4"}, root=mini_book)  # fmt: skip
    relaxed.finish()
    assert not record_path("mini").exists()
    # A run at other parameters is recorded apart, with the parameters that differ.
    run = json.loads(record_path("mini", {"n": 4, "temperatures": [1.0]}).read_text())
    assert run["parameters"] == {"n": 4, "temperatures": [1.0]}
    assert record_path("mini", {"n": 4}) != record_path("mini", {"n": 5})


def test_the_ledger_executes_a_chapter_without_a_current_record(mini_book, monkeypatch):
    table = ledger(mini_book)
    assert table[["chapter", "name", "verdict"]].values.tolist() == [
        ["mini", "size", "as expected"]
    ]
    assert table.loc[0, "estimate"] == 3
    # Served from the record while the chapter source is unchanged...
    assert ledger(mini_book, execute_missing=False).equals(table)
    # ...but not to other CPU kernels, whose numbers may differ...
    with monkeypatch.context() as patched:
        patched.setattr(numerics, "kernels", lambda: "AVX512/AUTO")
        with pytest.raises(ChapterError, match="sdelm chapter mini"):
            ledger(mini_book, execute_missing=False)
    # ...and recomputed, never served, once it changes.
    source = mini_book / "book" / "mini.md"
    source.write_text(MINI.replace("n = 3", "n = 5"))
    with pytest.raises(ChapterError, match="sdelm chapter mini"):
        ledger(mini_book, execute_missing=False)
    assert ledger(mini_book).loc[0, "estimate"] == 5


def test_setup_passes_the_chapters_parameters_and_fits_on_its_prepared_data(monkeypatch):
    import sdelm
    from sdelm import synthetic

    trajs = synthetic.as_trajectories(synthetic.ou_paths(n=40, steps=12), dt=1.0, per_prompt=2)
    calls = {}

    @functools.wraps(sdelm.collect_trajectories)  # the real signature, for setup to read
    def collect(**kwargs):
        calls["collect"] = kwargs
        return trajs

    def fit(model, data, **kwargs):
        calls["fit"] = (model, data, kwargs)
        return model

    monkeypatch.setattr("sdelm.collect.collect_trajectories", collect)
    monkeypatch.setattr("sdelm.cache.cached_fit", fit)
    namespace = {"model": "tiny", "n_prompts": 20, "temperatures": [1.0], "dim": 2,
                 "seed": 3, "device": "cpu", "common": {"n_prompts": 99},
                 "control": sdelm.control}  # a module named like an argument  # fmt: skip
    chapter = Chapter.open("no-such-chapter", namespace)
    assert chapter.trajectories() is trajs
    got, data, neural = chapter.setup()
    assert got is trajs
    # Only collect_trajectories' own arguments are passed on, with the chapter's values.
    assert calls["collect"] == {"model": "tiny", "n_prompts": 20, "temperatures": [1.0],
                                "seed": 3, "device": "cpu"}  # fmt: skip
    expected = sdelm.prepare(trajs.where(source="generated"), dim=2, seed=3)
    assert torch.equal(data.train.states, expected.train.states)
    model, fitted_on, fit_args = calls["fit"]
    assert neural is model and fitted_on is data
    assert isinstance(model, sdelm.NeuralSDE) and model.time_scale == 13.0
    assert fit_args == {"seed": 3, "device": "cpu", "progress": False}
    _, all_rows, none = chapter.setup(source=None, split=(0.5, 0.25, 0.25), fit=False)
    assert none is None and all_rows.train.states.shape[0] == 20
    folds = chapter.folds(4)  # every prompt held out once, by the same fit as setup's
    held = [set(fold.test.rows["prompt_id"]) for fold in folds]
    assert sum(map(len, held)) == len(set().union(*held)) == 20
    assert chapter.refit(folds[1]) is calls["fit"][0] and calls["fit"][1] is folds[1]


SEEDED = chapter_source(
    "Seeded",
    "seed = 0\n",
    "import sdelm\n"
    'chapter = sdelm.book.Chapter.open("seeded", globals())\n'
    "shift = 5 - 4 * seed\n"
    'chapter.claims.effect("shift", {"estimate": shift, "low": shift - 1, "high": shift + 1, '
    '"p_value": 0.001}, what="shift", expected="greater", found="as expected")\n'
    "print(chapter.finish())\n",
)


def test_robustness_records_every_claim_at_every_seed(mini_book, monkeypatch):
    from sdelm.book import read_robustness, robustness

    (mini_book / "book" / "seeded.md").write_text(SEEDED)
    (mini_book / "_toc.yml").write_text(
        "format: jb-book\nroot: book/notes\nchapters:\n  - file: book/mini\n"
        "  - file: book/seeded\n"
    )
    record = robustness.measure([0, 1, 2], ["avx2"], jobs=1, root=mini_book)  # mini: no seed
    assert record == read_robustness(mini_book)
    (entry,) = record["claims"]
    assert (entry["chapter"], entry["name"]) == ("seeded", "shift")
    assert list(entry["estimates"].values()) == [5, 1, -3]
    assert list(entry["verdicts"].values()) == ["as expected", "as expected", "opposite"]
    assert [run["seed"] for run in record["runs"].values()] == [0, 1, 2]
    # Fragile now: the chapter at its defaults shows the spread and asserts nothing.
    chapter = Chapter.open("seeded", {"seed": 0}, root=mini_book)
    chapter.claims.effect("shift", measured(-3, -4, -2, 0.001), what="shift",
                          expected="greater", found="as expected")  # fmt: skip
    assert chapter.claims.table()["robustness"].tolist() == ["fragile"]
    assert "0 changed" in chapter.finish()

    # Every run is recorded: asked again, nothing is executed.
    def fail(*args, **kwargs):
        raise AssertionError("executed again")

    monkeypatch.setattr(robustness, "execute_book", fail)
    assert robustness.measure([1, 2], ["avx2"], jobs=1, root=mini_book) == record
    with pytest.raises(ChapterError, match="no seed"):
        robustness.measure([1], ["avx2"], ["mini"], root=mini_book)


def test_a_chapter_that_reverses_a_robust_claim_is_reported_by_the_claim(mini_book):
    from sdelm.book.execution import ChaptersFailedError, execute_chapters
    from sdelm.files import write_json_atomically

    record = robustness_record("mini", {"size": ("n", ["opposite"] * 3)})
    write_json_atomically(record, mini_book / "book" / "robustness.json")
    source = mini_book / "book" / "mini.md"
    source.write_text(MINI.replace('found="as expected"', 'found="opposite"'))
    with pytest.raises(ChaptersFailedError) as failure:
        execute_chapters(["mini"], mini_book / "out", root=mini_book)
    message = str(failure.value)
    assert "mini: cell [" in message and "raised ClaimFailedError" in message
    assert "- size: N: 3 [2, 4]" in message and "Traceback" not in message
    assert "robust verdict(s) changed on this run (1 reversed" in message
    # The failed notebook is kept for the reader, and named; the run was recorded.
    kept = mini_book / "out" / "failed" / "mini.ipynb"
    assert f"notebook: {kept}" in message and "ClaimFailedError" in kept.read_text()
    assert failure.value.executed == {} and failure.value.failed == {"mini": kept}
    assert json.loads(record_path("mini").read_text())["claims"][0]["verdict"] == "as expected"
