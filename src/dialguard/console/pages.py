"""The pages: Today, Search, a decision, a number's history, the lists, the exports.

Each reads the central store in one trip to a reader thread (a few indexed queries; the
charts from the rollup counters, never the records) and Redis where the page is about
what holds now (the lists, the changes Redis has taken).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import orjson
import structlog
from aiohttp import web

from dialguard.audit import AuditUnavailable
from dialguard.central.stats import summary
from dialguard.central.store import CentralStore, Found
from dialguard.changes import CHANGE_KINDS, change_in
from dialguard.console import exports, i18n
from dialguard.console.state import console_of, db, error_page, render, timed, user_of
from dialguard.console.views import (
    PAGE_SIZE,
    SEARCH_FIELDS,
    BadInput,
    day_bounds,
    event_of,
    local_of,
    mask,
    parse_day,
    parse_export,
    parse_search,
    record_of,
    row_of,
    shown_time,
    valid_id,
)
from dialguard.freshness import SOON_DAYS
from dialguard.history import in_force
from dialguard.lists_status import gather
from dialguard.model import Reason
from dialguard.numbers import InvalidNumber, normalise
from dialguard.pending import PENDING_DAYS
from dialguard.service import new_id
from dialguard.store import StoreUnavailable

__all__ = ["add_routes"]

log = structlog.get_logger("dialguard.console")

HISTORY_MAX = 1000  # events of one number shown (newest kept): `audit history` shows all


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/", today)
    router.add_get("/search", search)
    router.add_get("/decision/{id}", decision)
    router.add_get("/history", history)
    router.add_get("/lists", lists)
    router.add_get("/exports", exports_page)
    router.add_post("/exports", export)
    router.add_get("/exports/{file}", export_file)
    router.add_get("/exports/{file}/manifest", export_manifest)


def _translate(request: web.Request) -> Callable[[str], str]:
    return i18n.translator(i18n.language_of(request))


def _search_link(**fields: str | None) -> str:
    return "/search?" + urlencode({k: v for k, v in fields.items() if v})


# --- Today ----------------------------------------------------------------------------


async def today(request: web.Request) -> web.Response:
    console = console_of(request)
    zone = console.zone
    now = console.clock()
    local_today = now.astimezone(zone).date()
    translate = _translate(request)
    try:
        day = parse_day(request.query.get("day"), local_today)
    except BadInput as exc:
        day, error = local_today, exc.message
    else:
        error = ""
    since, until = day_bounds(day, zone)
    now_ms = int(now.timestamp() * 1000)
    changes_since = now_ms - PENDING_DAYS * 86_400_000

    def read(store: CentralStore) -> tuple[Any, ...]:
        figures = summary(store, since, until, zone)
        cursors = store.nodes()
        last = {cursor.node: store.last_shipped(cursor.node) for cursor in cursors}
        first = {c.node: str(store.breaks(c.node, 1)[0]) for c in cursors if c.breaks}
        events = store.events(changes_since, sorted(CHANGE_KINDS))
        return figures, cursors, last, first, events

    figures, cursors, last, first_breaks, events = await db(request, read)
    pending = await _pending(request, events)
    shown_day = day.isoformat()
    for row in figures["by_reason"]:
        row["link"] = _search_link(
            since=shown_day, until=shown_day, result=row["result"], reason=row["reason"]
        )
    for row in figures["by_campaign"]:
        row["link"] = _search_link(since=shown_day, until=shown_day, campaign=row["campaign"])
    nodes = []
    for cursor in cursors:
        last_ts = last.get(cursor.node)
        nodes.append(
            {
                "node": cursor.node,
                "records": cursor.records,
                "last": shown_time(last_ts, zone) if last_ts else "",
                "shipped": shown_time(cursor.shipped_at, zone) if cursor.shipped_at else "",
                "lag": _duration(cursor.shipped_at - last_ts) if last_ts else "-",
                "intact": not cursor.breaks and not cursor.error,
                "breaks": cursor.breaks,
                "first_break": first_breaks.get(cursor.node, ""),
                "error": cursor.error,
            }
        )
    return render(
        request,
        "today.html",
        page="today",
        title=translate("Today"),
        error=error,
        day=shown_day,
        is_today=day == local_today,
        summary=figures,
        nodes=nodes,
        pending=pending,
        charts=_charts(figures, translate),
        links={
            "all": _search_link(since=shown_day, until=shown_day, kind="decision"),
            "allowed": _search_link(since=shown_day, until=shown_day, result="ALLOW"),
            "denied": _search_link(since=shown_day, until=shown_day, result="DENY"),
            "degraded": _search_link(since=shown_day, until=shown_day, degraded="1"),
        },
    )


async def _pending(request: web.Request, events: list[Found]) -> dict[str, Any]:
    """The changes of the last days that Redis has not taken (by their applied marks).
    Redis is asked by id first, and only the lines it has not taken are parsed: three
    days of a busy site hold thousands of changes, nearly all taken, and parsing them all
    was most of the page's time at 10 M records (docs/benchmarks.md)."""
    console = console_of(request)
    events_by_id = {found.id: found for found in events}
    try:
        applied = await timed(request, "redis", console.redis().applied(list(events_by_id)))
    except StoreUnavailable as exc:
        return {"count": None, "error": str(exc), "rows": []}
    whole = user_of(request).may_export
    rows = []
    for record_id, found in events_by_id.items():
        if record_id in applied or (change := change_in(found.line)) is None:
            continue
        rows.append(
            {
                "id": found.id,
                "node": found.node,
                "time": shown_time(found.ts, console.zone),
                "kind": change.kind.value + (f" {change.outcome}" if change.outcome else ""),
                "number": f"+{change.number_key}" if whole else mask(f"+{change.number_key}"),
                "principal": change.principal,
            }
        )
    return {"count": len(rows), "error": "", "rows": rows}


