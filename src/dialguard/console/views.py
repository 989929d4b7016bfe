"""What the pages show, from query strings and stored records: pure (no I/O, no clock).

Times are shown twice where a call is concerned: in the policy's zone (Paris time, the
call centre's; the hours the charts count in) and in the callee's own (`local_time` of
the record: the time the rules judged, which differs overseas). Each is labelled.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import orjson

from dialguard.central.store import Filters, Found
from dialguard.numbers import InvalidNumber, normalise

__all__ = [
    "PAGE_SIZE",
    "SEARCH_FIELDS",
    "BadInput",
    "Search",
    "day_bounds",
    "event_of",
    "local_of",
    "mask",
    "parse_day",
    "parse_export",
    "parse_search",
    "record_of",
    "row_of",
    "shown_time",
]

PAGE_SIZE = 50
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_MINUTE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2})?$")
_AFTER = re.compile(r"^(\d{1,15})\.([0-9a-z]{1,64})$")
_REASON = re.compile(r"^[A-Z][A-Z_]{0,63}$")
_ID = re.compile(r"^[0-9a-z]{1,64}$")
_KINDS = (
    "decision", "outcome", "dnc-add", "dnc-remove", "consent-withdraw", "import",
    "import-done", "reload", "replay", "export",
)  # fmt: skip
_TEXT_MAX = 128


class BadInput(ValueError):
    """A field of a form that cannot be used: the field and one line saying why."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name
        self.message = message


def valid_id(value: str) -> bool:
    return bool(_ID.match(value))


def shown_time(ms: int, zone: ZoneInfo) -> str:
    return datetime.fromtimestamp(ms / 1000, zone).strftime("%Y-%m-%d %H:%M:%S")


def local_of(record: Mapping[str, Any]) -> str:
    """The callee's local time as the record has it, with its UTC offset; "" if none."""
    value = record.get("local_time")
    if not isinstance(value, str) or not value:
        return ""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value[:40]
    offset = moment.strftime("%z")
    shown = f"{offset[:3]}:{offset[3:]}" if offset else ""
    return f"{moment.strftime('%Y-%m-%d %H:%M:%S')} {shown}".rstrip()


def mask(number: str) -> str:
    """A number as a viewer sees it in a list: the country and first digit, the last two.
    Short numbers (112, 3179) stay whole: they name a service, not a person."""
    if len(number) <= 6:
        return number
    return number[:4] + "•" * (len(number) - 6) + number[-2:]


def parse_day(value: str | None, today: date) -> date:
    if not value:
        return today
    if not _DAY.match(value):
        raise BadInput("day", f"{value[:40]!r} is not a date (2026-11-30)")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise BadInput("day", f"{value!r} is not a date (2026-11-30)") from None


def day_bounds(day: date, zone: ZoneInfo) -> tuple[int, int]:
    """[start, end) of a day in `zone`, in ms (25 or 23 hours on the clock changes)."""
    start = datetime.combine(day, time(), zone)
    end = datetime.combine(day + timedelta(days=1), time(), zone)
    return int(start.timestamp() * 1000), int(end.timestamp() * 1000)


def _moment(name: str, value: str, zone: ZoneInfo, *, end: bool) -> int:
    """A date (a whole day: `until` includes it) or a date-time, in the zone; in ms."""
    try:
        if _DAY.match(value):
            day = date.fromisoformat(value) + timedelta(days=1 if end else 0)
            return int(datetime.combine(day, time(), zone).timestamp() * 1000)
        if _MINUTE.match(value):
            moment = datetime.fromisoformat(value).replace(tzinfo=zone)
            return int(moment.timestamp() * 1000)
    except ValueError:
        pass
    raise BadInput(
        name, f"{value[:40]!r} is not a date (2026-11-30) or date-time (2026-11-30T14:00)"
    )


def _text(query: Mapping[str, str], name: str) -> str | None:
    value = query.get(name, "").strip()
    if not value:
        return None
    if len(value) > _TEXT_MAX or not value.isprintable():
        raise BadInput(name, f"at most {_TEXT_MAX} printable characters")
    return value


@dataclass(frozen=True, slots=True)
class Search:
    """A search as its URL says it: the filters, the order, where the page starts."""

    filters: Filters
    newest_first: bool
    after: tuple[int, str] | None
    shown: dict[str, str]  # the fields as given (the form shows them back; links keep them)

    def link(self, **changes: str | None) -> str:
        """This search's URL with some fields changed (None: removed)."""
        fields = {**self.shown, **changes}
        kept = {name: value for name, value in fields.items() if value}
        return "/search?" + urlencode(kept) if kept else "/search"


