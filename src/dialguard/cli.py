"""The `dialguard` command. Exit codes: 0 success (a DENY is a successful answer),
1 usage or input error, 2 a dependency (Redis, journal) unavailable."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime
from functools import wraps
from pathlib import Path
from typing import Any, NoReturn, ParamSpec, TypeVar
from zoneinfo import ZoneInfo

import click
import structlog
from rich.console import Console
from rich.table import Table

from dialguard import imports
from dialguard.audit import AuditUnavailable, Journal
from dialguard.config import Config, ConfigError, load_config
from dialguard.model import CallRequest, Campaign, Decision, Reason
from dialguard.numbers import InvalidNumber, Number, normalise
from dialguard.service import OutcomeKind, Service
from dialguard.store import Store, StoreUnavailable

EXIT_INPUT = 1
EXIT_DEPENDENCY = 2
# Redis timeout of the commands that move or count whole lists.
BULK_TIMEOUT_MS = 30_000

P = ParamSpec("P")
R = TypeVar("R")


class Failure(Exception):
    def __init__(self, message: str, code: int = EXIT_INPUT) -> None:
        super().__init__(message)
        self.code = code


def _errors_are_one_line(func: Callable[P, R]) -> Callable[P, R]:
    """Turn every expected failure into one line on stderr and its exit code."""

    @wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except Failure as exc:
            _fail(str(exc), exc.code)
        except (ConfigError, InvalidNumber, imports.BadImportFile) as exc:
            _fail(str(exc), EXIT_INPUT)
        except (StoreUnavailable, AuditUnavailable) as exc:
            _fail(str(exc), EXIT_DEPENDENCY)

    return wrapper


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"dialguard: {message}", err=True)
    sys.exit(code)


def configure_logging(level: int) -> None:
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # One write per line: worker processes share stderr, and a line written in two
        # pieces could interleave with another process's.
        logger_factory=structlog.WriteLoggerFactory(sys.stderr),
    )


def _at(value: str | None, config: Config) -> datetime:
    if value is None:
        return datetime.now(UTC)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise Failure(f"--at {value!r} is not an ISO 8601 date-time (2026-11-30T10:30)") from None
    if not imports.in_supported_years(moment):
        raise Failure(f"--at {value!r} is outside the years the rules are kept for")
    return (
        moment if moment.tzinfo else moment.replace(tzinfo=ZoneInfo(config.policy.default_timezone))
    )


def _run(config: Config, body: Callable[[Store], Awaitable[R]], *, bulk: bool = False) -> R:
    """Run `body` with a Store. `bulk`: an import or a census, whose commands may take a
    while on a busy Redis; the configured timeout is meant for decisions."""
    timeout_ms = max(config.redis.timeout_ms, BULK_TIMEOUT_MS) if bulk else config.redis.timeout_ms

    async def main() -> R:
        store = Store.from_url(config.redis.url, config.redis.prefix, timeout_ms)
        try:
            return await body(store)
        finally:
            await store.close()

    return asyncio.run(main())


def _campaign(config: Config, name: str) -> Campaign:
    campaign = config.campaigns.get(name)
    if campaign is None:
        known = ", ".join(sorted(config.campaigns))
        raise Failure(f"unknown campaign {name!r} (configured: {known})")
    return campaign


def _number(raw: str) -> Number:
    number = normalise(raw)
    if number.never_blocked:
        raise Failure(f"{raw!r} is an emergency or short number; it is never blocked")
    return number


config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Configuration file (default: $DIALGUARD_CONFIG or config/dialguard.toml).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """dialguard: a dial-time compliance gate for outbound calls on Asterisk."""
    # One-shot commands report failures as one line themselves; `serve` turns logs on.
    configure_logging(logging.CRITICAL)


def main() -> None:
    """The console script: click's usage errors become one line and exit code 1."""
    try:
        code = cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        _fail("aborted", EXIT_INPUT)
    except click.ClickException as exc:
        _fail(exc.format_message().replace("\n", " "), EXIT_INPUT)
    sys.exit(code if isinstance(code, int) else 0)


