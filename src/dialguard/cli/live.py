"""Live changes, effective for the very next call: `dnc add|remove`, `consent
add|withdraw`, `contract add|end`, `outcome`. Each goes through the service, which
normalises and refuses numbers the way a call would (docs/rules.md) and checks the rest
(one-line errors, nothing written)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import date, datetime
from pathlib import Path
from typing import TypeVar

import click

from dialguard import import_files
from dialguard.audit import Journal
from dialguard.cli.common import (
    EXIT_DEPENDENCY,
    Failure,
    at,
    campaign_named,
    change_at,
    config_option,
    errors_are_one_line,
    operator_option,
    run_with_store,
)
from dialguard.config import Config, load_config
from dialguard.model import CallRequest, Sector
from dialguard.service import OutcomeKind, OutcomeStatus, Service

__all__ = ["consent", "contract", "dnc", "outcome"]

T = TypeVar("T")


def _through_service(config: Config, change: Callable[[Service], Awaitable[T]]) -> T:
    """Run one change through the service: journalled first, then applied (or pending)."""
    journal = Journal(config.audit_dir)
    return run_with_store(config, lambda store: change(Service(config, store, journal)))


def _checked_reason(reason: str) -> str:
    if not import_files.is_valid_ref(reason):
        raise Failure("--reason must be at most 200 characters, without '|' or control characters")
    return reason


def _pending(record_id: str) -> Failure:
    return Failure(
        f"Redis unavailable: the change is kept in the audit journal as {record_id} and"
        " applied once Redis answers (by `dialguard serve`, or `dialguard audit apply-pending`)",
        EXIT_DEPENDENCY,
    )


@click.group()
def dnc() -> None:
    """The company's do-not-call list (live changes, each an audit record)."""


@dnc.command("add")
@click.argument("number")
@click.option("--reason", default="added by operator", help="Why, kept as evidence.")
@operator_option
@config_option
@errors_are_one_line
def dnc_add(number: str, reason: str, operator: str, config_path: Path | None) -> None:
    """Add NUMBER to the do-not-call list; effective for the very next call."""
    config = load_config(config_path)
    why = _checked_reason(reason)
    target, record_id, applied = _through_service(
        config, lambda service: service.dnc_add(number, why, operator=operator)
    )
    if not applied:
        raise _pending(record_id)
    click.echo(f"{target.e164} added to the do-not-call list (audit id {record_id})")


@dnc.command("remove")
@click.argument("number")
@click.option("--reason", required=True, help="Why it may be called again, kept as evidence.")
@operator_option
@config_option
@errors_are_one_line
def dnc_remove(number: str, reason: str, operator: str, config_path: Path | None) -> None:
    """Remove NUMBER from the do-not-call list."""
    config = load_config(config_path)
    why = _checked_reason(reason)
    target, record_id, removed = _through_service(
        config, lambda service: service.dnc_remove(number, why, operator=operator)
    )
    if removed is None:
        raise _pending(record_id)
    state = "removed from" if removed else "was not on"
    click.echo(f"{target.e164} {state} the do-not-call list (audit id {record_id})")


@click.group()
def consent() -> None:
    """Consents (live changes, each an audit record)."""


@consent.command("withdraw")
@click.argument("number")
@click.option("--principal", required=True, help="The professional the consent was given to.")
@click.option("--at", "when", default=None, help="When it was withdrawn, ISO 8601 (default: now).")
@operator_option
@config_option
@errors_are_one_line
def consent_withdraw(
    number: str, principal: str, when: str | None, operator: str, config_path: Path | None
) -> None:
    """Record that the consumer withdrew consent given to PRINCIPAL."""
    config = load_config(config_path)
    if not import_files.is_valid_principal(principal):
        raise Failure(f"--principal {principal!r} must be 1-64 letters, digits, '_', '.', '-'")
    now = change_at(when, config)
    target, record_id, applied = _through_service(
        config,
        lambda service: service.withdraw_consent(number, principal, now, operator=operator),
    )
    if not applied:
        raise _pending(record_id)
    click.echo(
        f"consent of {target.e164} to {principal} withdrawn at {now.isoformat()}"
        f" (audit id {record_id})"
    )


