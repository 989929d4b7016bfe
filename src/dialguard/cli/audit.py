"""`dialguard audit ...`: the supervisor's tools over the journal (docs/supervisors.md).

Tables for people (rich), `--json` (JSON Lines: the journal's own bytes) for machines, or
`--csv` for spreadsheets (a cell that would run as a formula gets a `'`: csv_cells). Exit
codes as everywhere: 0 success, 1 bad input (dates, flags, key), 2 the journal cannot be
read; `verify` adds 3: read fine, but the chain is broken (tampering, or a torn record) —
distinct from 1 so that a typo in a cron line never looks like tampering.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import re
import sys
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import click
import orjson
from rich.console import Console
from rich.table import Table

from dialguard.audit.export import (
    MASK_KEY_ENV,
    MIN_KEY_BYTES,
    created_now,
    pseudonym,
    write_csv,
    write_export,
)
from dialguard.audit.files import AuditUnavailable
from dialguard.audit.reader import (
    Query,
    Torn,
    files_of,
    follow,
    lines,
    prune,
    search,
    stats,
    verify,
)
from dialguard.audit.writer import Journal
from dialguard.changes import record_detail
from dialguard.cli.central import central_stats, central_verify
from dialguard.cli.common import Failure, config_option, errors_are_one_line, operator_option
from dialguard.config import load_config, load_policy
from dialguard.numbers import normalise
from dialguard.policy import Policy
from dialguard.replay import Report, decisions, replay
from dialguard.service import new_id

__all__ = ["EXIT_BROKEN", "audit", "pseudonym"]

EXIT_BROKEN = 3
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class Where:
    """The journal directory and the zone dates and hours are read in."""

    def __init__(self, config_path: Path | None, directory: Path | None) -> None:
        if directory is not None:
            # An inspector's copy needs no configuration; the zone is France's.
            self.directory, zone = directory, "Europe/Paris"
        else:
            config = load_config(config_path)
            self.directory, zone = config.audit_dir, config.policy.default_timezone
            self.retention_days = config.audit_retention_days
            self.node = config.node
        try:
            self.zone = ZoneInfo(zone)
        except ZoneInfoNotFoundError:  # pragma: no cover - the configuration checks it
            raise Failure(f"unknown time zone {zone!r}") from None

    def moment(self, option: str, value: str | None, *, end: bool) -> int | None:
        """Milliseconds; a bare date is a whole day in the zone (`--until` includes it)."""
        if value is None:
            return None
        try:
            if _DAY.match(value):
                day = date.fromisoformat(value) + timedelta(days=1 if end else 0)
                moment = datetime.combine(day, time(), self.zone)
            else:
                moment = datetime.fromisoformat(value)
                if moment.tzinfo is None:
                    moment = moment.replace(tzinfo=self.zone)
        except ValueError:
            raise Failure(
                f"{option} {value!r} is not a date (2026-11-30) or date-time (2026-11-30T14:00)"
            ) from None
        return int(moment.timestamp() * 1000)

    def local(self, ms: int) -> str:
        return datetime.fromtimestamp(ms / 1000, self.zone).strftime("%Y-%m-%d %H:%M:%S")


def _range(where: Where, since: str | None, until: str | None) -> tuple[int | None, int | None]:
    start = where.moment("--since", since, end=False)
    stop = where.moment("--until", until, end=True)
    if start is not None and stop is not None and start >= stop:
        raise Failure(f"--since {since} is not before --until {until}")
    return start, stop


def warn_torn(torn: list[Torn]) -> None:
    for item in torn:
        click.echo(f"dialguard: warning: {item}", err=True)


dir_option = click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Journal directory (default: [audit] dir of the configuration).",
)
since_option = click.option(
    "--since", default=None, help="From this date or date-time (local time), inclusive."
)
until_option = click.option(
    "--until", default=None, help="To this date (inclusive) or date-time (exclusive)."
)


@click.group()
def audit() -> None:
    """The audit journal: search, stats, export, verify, tail, prune, replay."""


@audit.command("search")
@click.option("--number", default=None, help="Dialled number, any spelling (normalised).")
@since_option
@until_option
@click.option("--campaign", default=None, help="Campaign name.")
@click.option("--principal", default=None, help="The professional the campaign calls for.")
@click.option("--result", type=click.Choice(["ALLOW", "DENY"]), default=None)
@click.option("--reason", default=None, help="Reason code (docs/rules.md), e.g. OPTOUT_LISTED.")
@click.option("--id", "record_id", default=None, help="Decision id (DIALGUARD_ID).")
@click.option(
    "--kind",
    type=click.Choice(
        ["decision", "outcome", "dnc-add", "dnc-remove", "consent-add", "consent-withdraw",
         "contract-add", "contract-end", "import", "import-done", "reload", "replay", "scrub"]
    ),
    default=None,
    help="Only records of this kind (docs/audit.md).",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="JSON Lines: the records as stored.")
@click.option("--csv", "as_csv", is_flag=True, help="CSV with a header row.")
@dir_option
@config_option
@errors_are_one_line
def search_command(
    number: str | None,
    since: str | None,
    until: str | None,
    campaign: str | None,
    principal: str | None,
    result: str | None,
    reason: str | None,
    record_id: str | None,
    kind: str | None,
    as_json: bool,
    as_csv: bool,
    directory: Path | None,
    config_path: Path | None,
) -> None:
    """Find records by number, dates, campaign, principal, result, reason or id."""
    if as_json and as_csv:
        raise Failure("choose one of --json and --csv")
    where = Where(config_path, directory)
    start, stop = _range(where, since, until)
    query = Query(
        since_ms=start,
        until_ms=stop,
        number=normalise(number).e164 if number is not None else None,
        campaign=campaign,
        principal=principal,
        result=result,
        reason=reason.upper() if reason else None,
        record_id=record_id,
        kind=kind,
    )
    torn: list[Torn] = []
    found = search(where.directory, query, torn)
    if as_json:
        out = sys.stdout.buffer
        for line, _ in found:
            out.write(line + b"\n")
        out.flush()
    elif as_csv:
        write_csv(sys.stdout, (record for _, record in found), mask=None)
    else:
        records = [record for _, record in found]
        _print_records(where, records)
    warn_torn(torn)


def _print_records(where: Where, records: list[dict[str, Any]]) -> None:
    console = Console()
    table = Table(
        "time (local)", "result", "reason", "number", "campaign", "principal", "id", box=None
    )
    for record in records:
        kind = record.get("kind", "decision")
        if kind == "decision":
            result, reason = str(record.get("result")), str(record.get("reason"))
            if "answer" in record:  # shadow mode: the call went out all the same
                reason += f" (shadow: answered {record['answer'].get('result')})"
        elif kind == "outcome":
            result, reason = "OUTCOME", str(record.get("outcome"))
        elif kind == "reload":
            result = "RELOAD" if record.get("applied") else "RELOAD REFUSED"
            policy = record.get("policy_to") or {}
            reason = f"policy {policy.get('name')} {policy.get('hash')}"
        elif kind == "scrub":
            result = "SCRUB"
            reason = (
                f"{record.get('file')}: {record.get('callable')} of {record.get('leads')} leads"
                f" callable at {record.get('at')}"
            )
        elif kind == "replay":
            result = "REPLAY"
            policy = record.get("policy") or {}
            reason = (
                f"policy {policy.get('name')} {policy.get('hash')}: {record.get('changed')} of "
                f"{record.get('replayed')} would change"
            )
        else:
            result, reason = str(kind).upper(), record_detail(record)
        colour = {"ALLOW": "green", "DENY": "red"}.get(result, "yellow")
        table.add_row(
            where.local(int(record["ts"])),
            f"[{colour}]{result}[/]",
            reason,
            str(record.get("number") or record.get("number_raw") or "-"),
            str(record.get("campaign") or "-"),
            str(record.get("principal") or "-"),
            str(record.get("id")),
        )
    console.print(table)
    plural = "record" if len(records) == 1 else "records"
    console.print(f"{len(records)} {plural}", style="dim", highlight=False)


@audit.command("stats")
@since_option
@until_option
@click.option("--campaign", default=None, help="Only this campaign.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@click.option("--central", "from_central", is_flag=True, help="From the central store's counters.")
@click.option("--node", default=None, help="With --central: only this node.")
@dir_option
@config_option
@errors_are_one_line
def stats_command(
    since: str | None,
    until: str | None,
    campaign: str | None,
    as_json: bool,
    from_central: bool,
    node: str | None,
    directory: Path | None,
    config_path: Path | None,
) -> None:
    """Decisions, allowed, denied and deny rate; by reason, campaign and hour of day."""
    if from_central and directory is not None:
        raise Failure("--central reads the central store: leave --dir out")
    if node is not None and not from_central:
        raise Failure("--node goes with --central")
    where = Where(config_path, directory)
    start, stop = _range(where, since, until)
    torn: list[Torn] = []
    if from_central:
        summary = central_stats(config_path, start, stop, where.zone, campaign, node)
    else:
        query = Query(since_ms=start, until_ms=stop, campaign=campaign)
        found = search(where.directory, query, torn)
        summary = stats((record for _, record in found), where.zone)
    summary["since"], summary["until"] = since, until
    if as_json:
        click.echo(orjson.dumps(summary).decode())
        warn_torn(torn)
        return
    console = Console()
    console.print(
        f"[bold]{summary['decisions']:,}[/] decisions: [green]{summary['allowed']:,} allowed[/], "
        f"[red]{summary['denied']:,} denied[/] (deny rate {summary['deny_rate']:.1%})",
        highlight=False,
    )
    shadow = summary["shadowed"] > 0
    if shadow:
        console.print(
            f"[yellow]{summary['shadowed']:,} of the denials were answered ALLOW in shadow"
            " mode: the calls dialguard would have blocked[/]",
            highlight=False,
        )
    if summary["degraded"]:
        console.print(
            f"[yellow]{summary['degraded']:,} decisions were taken by the campaign's fail mode"
            " (Redis unreachable or the deadline passed): degraded[/]",
            highlight=False,
        )
    if summary["outcomes"]:
        told = ", ".join(f"{k} {v:,}" for k, v in summary["outcomes"].items())
        console.print(f"outcomes recorded: {told}", highlight=False)
    shadow_column = ("shadow (allowed)",) if shadow else ()
    by_reason = Table(
        "result", "reason", "decisions", "share", *shadow_column, title="by reason", box=None
    )
    for row in summary["by_reason"]:
        share = row["decisions"] / summary["decisions"]
        shadowed = (f"{row['shadowed']:,}",) if shadow else ()
        by_reason.add_row(
            row["result"], row["reason"], f"{row['decisions']:,}", f"{share:.1%}", *shadowed
        )
    by_campaign = Table(
        "campaign", "decisions", "allowed", "denied", "deny rate", *shadow_column,
        title="by campaign", box=None,
    )  # fmt: skip
    for row in summary["by_campaign"]:
        shadowed = (f"{row['shadowed']:,}",) if shadow else ()
        by_campaign.add_row(
            row["campaign"],
            f"{row['decisions']:,}",
            f"{row['allowed']:,}",
            f"{row['denied']:,}",
            f"{row['deny_rate']:.1%}",
            *shadowed,
        )
    by_hour = Table(
        f"hour ({summary['timezone']})", "decisions", "allowed", "denied", title="by hour",
        box=None,
    )  # fmt: skip
    for row in summary["by_hour"]:
        by_hour.add_row(
            f"{row['hour']:02d}h",
            f"{row['decisions']:,}",
            f"{row['allowed']:,}",
            f"{row['denied']:,}",
        )
    for table in (by_reason, by_campaign, by_hour):
        console.print(table)
    warn_torn(torn)


@audit.command("export")
@since_option
@until_option
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl")
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Output file."
)
@click.option("--mask", is_flag=True, help=f"Pseudonymise numbers (key: ${MASK_KEY_ENV}).")
@click.option(
    "--mask-key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Read the pseudonymisation key from this file instead.",
)
@dir_option
@config_option
@errors_are_one_line
def export_command(
    since: str | None,
    until: str | None,
    fmt: str,
    out: Path,
    mask: bool,
    mask_key_file: Path | None,
    directory: Path | None,
    config_path: Path | None,
) -> None:
    """Write a date range to CSV or JSON Lines, and OUT.manifest.json beside it."""
    where = Where(config_path, directory)
    start, stop = _range(where, since, until)
    key = _mask_key(mask_key_file) if mask else None
    if mask_key_file is not None and not mask:
        raise Failure("--mask-key-file goes with --mask")
    torn: list[Torn] = []
    found = search(where.directory, Query(since_ms=start, until_ms=stop), torn)
    try:
        tally, sha256 = write_export(out, fmt, found, key)
    except OSError as exc:
        raise Failure(f"{out}: cannot write: {exc.strerror}") from None
    manifest = {
        "file": out.name,
        "format": fmt,
        "sha256": sha256,
        **tally.ends,
        "since": since,
        "until": until,
        "timezone": where.zone.key,
        "masked": key is not None,
        "journal": str(where.directory),
        "created": created_now(),
    }
    manifest_path = out.with_name(out.name + ".manifest.json")
    try:
        manifest_path.write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n")
    except OSError as exc:
        raise Failure(f"{manifest_path}: cannot write: {exc.strerror}") from None
    click.echo(f"{tally.count:,} records written to {out}; manifest {manifest_path}")
    warn_torn(torn)


def _mask_key(path: Path | None) -> bytes:
    if path is not None:
        try:
            key = path.read_bytes().strip()
        except OSError as exc:
            raise Failure(f"{path}: cannot read the mask key: {exc.strerror}") from None
    else:
        key = os.environ.get(MASK_KEY_ENV, "").encode()
    if len(key) < MIN_KEY_BYTES:
        raise Failure(
            f"--mask needs a key of at least 16 bytes in ${MASK_KEY_ENV} or --mask-key-file "
            "(keep it: the same key gives the same pseudonyms across exports)"
        )
    return key


@audit.command("verify")
@since_option
@until_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@click.option(
    "--central",
    "in_central",
    is_flag=True,
    help="Check the central store's copy of every node's chain instead (docs/central.md).",
)
@click.option("--node", default=None, help="With --central: only this node.")
@dir_option
@config_option
@errors_are_one_line
def verify_command(
    since: str | None,
    until: str | None,
    as_json: bool,
    in_central: bool,
    node: str | None,
    directory: Path | None,
    config_path: Path | None,
) -> None:
    """Check the hash chain (every file, or those of a range). Exit 0 intact, 3 not."""
    if in_central:
        if directory is not None or since is not None or until is not None:
            raise Failure("--central checks whole chains: leave --dir, --since, --until out")
        central_verify(config_path, node, as_json)
        return
    if node is not None:
        raise Failure("--node goes with --central")
    where = Where(config_path, directory)
    start, stop = _range(where, since, until)
    # Whole files, one a UTC day: those that can hold a record of the range, as search reads.
    first, last = Query(since_ms=start, until_ms=stop).day_range()
    result = verify(where.directory, first, last)
    if as_json:
        click.echo(
            orjson.dumps(
                {
                    "intact": result.intact,
                    "records": result.records,
                    "files": result.files,
                    "first_hash": result.first_hash,
                    "last_hash": result.last_hash,
                    "problem": result.problem,
                    "notes": result.notes,
                }
            ).decode()
        )
    elif result.intact:
        click.echo(
            f"intact: {result.records:,} records in {result.files} "
            f"{'file' if result.files == 1 else 'files'}; "
            f"first hash {result.first_hash or '-'}, last hash {result.last_hash or '-'}"
        )
    else:
        click.echo(f"NOT INTACT after {result.records:,} good records: {result.problem}")
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    if not result.intact:
        sys.exit(EXIT_BROKEN)


@audit.command("tail")
@click.option("-n", "count", type=click.IntRange(0, 100_000), default=10, show_default=True)
@click.option("-f", "--follow", "keep_following", is_flag=True, help="Wait for new records.")
@click.option("--json", "as_json", is_flag=True, help="JSON Lines: the records as stored.")
@dir_option
@config_option
@errors_are_one_line
def tail_command(
    count: int,
    keep_following: bool,
    as_json: bool,
    directory: Path | None,
    config_path: Path | None,
) -> None:
    """The last records; with -f, every new one as it is written (Ctrl-C stops)."""
    where = Where(config_path, directory)
    torn: list[Torn] = []
    try:
        for line in follow(where.directory, count, keep_following=keep_following, torn=torn):
            if as_json:
                sys.stdout.buffer.write(line + b"\n")
            else:
                sys.stdout.write(_one_line(where, line) + "\n")
            sys.stdout.flush()
    except KeyboardInterrupt:
        pass
    warn_torn(torn)


def _one_line(where: Where, line: bytes) -> str:
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return f"(unreadable line) {line[:80]!r}"
    when = where.local(int(record.get("ts", 0)))
    kind = record.get("kind", "decision")
    if kind == "outcome":
        head = f"OUTCOME {record.get('outcome')}"
    elif kind == "scrub":
        head = f"SCRUB {record.get('callable')}/{record.get('leads')} callable"
    else:
        head = f"{record.get('result')} {record.get('reason')}"
    return (
        f"{when}  {head:<28} {record.get('number') or record.get('number_raw') or '-':<16} "
        f"{record.get('campaign') or '-':<20} {record.get('id')}"
    )


@audit.command("prune")
@click.option("--dry-run", is_flag=True, help="List what would be removed.")
@config_option
@errors_are_one_line
def prune_command(dry_run: bool, config_path: Path | None) -> None:
    """Remove day files older than [audit] retention_days (run it daily, e.g. from cron)."""
    where = Where(config_path, None)
    try:
        removed = prune(
            where.directory, where.retention_days, datetime.now(UTC).date(), dry_run=dry_run
        )
    except OSError as exc:
        raise AuditUnavailable(f"{where.directory}: cannot prune: {exc.strerror}") from None
    verb = "would remove" if dry_run else "removed"
    names = ", ".join(path.name for path in removed) or "nothing"
    click.echo(f"{verb} {len(removed)} files older than {where.retention_days} days: {names}")


@audit.command("replay")
@click.option(
    "--policy",
    "policy_file",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="The policy file to decide the past calls under.",
)
@since_option
@until_option
@click.option("--campaign", default=None, help="Only this campaign.")
@click.option("--examples", type=click.IntRange(0, 1000), default=10, show_default=True)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=None,
    help="Processes sharing the day files (default: one per CPU, at most 8).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@operator_option
@dir_option
@config_option
@errors_are_one_line
def replay_command(
    policy_file: Path,
    since: str | None,
    until: str | None,
    campaign: str | None,
    examples: int,
    workers: int | None,
    as_json: bool,
    operator: str,
    directory: Path | None,
    config_path: Path | None,
) -> None:
    """Decide past calls again under another policy (docs/policy.md): what would change.

    Read-only: it writes one audit record of kind `replay` (the file's hash and the
    counts) to the configured journal, none with --dir (a copy)."""
    where = Where(config_path, directory)
    policy = load_policy(policy_file)
    start, stop = _range(where, since, until)
    query = Query(since_ms=start, until_ms=stop, campaign=campaign, kind="decision")
    if workers is None:
        workers = min(len(os.sched_getaffinity(0)), 8)
    task = _ReplayPart(where.directory, query, policy, where.zone, workers)
    if workers == 1:
        parts = [task(0)]
    else:
        # Day files shared out between processes (forked: the policy goes as it is).
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            parts = pool.map(task, range(workers))
    report, torn = parts[0]
    for other, other_torn in parts[1:]:
        report.merge(other)
        torn += other_torn
    summary = report.as_json()
    summary["examples"] = summary["examples"][:examples]
    summary = {
        "policy": {"name": policy.name, "hash": policy.hash, "file": str(policy_file)},
        "since": since,
        "until": until,
        "campaign": campaign,
        "timezone": where.zone.key,
        **summary,
    }
    recorded = None
    if directory is None:
        recorded = _record_replay(where, policy_file, summary, report, operator)
    summary["record"] = recorded
    if as_json:
        click.echo(orjson.dumps(summary).decode())
    else:
        _print_replay(summary, report)
    warn_torn(torn)


class _ReplayPart:
    """One process's share of a replay: every n-th day file of the range."""

    def __init__(
        self, directory: Path, query: Query, policy: Policy, zone: ZoneInfo, parts: int
    ) -> None:
        self.directory, self.query, self.policy, self.zone = directory, query, policy, zone
        self.parts = parts

    def __call__(self, index: int) -> tuple[Report, list[Torn]]:
        torn: list[Torn] = []
        zone = self.zone
        files = files_of(self.directory, self.query, (index, self.parts))
        found = (line for path, size in files for _, line in lines(path, size, torn))
        report = replay(
            decisions(found, self.query),
            self.policy,
            lambda ms: datetime.fromtimestamp(ms / 1000, zone).date(),
        )
        return report, torn