@cli.command()
@click.argument("number")
@click.option("--campaign", required=True, help="Campaign name from the configuration.")
@click.option("--at", "at", default=None, help="Instant of the call, ISO 8601 (default: now).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option(
    "--record", is_flag=True, help="Count the attempt and write the audit record, as a call would."
)
@config_option
@_errors_are_one_line
def check(
    number: str,
    campaign: str,
    at: str | None,
    as_json: bool,
    record: bool,
    config_path: Path | None,
) -> None:
    """The decision the service would take for NUMBER. No side effects unless --record."""
    config = load_config(config_path)
    now = _at(at, config)
    journal = Journal(config.audit_dir) if record else None
    request = CallRequest(number_raw=number, campaign=campaign, adapter="cli")
    verdict = _run(
        config,
        lambda store: Service(config, store, journal).decide(request, now=now, record=record),
    )
    decision = verdict.decision
    if as_json:
        click.echo(
            json.dumps(_decision_json(verdict.id, request, decision, record), ensure_ascii=False)
        )
    else:
        _print_decision(verdict.id, decision)
    if decision.reason is Reason.UNKNOWN_CAMPAIGN:
        _campaign(config, campaign)  # raises the message naming the configured campaigns
    if decision.reason is Reason.INVALID_NUMBER:
        _fail(decision.rules[-1].detail, EXIT_INPUT)
    if decision.degraded:
        _fail(decision.degraded, EXIT_DEPENDENCY)


def _decision_json(
    decision_id: str, request: CallRequest, decision: Decision, recorded: bool
) -> dict[str, Any]:
    return {
        "id": decision_id,
        "result": decision.result.value,
        "reason": decision.reason.value,
        "number": decision.number.e164 if decision.number else None,
        "number_raw": request.number_raw,
        "kind": decision.number.kind.value if decision.number else None,
        "territory": decision.number.territory if decision.number else None,
        "campaign": request.campaign,
        "local_time": decision.local_time,
        "attempts_30d": decision.attempts_30d,
        "rules": [r.as_json() for r in decision.rules],
        "evidence": dict(decision.evidence),
        "policy": {"name": decision.policy.name, "hash": decision.policy.hash},
        "degraded": decision.degraded,
        "recorded": recorded,
    }


def _print_decision(decision_id: str, decision: Decision) -> None:
    console = Console()
    colour = "green" if decision.allowed else "red"
    number = decision.number.e164 if decision.number else "-"
    console.print(
        f"[bold {colour}]{decision.result.value}[/] {decision.reason.value}  {number}  "
        f"local {decision.local_time or '-'}  id {decision_id}",
        highlight=False,
    )
    table = Table("rule", "outcome", "reason", "detail", box=None, pad_edge=False)
    for rule in decision.rules:
        table.add_row(rule.rule, rule.outcome.value, rule.reason or "", rule.detail)
    console.print(table)
    console.print(f"policy {decision.policy.name} {decision.policy.hash}", style="dim")


@cli.command()
@click.option(
    "--workers", type=click.IntRange(1, 64), default=None, help="Processes (default: config)."
)
@config_option
@_errors_are_one_line
def serve(workers: int | None, config_path: Path | None) -> None:
    """Run the FastAGI server until SIGTERM (stops accepting, finishes sessions in flight)."""
    from dialguard.serve import serve as run  # imported here: keeps the other commands light

    config = load_config(config_path)
    configure_logging(logging.INFO)
    sys.exit(run(config, workers or config.server.workers))


@cli.group()
def dnc() -> None:
    """The company's do-not-call list (live changes)."""


@dnc.command("add")
@click.argument("number")
@click.option("--reason", default="added by operator", help="Why, kept as evidence.")
@config_option
@_errors_are_one_line
def dnc_add(number: str, reason: str, config_path: Path | None) -> None:
    """Add NUMBER to the do-not-call list; effective for the very next call."""
    config = load_config(config_path)
    target = _number(number)
    if not imports.is_valid_ref(reason):
        raise Failure("--reason must be at most 200 characters, without '|' or control characters")
    _run(config, lambda store: store.dnc_add(target, reason, datetime.now(UTC)))
    click.echo(f"{target.e164} added to the do-not-call list")


