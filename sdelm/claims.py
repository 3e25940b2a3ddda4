"""Scientific claims that a chapter computes, shows, and asserts for its default parameters.

A chapter records each claim with :meth:`Claims.check`: whether it holds and the sentence that
says what the data show (computed either way). :meth:`Claims.report` shows the sentences to the
reader; :meth:`Claims.verify`, in a hidden cell, fails the build when a claim made for the book's
default parameters stops holding. A reader who re-executes with other parameters gets the
computed sentences and never an AssertionError.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:  # IPython is a book dependency: imported where a chapter shows the report
    from IPython.display import Markdown

__all__ = ["ClaimFailedError", "Claims"]


class ClaimFailedError(AssertionError):
    """A claim made for the book's default parameters no longer holds."""


@dataclass
class Claims:
    """The claims of one chapter run.

    Attributes:
        enforce: Whether :meth:`verify` fails on a claim that does not hold (true exactly when
            the chapter runs with its default parameters).
        results: One dict per checked claim: ``name``, ``holds``, ``statement``.

    """

    enforce: bool
    results: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def for_parameters(cls, params: dict[str, Any], defaults: dict[str, Any]) -> Claims:
        """Enforce the claims exactly when ``params`` equal the chapter's ``defaults``."""
        normalise = {key: list(v) if isinstance(v, tuple) else v for key, v in params.items()}
        expected = {key: list(v) if isinstance(v, tuple) else v for key, v in defaults.items()}
        return cls(enforce=normalise == expected)

    def check(self, name: str, holds: bool, statement: str) -> None:
        """Record a claim.

        Args:
            name: Short identifier, e.g. ``"temperature-raises-entropy"``.
            holds: Whether the data support the claim.
            statement: What the data show, phrased for either outcome.

        """
        self.results.append({"name": name, "holds": bool(holds), "statement": statement})

    def table(self) -> pd.DataFrame:
        """Return the recorded claims, one row each."""
        return pd.DataFrame(self.results, columns=["name", "holds", "statement"])

    def report(self, names: Sequence[str] | None = None) -> Markdown:
        """Return the statements as a Markdown list, for the reader.

        Args:
            names: Only these claims, in this order; default all, in the order checked.

        Raises:
            KeyError: On a name that was not checked.
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
        by_name = {r["name"]: r for r in self.results}
        unknown = [n for n in names or [] if n not in by_name]
        if unknown:
            raise KeyError(f"No claims named {unknown}; checked: {list(by_name)}.")
        chosen = self.results if names is None else [by_name[n] for n in names]
        return Markdown("\n".join(f"- {r['statement']}" for r in chosen))

    def verify(self) -> str:
        """Fail if a claim does not hold while enforced; otherwise say what was checked.

        Returns:
            A one-line summary.

        Raises:
            ClaimFailedError: Listing the claims that do not hold, when enforced.

        """
        failed = [r for r in self.results if not r["holds"]]
        if self.enforce and failed:
            lines = "\n".join(f"- {r['name']}: {r['statement']}" for r in failed)
            raise ClaimFailedError(
                f"{len(failed)} claim(s) made for the default parameters do not hold:\n{lines}"
            )
        mode = "enforced" if self.enforce else "not enforced (parameters differ from defaults)"
        return f"{len(self.results)} claims checked, {len(failed)} not holding; {mode}."
