"""The book layer: the only part of sdelm that knows about chapters.

A chapter opens itself with :meth:`Chapter.open` (its defaults read from its own parameters
cell), records measured effects in :class:`Claims`, and finishes with :meth:`Chapter.finish`;
:func:`ledger` gathers every chapter's claims for the claims ledger page, each judged robust,
fragile or unchecked by the robustness record (:func:`read_robustness`);
:func:`execute_book` executes chapters side by side, and :func:`sdelm.book.build.build` builds
the HTML from them.
"""

from sdelm.book.build import execute_book
from sdelm.book.chapter import Chapter, ChapterError
from sdelm.book.claims import ClaimFailedError, Claims, slug
from sdelm.book.execution import execute
from sdelm.book.ledger import ledger
from sdelm.book.record import departures, read_robustness, run_here, stale_runs

__all__ = [
    "Chapter",
    "ChapterError",
    "ClaimFailedError",
    "Claims",
    "departures",
    "execute",
    "execute_book",
    "ledger",
    "read_robustness",
    "run_here",
    "slug",
    "stale_runs",
]