def _duration(ms: int) -> str:
    if ms < 0:
        return "0 s"
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    if ms < 3_600_000:
        return f"{ms // 60_000} min"
    return f"{ms / 3_600_000:.1f} h"


def _charts(figures: dict[str, Any], translate: Callable[[str], str]) -> dict[str, Any]:
    """The charts' data (console.js draws them; the tables under them say the same)."""
    hours = {row["hour"]: row for row in figures["by_hour"]}
    return {
        "labels": {"allowed": translate("Allowed"), "denied": translate("Denied")},
        "reason": {
            "labels": [f"{row['reason']}" for row in figures["by_reason"]],
            "values": [row["decisions"] for row in figures["by_reason"]],
            "results": [row["result"] for row in figures["by_reason"]],
        },
        "campaign": {
            "labels": [row["campaign"] for row in figures["by_campaign"]],
            "allowed": [row["allowed"] for row in figures["by_campaign"]],
            "denied": [row["denied"] for row in figures["by_campaign"]],
        },
        "hour": {
            "labels": [f"{hour:02d}h" for hour in range(24)],
            "allowed": [hours[hour]["allowed"] if hour in hours else 0 for hour in range(24)],
            "denied": [hours[hour]["denied"] if hour in hours else 0 for hour in range(24)],
        },
    }


# --- Search ---------------------------------------------------------------------------


async def search(request: web.Request) -> web.Response:
    console = console_of(request)
    translate = _translate(request)
    whole = user_of(request).may_export
    common: dict[str, Any] = {
        "page": "search",
        "title": translate("Search"),
        "kinds": ["decision", "outcome", "dnc-add", "dnc-remove", "consent-withdraw", "export"],
        "campaigns": sorted(console.config.campaigns),
        "reasons": sorted(reason.value for reason in Reason),
        "masked": not whole,
    }
    try:
        asked = parse_search(request.query, console.zone)
    except BadInput as exc:
        shown = {name: request.query.get(name, "") for name in SEARCH_FIELDS}
        return render(
            request, "search.html", 400, error=exc.message, shown=shown, rows=None, **common
        )
    found = await db(
        request,
        lambda store: store.search(asked.filters, asked.newest_first, asked.after, PAGE_SIZE + 1),
    )
    rows = [row_of(item, console.zone, whole_numbers=whole) for item in found[:PAGE_SIZE]]
    more = len(found) > PAGE_SIZE
    return render(
        request,
        "search.html",
        shown=asked.shown,
        rows=rows,
        newest_first=asked.newest_first,
        next_link=asked.link(after=rows[-1]["after"]) if more else "",
        first_link=asked.link(after=None) if asked.after else "",
        order_link=asked.link(order="oldest" if asked.newest_first else "newest", after=None),
        **common,
    )


# --- a decision -----------------------------------------------------------------------


