"""`dialguard import`: a CSV file into Redis, with a progress bar on a terminal, the first
bad lines on stderr and a summary (the work itself: dialguard.importing)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import click

from dialguard import import_files, importing
from dialguard.audit import Journal
from dialguard.callerids import BadCallerIds, read_file
from dialguard.cli.common import (
    Failure,
    config_option,
    errors_are_one_line,
    operator_option,
    run_with_store,
)
from dialguard.cli.progress import Bar
from dialguard.config import Config, ConfigError, load_config
from dialguard.store import Store

__all__ = ["import_", "report"]


def _to_stderr(message: str) -> None:
    click.echo(message, err=True)


@click.command("import")
@click.argument("kind", type=click.Choice([*import_files.KINDS, "callerid"]))
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--replace", is_flag=True, help="Swap the whole list for this file, atomically.")
@click.option("--remove", is_flag=True, help="dnc only: take this file's numbers off the list.")
@click.option(
    "--checked-at",
    "checked_at",
    default=None,
    help="bloctel only: the date the registry checked these numbers (YYYY-MM-DD).",
)
@click.option("--ref", default="", help="bloctel only: the registry's reference of this check.")
@click.option("--dry-run", is_flag=True, help="Check every line and report; load nothing.")
@click.option(
    "--rejects",
    "rejects_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where to write the bad lines (default: FILE.rejects.csv beside FILE).",
)
@click.option(
    "--max-rejects",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Load the good lines when at most this many are bad (they go to the rejects file).",
)
@click.option(
    "--principal", default=None, help="callerid only: the rows of this company (principal)."
)
@operator_option
@config_option
@errors_are_one_line
def import_(
    kind: str,
    file: Path,
    replace: bool,
    remove: bool,
    checked_at: str | None,
    ref: str,
    dry_run: bool,
    rejects_path: Path | None,
    max_rejects: int,
    principal: str | None,
    operator: str,
    config_path: Path | None,
) -> None:
    """Load a CSV file (header row, `,` or `;`) of KIND: dnc, consent, contract, bloctel;
    or check a callerid file.

    Without --replace the rows are added to the list in force (--remove: taken off it).
    Each import is an audit record (file, SHA-256, counts, version, operator) and its file
    is kept, compressed, in the audit directory's imports/ (docs/imports.md). A callerid
    file is not loaded into Redis: the campaigns name it (caller_ids_file), the
    configuration reads it at start and on reload; this checks it and says what it holds.
    """
    if kind == "callerid":
        extra = replace or remove or checked_at or ref or rejects_path or max_rejects
        if extra:
            raise Failure("callerid takes --principal and --config only (docs/imports.md)")
        for line in _check_callerids(file, principal, config_path):
            click.echo(line)
        return
    if principal is not None:
        raise Failure("--principal applies to callerid files only")
    config = load_config(config_path)
    if replace and remove:
        raise Failure("--replace and --remove exclude each other")
    if remove and kind != "dnc":
        raise Failure("--remove applies to dnc files only")
    if ref and kind != "bloctel":
        raise Failure("--ref applies to bloctel imports only")
    if ref and not import_files.is_valid_ref(ref):
        raise Failure("--ref must be at most 200 characters, without '|' or control characters")
    request = importing.Request(
        kind=kind,
        path=file,
        mode="replace" if replace else "remove" if remove else "add",
        zone=ZoneInfo(config.policy.default_timezone),
        checked_on=_checked_on(kind, checked_at, ZoneInfo(config.policy.default_timezone)),
        ref=ref,
        dry_run=dry_run,
        rejects_path=rejects_path,
        max_rejects=max_rejects,
        operator=operator,
    )
    accounting = importing.Accounting(
        Journal(config.audit_dir), config.audit_dir / "imports", config.node
    )

    def run(store: Store | None) -> Coroutine[Any, Any, importing.Outcome]:
        return importing.run_import(
            request, store, notify=_to_stderr, progress=Bar(), accounting=accounting
        )

    try:
        # A dry run reads no Redis: it works where Redis is out of reach.
        outcome = asyncio.run(run(None)) if dry_run else run_with_store(config, run, bulk=True)
    except import_files.BadImportFile as exc:
        raise Failure(f"{file}: {exc}") from None
    except importing.ImportFailed as exc:
        raise Failure(str(exc)) from None
    for line in report(request, outcome):
        click.echo(line)
    if outcome.refusal:
        raise Failure(outcome.refusal.replace("nothing loaded", "it would be refused"))


def _check_callerids(file: Path, principal: str | None, config_path: Path | None) -> list[str]:
    """What a caller-ID file holds (BadCallerIds: refused, in one line), and which
    campaigns of the configuration read it, when it can be read."""
    try:
        entries = read_file(file, principal).entries
    except BadCallerIds as exc:
        raise Failure(str(exc)) from None
    unread = ""
    try:
        config: Config | None = load_config(config_path)
    except ConfigError as exc:
        config, unread = None, str(exc)
    zone = ZoneInfo(config.policy.default_timezone if config else "Europe/Paris")
    today = datetime.now(zone).date()  # authorisation dates are callee-local dates
    numbers = sum(e.high - e.low + 1 for e in entries)
    valid = sum(e.holds_on(today) for e in entries)
    ended = sum(e.valid_until is not None and e.valid_until < today for e in entries)
    whose = f" of {principal}" if principal else ""
    lines = [
        f"{file}: {len(entries)} entries{whose} ({numbers:,} numbers): {valid} valid today,"
        f" {ended} expired, {len(entries) - valid - ended} not valid yet"
    ]
    if config is None:
        lines.append(f"{file}: not compared with the configuration ({unread})")
        return lines
    readers = [
        name
        for name, campaign in sorted(config.campaigns.items())
        if campaign.caller_ids_file is not None and campaign.caller_ids_file.samefile(file)
    ]
    said = ", ".join(readers) if readers else "none: name it in a campaign's caller_ids_file"
    lines.append(f"{file}: read by campaigns {said} (at start and on reload)")
    return lines


def _checked_on(kind: str, checked_at: str | None, zone: ZoneInfo) -> date | None:
    if kind != "bloctel":
        if checked_at is not None:
            raise Failure("--checked-at applies to bloctel imports only")
        return None
    if checked_at is None:
        raise Failure("bloctel imports need --checked-at YYYY-MM-DD (the registry's check date)")
    try:
        day = date.fromisoformat(checked_at)
    except ValueError:
        raise Failure(f"--checked-at {checked_at!r} is not a date (YYYY-MM-DD)") from None
    # A check dated after today is a typo; it would never count (OPTOUT_UNVERIFIED).
    if day > datetime.now(UTC).astimezone(zone).date():
        raise Failure(f"--checked-at {checked_at} is in the future")
    return day


# Past this many registry result sets in force, the summary suggests merging them (each
# set costs every decision up to four lookups inside Redis, ~2 µs).
MANY_RESULT_SETS = 8
_DONE = {"add": "merged", "replace": "replaced the list", "remove": "removed"}
_ENTRIES = {"dnc": "numbers", "bloctel": "numbers", "consent": "consents", "contract": "pairs"}


def report(request: importing.Request, outcome: importing.Outcome) -> list[str]:
    """The summary printed on stdout."""
    name, check = request.path, outcome.check
    rate = f"{check.rows / outcome.seconds:,.0f} rows/s" if outcome.seconds > 0 else ""
    rejected = f"{outcome.rejected} rejected" + (
        f" (listed in {outcome.rejects_path})" if outcome.rejects_path else ""
    )
    summary = outcome.summary
    if summary is None:
        verdict = (outcome.refusal and "it would be refused") or "it would load"
        return [f"{name}: {check.rows} {request.kind} rows good, {rejected}; {verdict} (dry run)"]
    changed = "removed" if summary.mode == "remove" else "new"
    target = (
        f"registry result set {summary.version}"
        if request.kind == "bloctel"
        else f"{'dnc' if request.kind == 'dnc' else request.kind} list (version {summary.version})"
    )
    hint = []
    if summary.result_sets > MANY_RESULT_SETS:
        hint = [
            f"{name}: {summary.result_sets} registry result sets in force: each adds lookups"
            " to every decision; load a merged check with --replace to keep them few"
        ]
    return [
        f"{name}: {summary.rows} {request.kind} rows loaded ({_DONE[summary.mode]})",
        f"{name}: {check.lines} lines read: {summary.changed} {changed},"
        f" {summary.unchanged} unchanged"
        f" (repeated, {'not there' if summary.mode == 'remove' else 'already there'}"
        f"{' or older' if request.kind == 'consent' else ''}), {rejected};"
        f" the {target} holds {summary.size:,} {_ENTRIES[request.kind]};"
        f" {outcome.seconds:.1f} s, {rate}",
        *hint,
    ]