@dnc.command("remove")
@click.argument("number")
@config_option
@_errors_are_one_line
def dnc_remove(number: str, config_path: Path | None) -> None:
    """Remove NUMBER from the do-not-call list."""
    config = load_config(config_path)
    target = _number(number)
    removed = _run(config, lambda store: store.dnc_remove(target))
    click.echo(f"{target.e164} {'removed from' if removed else 'was not on'} the do-not-call list")


@cli.group()
def consent() -> None:
    """Consents (live changes)."""


@consent.command("withdraw")
@click.argument("number")
@click.option("--principal", required=True, help="The professional the consent was given to.")
@click.option("--at", "at", default=None, help="When it was withdrawn, ISO 8601 (default: now).")
@config_option
@_errors_are_one_line
def consent_withdraw(number: str, principal: str, at: str | None, config_path: Path | None) -> None:
    """Record that the consumer withdrew consent given to PRINCIPAL."""
    config = load_config(config_path)
    target = _number(number)
    if not imports.is_valid_principal(principal):
        raise Failure(f"--principal {principal!r} must be 1-64 letters, digits, '_', '.', '-'")
    now = _at(at, config)
    _run(config, lambda store: store.withdraw_consent(target, principal, now))
    click.echo(f"consent of {target.e164} to {principal} withdrawn at {now.isoformat()}")


@cli.command()
@click.argument("number")
@click.argument("kind", type=click.Choice([k.value for k in OutcomeKind]))
@click.option("--campaign", required=True, help="Campaign the call belonged to.")
@click.option("--at", "at", default=None, help="When, ISO 8601 (default: now).")
@config_option
@_errors_are_one_line
def outcome(
    number: str, kind: str, campaign: str, at: str | None, config_path: Path | None
) -> None:
    """Record what the consumer said: `refused` (60-day block, consent withdrawn) or
    `do-not-call` (added to the company's list)."""
    config = load_config(config_path)
    target = _number(number)
    camp = _campaign(config, campaign)
    now = _at(at, config)
    journal = Journal(config.audit_dir)
    record_id = _run(
        config,
        lambda store: Service(config, store, journal).record_outcome(
            target, camp, OutcomeKind(kind), now
        ),
    )
    click.echo(f"{kind} recorded for {target.e164} ({camp.principal}), audit id {record_id}")


@cli.command("import")
@click.argument("kind", type=click.Choice(imports.KINDS))
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
@config_option
@_errors_are_one_line
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
    config_path: Path | None,
) -> None:
    """Load a CSV file (header row, `,` or `;`) of KIND: dnc, consent, contract, bloctel.

    Without --replace the rows are added to the list in force (--remove: taken off it).
    """
    from dialguard import import_cli

    config = load_config(config_path)
    if replace and remove:
        raise Failure("--replace and --remove exclude each other")
    if remove and kind != "dnc":
        raise Failure("--remove applies to dnc files only")
    if ref and kind != "bloctel":
        raise Failure("--ref applies to bloctel imports only")
    if ref and not imports.is_valid_ref(ref):
        raise Failure("--ref must be at most 200 characters, without '|' or control characters")
    request = import_cli.Request(
        kind=kind,
        path=file,
        mode="replace" if replace else "remove" if remove else "add",
        zone=ZoneInfo(config.policy.default_timezone),
        checked_on=_checked_on(kind, checked_at, ZoneInfo(config.policy.default_timezone)),
        ref=ref,
        dry_run=dry_run,
        rejects_path=rejects_path,
        max_rejects=max_rejects,
    )
    try:
        if dry_run:
            outcome = asyncio.run(import_cli.run_import(request, None))
        else:
            outcome = _run(config, lambda store: import_cli.run_import(request, store), bulk=True)
    except imports.BadImportFile as exc:
        raise Failure(f"{file}: {exc}") from None
    except import_cli.ImportFailed as exc:
        raise Failure(str(exc)) from None
    for line in import_cli.report(request, outcome):
        click.echo(line)
    if outcome.refusal:
        raise Failure(outcome.refusal.replace("nothing loaded", "it would be refused"))


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


def _add_audit_commands() -> None:
    # Imported last: audit_cli builds on the helpers above.
    from dialguard.audit_cli import audit
    from dialguard.lists_cli import lists

    cli.add_command(audit)
    cli.add_command(lists)


_add_audit_commands()