async def decision(request: web.Request) -> web.Response:
    console = console_of(request)
    translate = _translate(request)
    record_id = request.match_info["id"]
    found = (
        await db(request, lambda store: store.record(record_id)) if valid_id(record_id) else None
    )
    if found is None:
        return error_page(
            request, 404, "Not found", translate("No such record in the central store.")
        )
    record = record_of(found)
    log.info("console_record_viewed", user=user_of(request).name, id=record_id)
    kind = str(record.get("kind") or "decision")
    event, detail = event_of(record)
    number = str(record.get("number") or "")
    zone = console.zone
    values: dict[str, Any] = {
        "page": "",
        "title": f"{event} {detail}",
        "kind": kind,
        "event": event,
        "detail": detail,
        "number": number,
        "history_link": "/history?" + urlencode({"number": number}) if number else "",
        "prev": str(record.get("prev", "")),
        "hash": str(record.get("hash", "")),
        "rules": [],
        "evidence": [],
        "policy": None,
        "channel": [],
    }
    time_label = translate("Paris time") if zone.key == "Europe/Paris" else zone.key
    fields: list[tuple[str, str]] = [
        (translate("Id"), found.id),
        (translate("Node"), found.node),
        (time_label, shown_time(found.ts, zone)),
    ]
    if kind == "decision":
        fields += [
            (translate("Callee's local time"), local_of(record)),
            (translate("Number"), number),
            (translate("Number as dialled"), str(record.get("number_raw") or "")),
            (translate("Campaign"), str(record.get("campaign") or "")),
            (translate("Principal"), str(record.get("principal") or "")),
            (translate("Purpose"), str(record.get("purpose") or "")),
            (translate("Sector"), str(record.get("sector") or "")),
            (translate("Attempts in the window"), str(record.get("attempts_30d", ""))),
        ]
        answer = record.get("answer")
        if isinstance(answer, dict):
            fields.append(
                (
                    translate("Shadow mode: answered"),
                    f"{answer.get('result')} {answer.get('reason')}",
                )
            )
        if record.get("degraded"):
            fields.append(
                (translate("Degraded: decided by the fail mode"), str(record["degraded"]))
            )
        rules = record.get("rules")
        values["rules"] = (
            [rule for rule in rules if isinstance(rule, dict)] if isinstance(rules, list) else []
        )
        evidence = record.get("evidence")
        if isinstance(evidence, dict):
            values["evidence"] = [(name, _shown(value)) for name, value in sorted(evidence.items())]
        policy = record.get("policy")
        if isinstance(policy, dict):
            values["policy"] = {k: str(policy.get(k, "")) for k in ("name", "version", "hash")}
        values["channel"] = [
            (translate(label), str(record.get(name) or ""))
            for label, name in (
                ("Channel", "channel"),
                ("Unique id", "uniqueid"),
                ("Caller ID", "callerid"),
                ("Adapter", "adapter"),
            )
        ]
        latency = record.get("latency_us")
        if isinstance(latency, int):
            values["channel"].append((translate("Latency"), f"{latency / 1000:.1f} ms"))
    else:
        skip = {"id", "ts", "node", "kind", "prev", "hash"}
        fields += [(name, _shown(value)) for name, value in record.items() if name not in skip]
    values["fields"] = fields
    return render(request, "decision.html", **values)


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


# --- a number's history ---------------------------------------------------------------


async def history(request: web.Request) -> web.Response:
    console = console_of(request)
    translate = _translate(request)
    asked = request.query.get("number", "").strip()
    values: dict[str, Any] = {
        "page": "history",
        "title": translate("Number history"),
        "asked": asked,
        "number": None,
    }
    if not asked:
        return render(request, "history.html", **values)
    try:
        number = normalise(asked)
    except InvalidNumber as exc:
        return render(request, "history.html", 400, error=str(exc), **values)
    log.info("console_history_viewed", user=user_of(request).name, number=mask(number.e164))
    found = await db(
        request, lambda store: store.search_number(number.e164, None, None, HISTORY_MAX)
    )
    zone = console.zone
    events = []
    for item in reversed(found):  # oldest first: the story in order
        record = record_of(item)
        event, detail = event_of(record)
        if record.get("kind", "decision") == "decision" and not record.get("degraded"):
            evidence = record.get("evidence")
            names = (
                sorted(k for k in evidence if k != "attempts_30d")
                if isinstance(evidence, dict)
                else []
            )
            detail = f"{detail} · {', '.join(names)}" if names else detail
        elif record.get("degraded"):
            detail = f"{detail} · {record['degraded']}"
        events.append(
            {
                "id": item.id,
                "node": item.node,
                "time": shown_time(item.ts, zone),
                "local": local_of(record),
                "event": event,
                "detail": detail,
                "campaign": str(record.get("campaign") or record.get("principal") or ""),
                "who": str(record.get("operator") or record.get("adapter") or ""),
            }
        )
    held: list[dict[str, str]] = []
    held_error = ""
    try:
        entries = await timed(
            request, "redis", in_force(console.redis(), console.config, number, console.clock())
        )
    except StoreUnavailable as exc:
        held_error = str(exc)
    else:
        for entry in entries:
            shown = ", ".join(f"{k} {v}" for k, v in entry.items() if k not in ("kind", "list"))
            held.append({"list": str(entry.get("list")), "detail": shown})
    return render(
        request,
        "history.html",
        **{**values, "number": number},
        events=events,
        truncated=len(found) >= HISTORY_MAX,
        held=held,
        held_error=held_error,
    )