SEARCH_FIELDS = (
    "number", "campaign", "principal", "result", "reason", "node", "kind", "since", "until",
    "degraded", "order",
)  # fmt: skip


def _filters(query: Mapping[str, str], zone: ZoneInfo) -> tuple[Filters, dict[str, str]]:
    shown = {name: query.get(name, "").strip() for name in SEARCH_FIELDS}
    number = _text(query, "number")
    e164 = None
    if number is not None:
        try:
            e164 = normalise(number).e164
        except InvalidNumber as exc:
            raise BadInput("number", str(exc)) from None
    result = _text(query, "result")
    if result is not None and result not in ("ALLOW", "DENY"):
        raise BadInput("result", "ALLOW or DENY")
    reason = _text(query, "reason")
    if reason is not None:
        reason = reason.upper()
        if not _REASON.match(reason):
            raise BadInput("reason", f"{reason[:40]!r} is not a reason code (NO_CONSENT)")
    kind = _text(query, "kind")
    if kind is not None and kind not in _KINDS:
        raise BadInput("kind", f"one of {', '.join(_KINDS)}")
    since = _text(query, "since")
    until = _text(query, "until")
    since_ms = _moment("since", since, zone, end=False) if since else None
    until_ms = _moment("until", until, zone, end=True) if until else None
    if since_ms is not None and until_ms is not None and since_ms >= until_ms:
        raise BadInput("until", "the range ends before it starts")
    filters = Filters(
        since_ms=since_ms,
        until_ms=until_ms,
        number=e164,
        campaign=_text(query, "campaign"),
        principal=_text(query, "principal"),
        result=result,
        reason=reason,
        node=_text(query, "node"),
        kind=kind,
        degraded=query.get("degraded", "") in ("1", "on", "true"),
    )
    return filters, shown


def parse_search(query: Mapping[str, str], zone: ZoneInfo) -> Search:
    filters, shown = _filters(query, zone)
    order = query.get("order", "")
    if order not in ("", "newest", "oldest"):
        raise BadInput("order", "newest or oldest")
    after = None
    if query.get("after"):
        found = _AFTER.match(query["after"])
        if found is None:
            raise BadInput("after", "not a position of this search (use the page links)")
        after = (int(found.group(1)), found.group(2))
    return Search(filters, order != "oldest", after, shown)


def parse_export(form: Mapping[str, str], zone: ZoneInfo) -> tuple[Filters, str, bool]:
    """An export's filters (a date range is required: an inspection asks for a period),
    its format, and whether numbers are masked."""
    if not form.get("since") or not form.get("until"):
        raise BadInput("since", "an export needs a date range (since and until)")
    filters, _ = _filters(form, zone)
    fmt = form.get("format", "jsonl")
    if fmt not in ("jsonl", "csv"):
        raise BadInput("format", "jsonl or csv")
    return filters, fmt, form.get("mask", "") in ("1", "on", "true")


def record_of(found: Found) -> dict[str, Any]:
    """The stored line as a record; a line that is not a JSON object (flagged at ingest)
    shows as what it is."""
    try:
        record = orjson.loads(found.line)
    except orjson.JSONDecodeError:
        return {"id": found.id, "ts": found.ts, "kind": "unreadable"}
    return record if isinstance(record, dict) else {"id": found.id, "ts": found.ts}


def event_of(record: Mapping[str, Any]) -> tuple[str, str]:
    """(what happened, its reason or detail) in a list's two columns."""
    kind = str(record.get("kind") or "decision")
    if kind == "decision":
        reason = str(record.get("reason") or "")
        answer = record.get("answer")
        if isinstance(answer, dict):  # shadow mode: the call went out all the same
            reason += f" (shadow: {answer.get('result')})"
        return str(record.get("result") or ""), reason
    if kind == "outcome":
        return "OUTCOME", str(record.get("outcome") or "")
    if kind == "export":
        return "EXPORT", f"{record.get('records', 0)} records by {record.get('operator', '')}"
    return kind.upper(), str(record.get("why") or "")


def row_of(found: Found, zone: ZoneInfo, *, whole_numbers: bool) -> dict[str, Any]:
    """A record as a line of a list: numbers masked unless `whole_numbers`."""
    record = record_of(found)
    event, detail = event_of(record)
    number = str(record.get("number") or "")
    return {
        "id": found.id,
        "after": f"{found.ts}.{found.id}",
        "node": found.node,
        "time": shown_time(found.ts, zone),
        "local": local_of(record),
        "event": event,
        "detail": detail,
        "number": number if whole_numbers else mask(number),
        "campaign": str(record.get("campaign") or ""),
        "principal": str(record.get("principal") or ""),
        "degraded": bool(record.get("degraded")),
    }
