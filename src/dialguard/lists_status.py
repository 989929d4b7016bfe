"""What each imported list holds in Redis, what it costs, how old it is, and which
registry checks go stale soon: `dialguard lists status` and the console's *Lists*."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from dialguard.freshness import registry_sets
from dialguard.store import Store
from dialguard.store.keys import CLEAR, LISTED, PRINCIPAL_DNC_LIST

__all__ = ["Row", "age_days", "gather"]

# What writes the live entries `lists status` shows beside each imported list.
_LIVE_SOURCES = {
    "dnc": "dnc add / outcomes",
    "consent": "consent add",
    "contract": "contract add / end",
}


@dataclass
class Row:
    list: str
    version: str
    entries: int
    bytes: int
    loaded_at: str
    source: str
    checked_on: str = ""
    age_days: int | None = None
    stale_in_7_days: int = 0
    state: str = ""

    def as_json(self) -> dict[str, Any]:
        row = dict(self.__dict__)
        row["bytes_per_entry"] = round(self.bytes / self.entries, 2) if self.entries else None
        return row


async def _imported(
    store: Store, kind: str, version: str, meta: dict[str, Any], today: date, zone: ZoneInfo
) -> Row:
    counted = await store.lists.census(kind, version)
    stamp = meta.get("updated_at") or meta.get("loaded_at")
    return Row(
        kind,
        version,
        counted.entries,
        counted.bytes,
        str(stamp or ""),
        str(meta.get("source", "")),
        age_days=age_days(stamp, today, zone),
    )


async def gather(store: Store, today: date, freshness_days: int, zone: ZoneInfo) -> list[Row]:
    lists = store.lists
    rows: list[Row] = []
    for kind in ("dnc", "consent", "contract"):
        current = await lists.current(kind)
        if current.versions:
            rows.append(
                await _imported(store, kind, current.versions[0], current.meta, today, zone)
            )
        else:
            rows.append(Row(kind, "", 0, 0, "", "", state="never imported"))
        # Live entries (outcomes, the API, `consent add`) count whether or not a file was
        # ever imported: a site that only takes opt-outs during calls must still see them.
        live = await store.live_census(kind)
        if kind == "dnc" or live[0]:
            rows.append(Row(f"{kind}:live", "", live[0], live[1], "", _LIVE_SOURCES[kind]))
    scoped = await store.principal_dnc_census()
    if scoped[0]:  # only VICIdial's campaign lists make these (docs/vicidial.md)
        source = "VICIdial campaign lists"
        rows.append(Row(PRINCIPAL_DNC_LIST, "", scoped[0], scoped[1], "", source))
    current = await lists.current("optout")
    if not current.versions:
        rows.append(Row("bloctel", "", 0, 0, "", "", state="never imported"))
    for result_set in registry_sets(current.meta, today, freshness_days):
        meta = next(m for m in current.meta if str(m["version"]) == result_set.version)
        listed_part = await lists.census("optout", result_set.version, LISTED)
        clear_part = await lists.census("optout", result_set.version, CLEAR)
        listed, used_listed = listed_part.entries, listed_part.bytes
        clear, used_clear = clear_part.entries, clear_part.bytes
        if result_set.stale:
            state = "STALE"  # its clear numbers give OPTOUT_UNVERIFIED
        elif result_set.stale_soon:
            state = f"stale in {result_set.days_left} d"
        else:
            state = f"fresh {result_set.days_left} d"
        rows.append(
            Row(
                "bloctel",
                result_set.version,
                listed + clear,
                used_listed + used_clear,
                str(meta.get("loaded_at", "")),
                str(meta.get("source", "")),
                checked_on=result_set.checked_on.isoformat(),
                age_days=result_set.age_days,
                stale_in_7_days=clear if result_set.stale_soon else 0,
                state=state,
            )
        )
    return rows


def age_days(moment: Any, today: date, zone: ZoneInfo) -> int | None:
    """Days since `moment`, counted in the zone `today` is a date of (a list loaded at
    00:30 in Paris is 0 days old that day, though its UTC date is the day before)."""
    if not moment:
        return None
    loaded = datetime.fromisoformat(str(moment))
    if loaded.tzinfo is None:
        loaded = loaded.replace(tzinfo=UTC)
    return (today - loaded.astimezone(zone).date()).days
