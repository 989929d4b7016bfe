"""A realistic central store, made fast: what several nodes' shippers would have stored
after weeks of calls (bench/central.py `load` builds 10 M records with it; the tests check
it stores exactly what the shipper stores from the same journals).

The records are those of a call centre: three nodes (45/35/20 % of the calls), fifteen
campaigns of nine principals with skewed volumes, weekday calling hours in Paris with a
few attempts outside them (denied), holidays, the reasons a real policy gives in the
consent regime (and sector bans, shadow-mode denials, degraded decisions), outcomes and
live changes after some calls, and numbers with a long tail: most called once or twice,
a warm set a handful of times, a hot set (switchboards, numbers a dialer keeps retrying)
about a thousand times each over the period, and five test lines several thousand times.
Each record has the fields and size (~2 KB) of a real one.

Each node's records are sealed into its own hash chain in the order a writer would
append them (by decision time plus its latency, so a record a few milliseconds before
midnight can land in the next day's file, as with the real writer), placed in the day
files the writer would use, and turned into rows by the shipper's own `_check`. `load`
then stores them with the store's own `ingest`, batch by batch with each node's cursor:
exactly the shipper's writes, without reading files back from disk. `write_journals`
writes the same lines as journal directories instead (what a node would hold).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from itertools import accumulate
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from dialguard.audit.files import GENESIS, HEAD_NAME, Head, day_name, seal
from dialguard.central.ship import _check
from dialguard.central.store import CentralStore, Position, Row

__all__ = ["CAMPAIGNS", "NODES", "Corpus", "Line", "last_weekday", "load", "write_journals"]

PARIS = ZoneInfo("Europe/Paris")
DAY_MS = 86_400_000
NODES = (("node-paris-1", 0.45), ("node-paris-2", 0.35), ("node-lyon", 0.20))
HOT_NUMBERS = 300  # ~1,000 records each in 10 M
TEST_LINES = ("+33612345678", "+33698765432", "+33187654321", "+33612121212", "+33756565656")


@dataclass(frozen=True, slots=True)
class Campaign:
    name: str
    principal: str
    purpose: str  # prospecting, press, non_commercial, service
    sector: str
    weight: float
    basis: str  # the usual allow basis
    shadow: bool = False  # denials answered ALLOW (shadow mode)
    overseas: bool = False  # Réunion numbers


CAMPAIGNS = (
    Campaign("fibre-idf", "TELCOFIBRE", "prospecting", "general", 20, "CONSENT"),
    Campaign("assurance-auto", "ASSURMAX", "prospecting", "general", 15, "CONSENT"),
    Campaign("energie-fournisseur", "VOLTAFRANCE", "prospecting", "general", 12, "CONSENT"),
    Campaign("mutuelle-senior", "ASSURMAX", "prospecting", "general", 8, "CONSENT"),
    Campaign("fidelisation-clients", "TELCOFIBRE", "prospecting", "general", 7, "CONTRACT"),
    Campaign("presse-hebdo", "EDITIONS-DU-MATIN", "press", "general", 6, "PRESS"),
    Campaign("alarme-maison", "SECURIHOME", "prospecting", "general", 6, "CONSENT", shadow=True),
    Campaign("banque-credit", "BANQUE-EST", "prospecting", "general", 5, "CONSENT"),
    Campaign("relance-impayes", "VOLTAFRANCE", "service", "general", 5, "SERVICE"),
    Campaign("sondage-opinion", "IPSOFRANCE", "non_commercial", "general", 4, "NON_COMMERCIAL"),
    Campaign("energie-renov-q4", "ISOLAPLUS", "prospecting", "energy_renovation", 3, "CONTRACT"),
    Campaign("dom-reunion", "TELCOFIBRE", "prospecting", "general", 3, "CONSENT", overseas=True),
    Campaign("demo-dialer", "TELCOFIBRE", "prospecting", "general", 3, "CONSENT"),
    Campaign("vins-grands-crus", "CAVEAVIN", "prospecting", "general", 2, "CONSENT"),
    Campaign("cpf-formation", "FORMAPRO", "prospecting", "cpf", 1, "CONSENT"),
)
# Denials of a prospecting call in calling hours, with their weights (the rest: allowed).
DENIALS = (
    ("NO_CONSENT", 15.0, "legal_basis"),
    ("FREQUENCY_CAP", 6.0, "frequency"),
    ("INTERNAL_DNC", 5.0, "internal_dnc"),
    ("OPTOUT_LISTED", 4.0, "legal_basis"),
    ("CONSENT_EXPIRED", 3.0, "legal_basis"),
    ("RECENT_REFUSAL", 2.0, "recent_refusal"),
    ("CONSENT_WITHDRAWN", 1.5, "legal_basis"),
    ("CALLER_ID_NOT_AUTHORISED", 0.5, "caller_id"),
    ("STORE_UNAVAILABLE", 0.05, ""),
    ("DEADLINE", 0.02, ""),
)
RULES = (
    "emergency", "campaign", "number", "caller_id", "internal_dnc", "scope", "purpose",
    "sector_ban", "recent_refusal", "legal_basis", "holiday", "hours", "frequency",
)  # fmt: skip
# Calls a dialer places per Paris hour (weekdays): calling hours 10-13 and 14-20, and a
# few attempts around them, denied OUTSIDE_HOURS.
HOURS = {8: 0.03, 9: 0.3, 10: 1, 11: 1, 12: 1, 13: 0.2, 14: 1, 15: 1, 16: 1, 17: 1, 18: 1,
         19: 1, 20: 0.12, 21: 0.03}  # fmt: skip
HOLIDAYS = {date(2026, 11, 11), date(2026, 12, 25), date(2027, 1, 1), date(2026, 8, 15),
            date(2026, 11, 1), date(2026, 7, 14), date(2027, 4, 5), date(2027, 5, 1)}  # fmt: skip
_HOUR_LIST = list(HOURS)
_PREFIXES = ("6", "7", "1", "2", "3", "4", "5", "9")
_PREFIX_WEIGHTS = list(accumulate((50, 15, 9, 6, 6, 5, 5, 4)))
_ADAPTERS = ("fastagi", "ari", "http")
_ADAPTER_WEIGHTS = list(accumulate((80, 15, 5)))
_PASS: dict[str, dict[str, str | None]] = {
    name: {"rule": name, "outcome": "pass", "reason": None, "detail": ""} for name in RULES
}
_POLICY = {"name": "france", "version": "2026-08-11", "hash": "ad617366ec6d2991"}


@dataclass(frozen=True, slots=True)
class Line:
    """One journal line of a node, where the writer would have put it."""

    node: str
    file_day: int  # days since the epoch: the file audit-YYYY-MM-DD.jsonl
    offset: int
    line: bytes  # without its newline
    hash: bytes
    written_ms: int  # when it was appended


class Corpus:
    """`records` records over `days` days up to `last_day` (Paris) included, spread as in
    a call centre; the same seed gives the same records."""

    def __init__(self, records: int, days: int, last_day: date, seed: int = 14) -> None:
        self.records = records
        self.days = days
        self.seed = seed
        self.dates = [last_day - timedelta(days=days - 1 - n) for n in range(days)]
        weights = [_day_weight(day) for day in self.dates]
        total = sum(weights)
        self.per_day = [round(records * w / total) for w in weights]
        self.per_day[-1] += records - sum(self.per_day)
        self._campaigns = list(accumulate(c.weight for c in CAMPAIGNS))
        self._hours = list(accumulate(HOURS.values()))
        self._denials = [d[0] for d in DENIALS]
        self._denial_weights = list(accumulate(d[1] for d in DENIALS))

    def lines(self) -> Iterator[Line]:
        """Every node's lines, day by day (each node's in its chain order)."""
        rng = random.Random(self.seed)
        chains = {node: _Chain(node, rng.getrandbits(32)) for node, _ in NODES}
        for day, count in zip(self.dates, self.per_day, strict=True):
            events: list[tuple[int, int, str, dict[str, Any]]] = []
            for _ in range(count):
                node = _pick_node(rng.random())
                for written, record in self._events(rng, day, node):
                    events.append((written, len(events), node, record))
            events.sort()
            for written, _, node, record in events:
                yield chains[node].append(record, written)

    def _events(
        self, rng: random.Random, day: date, node: str
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        """A decision (and, after some, an outcome or a live change), with when each was
        appended."""
        campaign = rng.choices(CAMPAIGNS, cum_weights=self._campaigns)[0]
        hour = rng.choices(_HOUR_LIST, cum_weights=self._hours)[0]
        moment = datetime(day.year, day.month, day.day, hour, tzinfo=PARIS) + timedelta(
            seconds=rng.random() * 3600
        )
        ts = int(moment.timestamp() * 1000)
        number = _number(rng, campaign)
        reason, rule = self._reason(rng, campaign, day, hour, number)
        latency_us = int(rng.lognormvariate(7.2, 0.6))
        record = _decision(rng, node, ts, number, campaign, reason, rule, moment, latency_us)
        yield ts + latency_us // 1000 + 1, record
        if record["result"] == "ALLOW" and rng.random() < 0.012:
            later = ts + rng.randint(30_000, 600_000)
            kind = "outcome" if rng.random() < 0.85 else "dnc-add"
            yield later, _change(node, later, number, campaign, kind, rng)
        elif rng.random() < 0.0005:
            later = ts + rng.randint(60_000, 3_600_000)
            yield later, _change(node, later, number, campaign, "consent-withdraw", rng)

    def _reason(
        self, rng: random.Random, campaign: Campaign, day: date, hour: int, number: str
    ) -> tuple[str, str]:
        if number.startswith("+33680"):  # never a valid mobile here: a typo in a lead file
            return "INVALID_NUMBER", "number"
        if campaign.sector != "general" and rng.random() < 0.85:
            return "SECTOR_BAN", "sector_ban"
        if day in HOLIDAYS:
            return "HOLIDAY", "holiday"
        if day.weekday() >= 5 or hour < 10 or hour == 13 or hour >= 20:
            return "OUTSIDE_HOURS", "hours"
        if campaign.purpose in ("non_commercial", "service") or rng.random() < 0.6:
            return campaign.basis, "legal_basis"
        reason = rng.choices(self._denials, cum_weights=self._denial_weights)[0]
        if campaign.purpose == "press" and reason in ("NO_CONSENT", "CONSENT_EXPIRED"):
            return campaign.basis, "legal_basis"
        return reason, next(d[2] for d in DENIALS if d[0] == reason)


def _day_weight(day: date) -> float:
    if day in HOLIDAYS:
        return 0.1
    return 1.0 if day.weekday() < 5 else (0.08 if day.weekday() == 5 else 0.02)


def last_weekday(today: date) -> date:
    """The corpus's last day: a full working day, so that `Today` has a day's calls."""
    while today.weekday() >= 5 or today in HOLIDAYS:
        today -= timedelta(days=1)
    return today


def _pick_node(draw: float) -> str:
    for node, share in NODES:
        if draw < share:
            return node
        draw -= share
    return NODES[-1][0]


def _number(rng: random.Random, campaign: Campaign) -> str:
    draw = rng.random()
    if draw < 0.002:
        return TEST_LINES[rng.randrange(len(TEST_LINES))]
    if draw < 0.032:
        return f"+33{(rng.randrange(HOT_NUMBERS) * 7_919) % 900_000_000 + 100_000_000}"
    if campaign.overseas:
        return f"+262692{rng.randrange(1_000_000):06d}"
    if draw < 0.15:  # a warm set of 200,000 numbers called a handful of times
        return f"+336{(rng.randrange(200_000) * 104_729) % 100_000_000:08d}"
    prefix = rng.choices(_PREFIXES, cum_weights=_PREFIX_WEIGHTS)[0]
    return f"+33{prefix}{rng.randrange(100_000_000):08d}"  # the long tail


def _national(number: str) -> str:
    return "0" + number[4:] if number.startswith("+262") else "0" + number[3:]


def _decision(
    rng: random.Random,
    node: str,
    ts: int,
    number: str,
    campaign: Campaign,
    reason: str,
    rule: str,
    moment: datetime,
    latency_us: int,
) -> dict[str, Any]:
    allowed = rule == "legal_basis" and reason == campaign.basis
    raw = _national(number)
    proof = f"crm-{rng.randrange(10**7):07d}"
    rules: list[dict[str, str | None]] = []
    for name in RULES:
        if name == rule:
            outcome = "basis" if allowed else "deny"
            rules.append({"rule": name, "outcome": outcome, "reason": reason, "detail": proof})
        elif name == "number":
            detail = f"{number} mobile FR"
            rules.append({"rule": name, "outcome": "pass", "reason": None, "detail": detail})
        else:
            rules.append(_PASS[name])
    degraded = (
        "redis: timed out after 300 ms" if reason in ("STORE_UNAVAILABLE", "DEADLINE") else ""
    )
    record: dict[str, Any] = {
        "id": "",
        "ts": ts,
        "node": node,
        "kind": "decision",
        "result": "ALLOW" if allowed else "DENY",
        "reason": reason,
        "rules": rules,
        "number_raw": raw,
        "number": number if reason != "INVALID_NUMBER" else None,
        "campaign": campaign.name,
        "principal": campaign.principal,
        "purpose": campaign.purpose,
        "sector": campaign.sector,
        "local_time": moment.isoformat(timespec="seconds"),
        "attempts_30d": rng.randrange(4),
        "evidence": {
            "attempts_30d": rng.randrange(4),
            "consent": {
                "proof_ref": proof,
                "given_at": "2026-10-01T08:00:00+00:00",
                "expires_at": "2027-10-01T08:00:00+00:00",
            },
        },
        "policy": _POLICY,
        "channel": f"Local/{raw}@outbound-{rng.getrandbits(32):08x};2",
        "uniqueid": f"{ts // 1000}.{rng.randrange(100_000)}",
        "callerid": "0948120042",
        "adapter": rng.choices(_ADAPTERS, cum_weights=_ADAPTER_WEIGHTS)[0],
        "latency_us": latency_us,
        "degraded": degraded,
        "facts": {
            "v": 1,
            "c": ["closed", True, False, False],
            "att": 0,
            "con": [1790841600000, 1822377600000, proof],
        },
    }
    if campaign.shadow and not allowed and not degraded:
        record["mode"] = "shadow"
        record["answer"] = {"result": "ALLOW", "reason": "SHADOW_" + reason}
    return record


def _change(
    node: str, ts: int, number: str, campaign: Campaign, kind: str, rng: random.Random
) -> dict[str, Any]:
    record: dict[str, Any] = {"id": "", "ts": ts, "node": node, "kind": kind}
    if kind == "outcome":
        record["outcome"] = "refused" if rng.random() < 0.8 else "do-not-call"
        record["campaign"] = campaign.name
    return record | {
        "number": number,
        "number_raw": _national(number),
        "principal": campaign.principal,
        "why": "asked during the call" if kind != "outcome" else "",
        "operator": f"agent-{rng.randrange(200):03d}",
        "adapter": "http",
        "channel": "",
        "uniqueid": "",
    }


class _Chain:
    """A node's journal as the writer keeps it: the file of the newest day, the hash."""

    def __init__(self, node: str, tag: int) -> None:
        self.node = node
        self.tag = f"{tag:08x}"
        self.sequence = 0
        self.prev = GENESIS
        self.file_day = -1
        self.offset = 0

    def append(self, record: dict[str, Any], written_ms: int) -> Line:
        record["id"] = f"{record['ts']:012x}{self.tag}{self.sequence & 0xFFFFFF:06x}"
        self.sequence += 1
        day = record["ts"] // DAY_MS
        if day > self.file_day:  # a record never goes back to a closed day
            self.file_day, self.offset = day, 0
        line, self.prev = seal(orjson.dumps(record), self.prev)
        made = Line(self.node, self.file_day, self.offset, line[:-1], self.prev, written_ms)
        self.offset += len(line)
        return made


