"""What can go wrong with the central store, as one line each (no driver imported)."""

from __future__ import annotations

__all__ = ["CentralUnavailable", "CursorMoved", "JournalProblem"]


class CentralUnavailable(Exception):
    """The store cannot be reached, read or written; one line that never shows a password.
    The CLI exits 2 (a dependency), `serve`'s shipper logs it and tries again."""


class CursorMoved(Exception):
    """Another shipper stored records of this node since the batch was read: the batch is
    rolled back whole and read again from the cursor as it now is."""


class JournalProblem(Exception):
    """The journal cannot be shipped on from the cursor (a file shorter than what was
    shipped from it already: truncated after shipping); one line."""