def _record_replay(
    where: Where, policy_file: Path, summary: dict[str, Any], report: Report, operator: str
) -> str:

    now = datetime.now(UTC)
    record = {
        "id": new_id(now),
        "ts": int(now.timestamp() * 1000),
        "node": where.node,
        "kind": "replay",
        "operator": operator,
        "policy": {"name": summary["policy"]["name"], "hash": summary["policy"]["hash"]},
        "file": str(policy_file),
        "since": summary["since"],
        "until": summary["until"],
        "campaign": summary["campaign"],
        "records": report.records,
        "replayed": report.replayed,
        "not_replayable": report.not_replayable,
        "changed": report.changed,
        "newly_denied": report.newly_denied,
        "newly_allowed": report.newly_allowed,
        "reason_changed": report.reason_changed,
    }

    async def append() -> None:
        journal = Journal(where.directory)
        await journal.append(record)

    asyncio.run(append())
    return str(record["id"])


def _print_replay(summary: dict[str, Any], report: Report) -> None:
    console = Console()
    policy = summary["policy"]
    console.print(
        f"replayed [bold]{report.replayed:,}[/] of {report.records:,} decisions under policy "
        f"{policy['name']} {policy['hash']} ({policy['file']}): "
        f"[bold]{report.changed:,} would change[/] ([red]{report.newly_denied:,} newly "
        f"denied[/], [green]{report.newly_allowed:,} newly allowed[/], "
        f"{report.reason_changed:,} with another reason)",
        highlight=False,
    )
    if report.not_replayable:
        console.print(
            f"[yellow]{report.not_replayable:,} not replayable[/] (recorded before decisions "
            "kept a facts snapshot)",
            highlight=False,
        )
    if summary["by_change"]:
        table = Table("from", "to", "decisions", title="by change", box=None)
        for row in summary["by_change"]:
            table.add_row(row["from"], row["to"], f"{row['decisions']:,}")
        console.print(table)
    for title, rows, key in (
        ("by campaign", summary["by_campaign"], "campaign"),
        (f"by day ({summary['timezone']})", summary["by_day"], "day"),
    ):
        if not rows:
            continue
        table = Table(key, "newly denied", "newly allowed", "other reason", title=title, box=None)
        for row in rows:
            table.add_row(
                row[key],
                f"{row['newly_denied']:,}",
                f"{row['newly_allowed']:,}",
                f"{row['reason_changed']:,}",
            )
        console.print(table)
    if summary["examples"]:
        table = Table("id", "local time", "number", "campaign", "from", "to", "why", box=None)
        for example in summary["examples"]:
            table.add_row(
                str(example["id"]),
                str(example["local_time"]),
                str(example["number"]),
                example["campaign"],
                f"{example['from']['result']} {example['from']['reason']}",
                f"{example['to']['result']} {example['to']['reason']}",
                f"{example['rule']}: {example['detail']}",
            )
        console.print(table, highlight=False)
    if summary["record"]:
        console.print(f"recorded as {summary['record']} (kind replay)", style="dim")
