"""Scientific claims that a chapter computes, shows, and asserts for its default parameters.

A claim is a **measured effect**: an estimate, an interval that resamples the right unit
(prompts, passages), a null value and the direction expected before looking
(:meth:`Claims.effect`). Within a chapter the p-values are Holm-adjusted together, and the
verdict reads the adjusted p: ``"as expected"`` or ``"opposite"`` (adjusted p < :data:`ALPHA`,
by the side of the null the estimate lies on), else ``"inconclusive"``. Every sentence is built
from the computed verdict.

A verdict is **asserted** only where it is robust: where the robustness record
(:mod:`sdelm.book.record`) holds one verdict for the claim in every run it was checked on
(extraction seeds, CPU kernels, processors). :meth:`Claims.verify`, in a hidden cell, then fails
the build at the defaults when a run changes it, and says so plainly: a reversal (as expected ↔
opposite) is a finding in its own right, and a robust verdict that turns inconclusive (or an
inconclusive one decisive) would make the chapter's prose about it false on that machine. A
fragile claim (its verdict differs between runs) is shown with its spread and asserted nothing;
so is an unchecked one. A reader who re-executes with other
parameters gets the computed sentences and never an AssertionError.

A property that always holds (a bound, a solver against its own ODE) is not a claim: it is a
test, or a demonstration in a chapter's text.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd

from sdelm.book.record import UNCHECKED, claim_robustness
from sdelm.stats import holm

if TYPE_CHECKING:  # IPython is a book dependency: imported where a chapter shows the report
    from IPython.display import Markdown

__all__ = ["ALPHA", "VERDICTS", "ClaimFailedError", "Claims", "slug"]

#: Family-wise error rate of a chapter's effects (after Holm adjustment).
ALPHA = 0.05
#: The verdicts an effect can get.
VERDICTS = ("as expected", "opposite", "inconclusive")


def slug(text: str) -> str:
    """Turn free text into a claim name, e.g. ``"OU / VAR(1)"`` → ``"ou-var-1"``.

    Lower case; every run of other characters than letters and digits becomes one hyphen.
    """
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


_COLUMNS = [
    "name",
    "what",
    "estimate",
    "low",
    "high",
    "null",
    "expected",
    "n_clusters",
    "unit",
    "p_value",
    "p_holm",
    "verdict",
    "found",
    "robustness",
    "robust_verdict",
    "checked",
    "holds",
    "statement",
]


class ClaimFailedError(AssertionError):
    """A robust claim made for the book's default parameters reversed."""


#: The decisive verdicts, each the reversal of the other.
_REVERSED = {"as expected": "opposite", "opposite": "as expected"}


def _verdict(estimate: float, null: float, expected: str, p_holm: float) -> str:
    if not p_holm < ALPHA:
        return "inconclusive"
    above = estimate > null
    return "as expected" if above == (expected == "greater") else "opposite"


