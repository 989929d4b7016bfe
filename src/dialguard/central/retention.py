"""How long the central store keeps records (`[central] keep_days`, `central prune`).

Whole months go, both backends alike: a record is removed once every day of its month is
more than `keep_days` old, so each is kept at least `keep_days` and at most a month
longer. PostgreSQL then drops a month's partition whole instead of deleting its rows one
by one, and SQLite deletes the same records.

What decides is the day of the journal file a record came from, not its `ts`: the
remaining chain of each node then starts at the first record of a journal file (as after
`audit prune`) and `audit verify --central` checks it from there. The two differ for a
record stamped a few milliseconds before midnight and written just after it, into the
next day's file: it stays with that file.
"""

from __future__ import annotations

from datetime import date, timedelta

__all__ = ["day_number", "first_day_kept"]

_EPOCH = date(1970, 1, 1)


def first_day_kept(today: date, keep_days: int) -> date:
    """The first day whose journal files are kept: the first of the month `keep_days`
    before `today` (every record from before it is at least `keep_days` old)."""
    return (today - timedelta(days=keep_days)).replace(day=1)


def day_number(day: date) -> int:
    """Days since the epoch: how the store names a journal file's day (`file_day`)."""
    return (day - _EPOCH).days