# --- the lists ------------------------------------------------------------------------


async def lists(request: web.Request) -> web.Response:
    console = console_of(request)
    translate = _translate(request)
    zone = console.zone
    local_today = console.clock().astimezone(zone).date()
    freshness_days = console.config.policy.at(local_today).optout_freshness_days
    rows = None
    error = ""
    try:
        rows = await timed(
            request, "redis", gather(console.redis(), local_today, freshness_days, zone)
        )
    except StoreUnavailable as exc:
        error = str(exc)
    return render(
        request,
        "lists.html",
        page="lists",
        title=translate("Lists"),
        today=local_today.isoformat(),
        rows=rows,
        lists_error=error,
        soon=sum(row.stale_in_7_days for row in rows or []),
        soon_days=SOON_DAYS,
    )


# --- exports --------------------------------------------------------------------------


_EXPORT_FIELDS = (
    "since", "until", "format", "campaign", "principal", "result", "reason", "node", "number",
)  # fmt: skip


def _compliance(request: web.Request) -> None:
    if not user_of(request).may_export:
        translate = _translate(request)
        raise web.HTTPForbidden(
            text=translate("Exports and whole numbers in lists are for the compliance role.") + "\n"
        )


async def exports_page(
    request: web.Request, error: str = "", status: int = 200, form: dict[str, str] | None = None
) -> web.Response:
    _compliance(request)
    console = console_of(request)
    translate = _translate(request)
    settings = console.settings
    exports.prune(settings.exports_dir, settings.exports_keep_hours)
    day = console.clock().astimezone(console.zone).date().isoformat()
    return render(
        request,
        "exports.html",
        status,
        page="exports",
        title=translate("Exports"),
        error=error,
        form={name: "" for name in _EXPORT_FIELDS}
        | (form or {"since": day, "until": day, "format": "jsonl"}),
        can_mask=console.mask_key is not None,
        exports=exports.listed(settings.exports_dir),
        fresh=request.query.get("fresh", ""),
        keep_hours=settings.exports_keep_hours,
    )


async def export(request: web.Request) -> web.StreamResponse:
    _compliance(request)
    console = console_of(request)
    translate = _translate(request)
    raw = await request.post()
    form = {name: str(value) for name, value in raw.items() if name != "csrf"}
    try:
        filters, fmt, masked = parse_export(form, console.zone)
    except BadInput as exc:
        return await exports_page(request, exc.message, 400, form)
    if masked and console.mask_key is None:
        message = translate(
            "Masked exports need a key (mask_key_file or DIALGUARD_AUDIT_MASK_KEY)."
        )
        return await exports_page(request, message, 400, form)
    now = console.clock()
    about = {
        "id": new_id(now),
        "since": form["since"],
        "until": form["until"],
        "timezone": console.zone.key,
        "operator": user_of(request).name,
    }
    directory = console.settings.exports_dir
    key = console.mask_key if masked else None
    manifest = await db(
        request,
        lambda store: exports.write(store, directory, about["id"], filters, fmt, key, about),
    )
    record = exports.record(
        manifest, console.config.node, int(now.timestamp() * 1000), request.remote or ""
    )
    try:
        await console.journal.append(record)
    except AuditUnavailable as exc:
        exports.remove(directory, manifest["file"])
        log.error("console_export_not_recorded", error=str(exc))
        message = (
            f"{translate('The export is not made: its audit record cannot be written')}: {exc}"
        )
        return await exports_page(request, message, 503, form)
    log.info(
        "console_export",
        user=about["operator"],
        id=about["id"],
        records=manifest["records"],
        address=request.remote,
    )
    raise web.HTTPSeeOther("/exports?" + urlencode({"fresh": about["id"]}))


async def export_file(request: web.Request) -> web.StreamResponse:
    return _download(request, manifest=False)


async def export_manifest(request: web.Request) -> web.StreamResponse:
    return _download(request, manifest=True)


def _download(request: web.Request, *, manifest: bool) -> web.StreamResponse:
    _compliance(request)
    console = console_of(request)
    name = request.match_info["file"]
    try:
        path = exports.download(console.settings.exports_dir, name, manifest)
    except BadInput as exc:
        return error_page(request, 404, "Not found", exc.message)
    log.info("console_export_downloaded", user=user_of(request).name, file=path.name)
    response = web.FileResponse(path)
    response.headers["Content-Disposition"] = f'attachment; filename="{path.name}"'
    return response