@consent.command("add")
@click.argument("number")
@click.option("--principal", required=True, help="The professional the consent is given to.")
@click.option(
    "--proof-ref", required=True, help="Where the proof is kept (form id, recording, ...)."
)
@click.option(
    "--given-at",
    default=None,
    help="When it was given, ISO 8601 (default: now; a date means its midnight).",
)
@click.option(
    "--expires-at", default=None, help="When it lapses, ISO 8601 (default: the policy's longest)."
)
@click.option("--source", default="", help="Where it came from (web form, CRM), kept as evidence.")
@operator_option
@config_option
@errors_are_one_line
def consent_add(
    number: str,
    principal: str,
    proof_ref: str,
    given_at: str | None,
    expires_at: str | None,
    source: str,
    operator: str,
    config_path: Path | None,
) -> None:
    """Record the consent the consumer gave PRINCIPAL; effective for the very next call."""
    config = load_config(config_path)
    given = change_at(given_at, config) if given_at is not None else None
    expires = _instant("--expires-at", expires_at, config)
    target, record_id, applied = _through_service(
        config,
        lambda service: service.add_consent(
            number,
            principal,
            proof_ref,
            given_at=given,
            expires_at=expires,
            source=source,
            operator=operator,
        ),
    )
    if not applied:
        raise _pending(record_id)
    click.echo(f"consent of {target.e164} to {principal} recorded (audit id {record_id})")


@click.group()
def contract() -> None:
    """Contracts (live changes, each an audit record): the ongoing-contract exception."""


@contract.command("add")
@click.argument("number")
@click.option("--principal", required=True, help="The professional the contract is with.")
@click.option("--id", "contract_id", required=True, help="The contract's reference.")
@click.option("--sector", required=True, type=click.Choice([s.value for s in Sector]))
@click.option("--start", default=None, help="First day, YYYY-MM-DD (default: today).")
@click.option("--end", default=None, help="Last day, YYYY-MM-DD (default: ongoing).")
@operator_option
@config_option
@errors_are_one_line
def contract_add(
    number: str,
    principal: str,
    contract_id: str,
    sector: str,
    start: str | None,
    end: str | None,
    operator: str,
    config_path: Path | None,
) -> None:
    """Record a contract with PRINCIPAL; effective for the very next call."""
    config = load_config(config_path)
    first, last = _day("--start", start), _day("--end", end)
    target, record_id, applied = _through_service(
        config,
        lambda service: service.add_contract(
            number, principal, contract_id, sector, start=first, end=last, operator=operator
        ),
    )
    if not applied:
        raise _pending(record_id)
    click.echo(
        f"contract {contract_id} of {target.e164} with {principal} recorded (audit id {record_id})"
    )


@contract.command("end")
@click.argument("number")
@click.option("--principal", required=True, help="The professional the contract is with.")
@click.option("--id", "contract_id", required=True, help="The contract's reference.")
@click.option(
    "--at",
    "when",
    default=None,
    help="Its last day (YYYY-MM-DD), or when it ended (ISO 8601 date-time, default now:"
    " calls from that day on no longer count it).",
)
@operator_option
@config_option
@errors_are_one_line
def contract_end(
    number: str,
    principal: str,
    contract_id: str,
    when: str | None,
    operator: str,
    config_path: Path | None,
) -> None:
    """Record that the contract ended; effective for the very next call."""
    config = load_config(config_path)
    ended: datetime | date | None = None
    if when is not None:
        ended = _day("--at", when) if len(when) == 10 else change_at(when, config)
    target, record_id, applied = _through_service(
        config,
        lambda service: service.end_contract(
            number, principal, contract_id, ended_at=ended, operator=operator
        ),
    )
    if not applied:
        raise _pending(record_id)
    click.echo(
        f"contract {contract_id} of {target.e164} with {principal} ended (audit id {record_id})"
    )


def _day(option: str, value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise Failure(f"{option} {value!r} is not a date (YYYY-MM-DD)") from None


def _instant(option: str, value: str | None, config: Config) -> datetime | None:
    """An instant any time (a date: its midnight in the policy's zone)."""
    if value is None:
        return None
    try:
        return at(value, config)
    except Failure as exc:
        raise Failure(str(exc).replace("--at", option, 1)) from None


@click.command()
@click.argument("number")
@click.argument("kind", type=click.Choice([k.value for k in OutcomeKind]))
@click.option("--campaign", required=True, help="Campaign the call belonged to.")
@click.option("--at", "when", default=None, help="When, ISO 8601 (default: now).")
@operator_option
@config_option
@errors_are_one_line
def outcome(
    number: str,
    kind: str,
    campaign: str,
    when: str | None,
    operator: str,
    config_path: Path | None,
) -> None:
    """Record what the consumer said: `refused` (60-day block, consent withdrawn) or
    `do-not-call` (added to the company's list). NUMBER is read as the campaign dials it
    (its outside-line prefix)."""
    config = load_config(config_path)
    campaign_named(config, campaign)  # the message that names the configured campaigns
    now: datetime = change_at(when, config)
    request = CallRequest(number_raw=number, campaign=campaign, adapter="cli")
    result = _through_service(
        config, lambda service: service.record_outcome(request, kind, now=now, operator=operator)
    )
    if result.status is OutcomeStatus.INVALID:
        raise Failure(result.detail)
    assert result.number is not None
    if result.status is OutcomeStatus.PENDING:
        raise _pending(result.id)
    click.echo(
        f"{kind} recorded for {result.number.e164} ({result.principal}), audit id {result.id}"
    )
