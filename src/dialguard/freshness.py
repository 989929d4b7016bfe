"""How old the registry checks in force are, and what goes stale soon. Pure: the lists'
metadata and today's date in, findings out.

A registry result counts for `freshness_days` days from its check (policy
`optout.freshness_days`, 30: art. L223-1 and the Bloctel FAQ). Past that, a number it
found clear is unverified (OPTOUT_UNVERIFIED) until a newer check covers it; a listing
keeps denying whatever its age. So what goes stale is the clear numbers of old sets.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

__all__ = ["SOON_DAYS", "ResultSet", "registry_sets", "warnings"]

# Operators are warned this many days before a check stops counting.
SOON_DAYS = 7


@dataclass(frozen=True, slots=True)
class ResultSet:
    version: str
    checked_on: date
    ref: str
    listed: int
    clear: int
    age_days: int
    days_left: int  # days until its clear numbers stop counting (0 or less: stale)

    @property
    def stale(self) -> bool:
        """Its clear numbers no longer count (a check dated after today never did: the
        date is wrong, and the decision treats it as unverified too)."""
        return self.days_left <= 0 or self.age_days < 0

    @property
    def stale_soon(self) -> bool:
        """Goes stale within SOON_DAYS days (not stale yet)."""
        return not self.stale and self.days_left <= SOON_DAYS


def registry_sets(
    metas: Iterable[Mapping[str, Any]], today: date, freshness_days: int
) -> list[ResultSet]:
    """The result sets in force, newest check first, with their age."""
    found = []
    for meta in metas:
        checked_on = date.fromisoformat(meta["checked_on"])
        age = (today - checked_on).days
        found.append(
            ResultSet(
                version=str(meta["version"]),
                checked_on=checked_on,
                ref=str(meta.get("ref") or ""),
                listed=int(meta.get("listed", 0)),
                clear=int(meta.get("clear", 0)),
                age_days=age,
                days_left=freshness_days - age,
            )
        )
    return sorted(found, key=lambda s: (s.checked_on, int(s.version)), reverse=True)


def warnings(sets: Iterable[ResultSet]) -> list[tuple[str, dict[str, Any]]]:
    """(event, fields) to log: sets gone stale, and sets going stale within SOON_DAYS."""
    out: list[tuple[str, dict[str, Any]]] = []
    for result_set in sets:
        fields = {
            "version": result_set.version,
            "checked_on": result_set.checked_on.isoformat(),
            "age_days": result_set.age_days,
            "clear_numbers": result_set.clear,
        }
        if result_set.stale and result_set.clear:
            out.append(("registry_check_stale", fields))
        elif result_set.stale_soon and result_set.clear:
            out.append(("registry_check_ageing", {**fields, "days_left": result_set.days_left}))
    return out