def write_journals(corpus: Corpus, root: Path) -> dict[str, Path]:
    """Each node's journal directory under `root` (day files and head), as it would be."""
    handles: dict[tuple[str, int], Any] = {}
    heads: dict[str, Head] = {}
    directories = {node: root / node for node, _ in NODES}
    for directory in directories.values():
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        for item in corpus.lines():
            key = (item.node, item.file_day)
            if key not in handles:
                for old in [k for k in handles if k[0] == item.node]:
                    handles.pop(old).close()
                name = day_name(item.file_day)
                handles[key] = (directories[item.node] / name).open("ab")
            handles[key].write(item.line + b"\n")
            heads[item.node] = Head(day_name(item.file_day), item.offset + len(item.line) + 1,
                                    item.hash)  # fmt: skip
    finally:
        for handle in handles.values():
            handle.close()
    for node, head in heads.items():
        (directories[node] / HEAD_NAME).write_bytes(head.encode())
    return directories


def load(
    store: CentralStore,
    corpus: Corpus,
    batch: int = 5000,
    lag_ms: int = 500,
    progress: Callable[[int], None] = lambda stored: None,
) -> int:
    """Store the corpus as the nodes' shippers would have (`ingest`, `batch` lines a
    transaction with the node's cursor); `shipped_at` is when the line was appended plus
    `lag_ms` (the follower's poll). Returns the rows stored; `progress` hears the count
    after each batch."""
    pending: dict[str, list[tuple[Row, Line]]] = {node: [] for node, _ in NODES}
    since: dict[str, Position | None] = dict.fromkeys(pending)
    expected = dict.fromkeys(pending, GENESIS)
    stored = 0

    def flush(node: str) -> None:
        nonlocal stored
        items = pending[node]
        last = items[-1][1]
        position = Position(day_name(last.file_day), last.offset + len(last.line) + 1,
                            last.hash.decode())  # fmt: skip
        done = store.ingest(
            node,
            since[node],
            GENESIS.decode(),
            [row for row, _ in items],
            [],
            position,
            last.written_ms + lag_ms,
        )
        assert not done.breaks and done.stored == len(items), done
        stored += done.stored
        since[node] = position
        items.clear()
        progress(stored)

    for item in corpus.lines():
        row, problem, digest = _check(item.line, expected[item.node])
        assert row is not None and not problem and digest == item.hash, problem
        expected[item.node] = digest
        rows = pending[item.node]
        rows.append((row._replace(file_day=item.file_day, file_offset=item.offset), item))
        if len(rows) >= batch:
            flush(item.node)
    for node, rows in pending.items():
        if rows:
            flush(node)
    return stored
