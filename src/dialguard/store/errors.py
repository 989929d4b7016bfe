"""What the store raises: each carries one line for the person who reads it."""

from __future__ import annotations

__all__ = ["ListBusy", "StoreUnavailable"]


class StoreUnavailable(Exception):
    """Redis could not be reached or answered with an error; one line."""


class ListBusy(Exception):
    """Another import of the same list is under way (one line)."""
