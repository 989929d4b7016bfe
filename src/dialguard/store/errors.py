"""What the store raises: each carries one line for the person who reads it."""

from __future__ import annotations

from redis.exceptions import OutOfMemoryError

__all__ = ["ListBusy", "OldLayout", "StoreUnavailable", "unavailable"]


class StoreUnavailable(Exception):
    """Redis could not be reached or answered with an error; one line."""


class ListBusy(Exception):
    """Another import of the same list is under way (one line)."""


class OldLayout(Exception):
    """Redis holds a list in the layout of an earlier version, which this one does not
    read (one line, saying what to do: docs/data-model.md, Upgrading)."""


def unavailable(exc: Exception) -> StoreUnavailable:
    """The one line for a Redis call that failed: Redis full (maxmemory, which refuses
    every write until memory is freed) said as such, anything else as Redis's words."""
    if isinstance(exc, OutOfMemoryError):
        return StoreUnavailable(
            "Redis is full (maxmemory reached, writes refused): raise maxmemory or free"
            " memory (docs/operations.md); what this import had written is removed"
        )
    return StoreUnavailable(f"Redis unavailable: {exc}")