@dataclass
class Claims:
    """The claims of one chapter run.

    Attributes:
        enforce: Whether :meth:`verify` fails on a robust claim whose verdict changed (true exactly
            when the chapter runs with its default parameters).
        results: One dict per recorded claim, in the order recorded.
        chapter: The chapter's name, under which the robustness record lists its claims.
        record: The robustness record (:func:`sdelm.book.record.read_robustness`); none:
            every claim is unchecked.

    """

    enforce: bool
    results: list[dict[str, Any]] = field(default_factory=list)
    chapter: str = ""
    record: Mapping[str, Any] | None = None

    @classmethod
    def for_parameters(
        cls,
        params: dict[str, Any],
        defaults: dict[str, Any],
        *,
        chapter: str = "",
        record: Mapping[str, Any] | None = None,
    ) -> Claims:
        """Enforce the claims exactly when ``params`` equal the chapter's ``defaults``."""
        normalise = {key: list(v) if isinstance(v, tuple) else v for key, v in params.items()}
        expected = {key: list(v) if isinstance(v, tuple) else v for key, v in defaults.items()}
        return cls(enforce=normalise == expected, chapter=chapter, record=record)

    def _add(self, name: str, **row: Any) -> None:
        if any(r["name"] == name for r in self.results):
            raise ValueError(f"A claim named {name!r} was already recorded in this chapter.")
        self.results.append({"name": name, **row})

    def effect(
        self,
        name: str,
        measured: Mapping[str, float],
        *,
        what: str,
        expected: Literal["greater", "less"],
        found: Literal["as expected", "opposite", "inconclusive"],
        null: float = 0.0,
        unit: str = "prompts",
    ) -> None:
        """Record a measured effect; its verdict is read after Holm adjustment.

        Args:
            name: Short, neutral identifier of what is measured, e.g.
                ``"noise-vs-entropy"`` (never the hoped-for outcome).
            measured: ``estimate``, ``low``, ``high`` (the interval), ``p_value`` (two-sided,
                against ``null``) and ``n_clusters``, as :func:`sdelm.stats.cluster_bootstrap`
                returns them.
            what: The quantity in words, e.g. ``"Spearman ρ of tr σσᵀ and entropy"``.
            expected: The side of ``null`` the effect was expected on, fixed before looking.
            found: The verdict found at the chapter's default parameters. Where the claim is
                robust, it must be the robustness record's verdict.
            null: The value of no effect.
            unit: What the interval resamples (``"prompts"``, ``"passages"``).

        Raises:
            ValueError: On an unknown ``expected`` or ``found``, a missing field, or a
                non-finite estimate.

        """
        if expected not in ("greater", "less"):
            raise ValueError(f"expected must be 'greater' or 'less', got {expected!r}.")
        if found not in VERDICTS:
            raise ValueError(f"found must be one of {VERDICTS}, got {found!r}.")
        missing = [k for k in ("estimate", "low", "high", "p_value") if k not in measured]
        if missing:
            raise ValueError(f"measured lacks {missing}; give cluster_bootstrap's result.")
        values = {k: float(measured[k]) for k in ("estimate", "low", "high", "p_value")}
        if not math.isfinite(values["estimate"]):
            raise ValueError(f"The estimate of {name!r} is not finite: {values['estimate']}.")
        self._add(
            name,
            what=what,
            null=float(null),
            expected=expected,
            found=found,
            unit=unit,
            n_clusters=int(measured.get("n_clusters", 0)),
            **values,
        )

    def table(self) -> pd.DataFrame:
        """Return every claim, one row each, with its Holm-adjusted p and verdict.

        Returns:
            Columns ``name``, ``what``, ``estimate``, ``low``, ``high``, ``null``,
            ``expected``, ``n_clusters``, ``unit``, ``p_value``, ``p_holm``, ``verdict``,
            ``found``, ``robustness`` (robust, fragile or unchecked), ``robust_verdict``
            (None unless robust), ``checked`` (the verdicts by run, in words), ``holds``
            (false only where a robust verdict changed) and ``statement``.

        """
        rows = [dict(r) for r in self.results]
        judged = (
            claim_robustness(self.chapter, rows, self.record) if self.record is not None else {}
        )
        if rows:
            for row, adjusted in zip(rows, holm([r["p_value"] for r in rows]), strict=True):
                row["p_holm"] = float(adjusted)
                row["verdict"] = _verdict(row["estimate"], row["null"], row["expected"], adjusted)
                robust = judged.get(row["name"], UNCHECKED)
                row["robustness"] = robust.status
                row["robust_verdict"] = robust.verdict
                row["checked"] = robust.spread
                row["holds"] = robust.status != "robust" or row["verdict"] == robust.verdict
                row["statement"] = self._sentence(row) + self._robustness_sentence(row, robust)
        return pd.DataFrame(rows, columns=_COLUMNS)

    @staticmethod
    def _robustness_sentence(row: Mapping[str, Any], robust: Any) -> str:
        if robust.status == "unchecked":
            return " Not yet checked across seeds and kernels: not asserted."
        if robust.status == "fragile":
            return f" Fragile, not asserted: {robust.spread}."
        if row["verdict"] == robust.verdict:
            return f" Robust: {robust.verdict} in all {robust.runs} runs checked."
        return (
            f" This run departs from the verdict of all {robust.runs} runs checked "
            f"({robust.verdict})."
        )

    @staticmethod
    def _sentence(row: Mapping[str, Any]) -> str:
        side = "above" if row["expected"] == "greater" else "below"
        what = row["what"]
        if what[:1].isascii():  # "Spearman ρ ...", but "λ of ..." keeps its lower case
            what = what[:1].upper() + what[1:]
        return (
            f"{what}: {row['estimate']:.3g} "
            f"[{row['low']:.3g}, {row['high']:.3g}] against {row['null']:g} "
            f"({row['n_clusters']} {row['unit']}, Holm p = {row['p_holm']:.2g}) — "
            f"{row['verdict']} (expected {side} {row['null']:g})."
        )

    def phrase(self, name: str, **by_verdict: str) -> str:
        """Return the sentence that the computed verdict of claim ``name`` calls for.

        For a chapter's prose about a claim whose verdict may differ where the book executes
        (a fragile one): the text follows the verdict, and says when it is fragile.

        Args:
            name: A recorded claim.
            **by_verdict: The sentence for each verdict: ``as_expected``, ``opposite`` and
                ``inconclusive`` (all three).

        Returns:
            The sentence for the computed verdict; for a fragile claim followed by
            ``" (fragile: …)"`` with the verdicts of the runs checked.

        Raises:
            KeyError: On a name that was not recorded.
            ValueError: Unless exactly the three verdicts are given.

        """
        keys = {verdict.replace(" ", "_") for verdict in VERDICTS}
        if set(by_verdict) != keys:
            raise ValueError(f"Give one sentence per verdict: {sorted(keys)}.")
        table = self.table().set_index("name")
        if name not in table.index:
            raise KeyError(f"No claim named {name!r}; recorded: {list(table.index)}.")
        row = table.loc[name]
        text = by_verdict[row["verdict"].replace(" ", "_")]
        return text + (f" (fragile: {row['checked']})" if row["robustness"] == "fragile" else "")

    def report(self, names: Sequence[str] | None = None) -> Markdown:
        """Return the statements as a Markdown list, for the reader.

        Args:
            names: Only these claims, in this order; default all, in the order recorded.

        Raises:
            KeyError: On a name that was not recorded.
            ModuleNotFoundError: If IPython is not installed (it comes with the book extra).

        """
        try:
            from IPython.display import Markdown
        except ModuleNotFoundError as error:
            raise ModuleNotFoundError(
                "Claims.report() returns IPython Markdown for a notebook, and IPython is not "
                "installed: pip install 'sdelm[book]' (or pip install ipython); "
                "Claims.table() gives the same statements as a DataFrame without it."
            ) from error
        table = self.table().set_index("name", drop=False)
        unknown = [n for n in names or [] if n not in table.index]
        if unknown:
            raise KeyError(f"No claims named {unknown}; recorded: {list(table.index)}.")
        chosen = table if names is None else table.loc[list(names)]
        return Markdown("\n".join(f"- {s}" for s in chosen["statement"]))

    def verify(self) -> str:
        """Fail if a claim does not hold while enforced; otherwise say what was checked.

        Returns:
            A one-line summary.

        Raises:
            ClaimFailedError: Listing the claims that do not hold, when enforced.

        """
        table = self.table()
        robust = table[table["robustness"] == "robust"]
        failed = robust[~robust["holds"].astype(bool)]
        declared = robust[robust["found"] != robust["robust_verdict"]]
        if self.enforce and len(declared):
            lines = "\n".join(
                f"- {r.name}: the chapter says {r.found!r}, the record {r.robust_verdict!r} "
                f"({r.checked})"
                for r in declared.itertuples()
            )
            raise ClaimFailedError(
                f"{len(declared)} claim(s) of {self.chapter or 'this chapter'} are declared "
                f"with another verdict than the robustness record holds; correct `found`, or "
                f"remake the record with `sdelm robustness`:\n{lines}"
            )
        if self.enforce and len(failed):
            lines = "\n".join(
                f"- {r.name}: {r.statement} (robust so far: {r.checked})"
                for r in failed.itertuples()
            )
            decisive = {"as expected", "opposite"}
            reversed_ = sum({r.verdict, r.robust_verdict} == decisive for r in failed.itertuples())
            raise ClaimFailedError(
                f"{len(failed)} robust verdict(s) changed on this run ({reversed_} reversed, "
                f"{len(failed) - reversed_} to or from inconclusive). Each held at every seed "
                f"and on every kernel checked; a reversal is a finding in its own right. Add "
                f"this run to the record (`sdelm robustness`) to show the claim as fragile, or "
                f"look for the change of code that moved it:\n{lines}"
            )
        mode = "enforced" if self.enforce else "not enforced (parameters differ from defaults)"
        counts = table["robustness"].value_counts()
        return (
            f"{len(table)} claims: {counts.get('robust', 0)} robust (asserted), "
            f"{counts.get('fragile', 0)} fragile, {counts.get('unchecked', 0)} unchecked; "
            f"{len(failed)} changed; {mode}."
        )
