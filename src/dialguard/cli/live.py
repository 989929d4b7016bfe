"""Live changes, effective for the very next call: `dnc add|remove`, `consent withdraw`,
`outcome`. Each goes through the service, which normalises and refuses numbers the way a
call would (docs/rules.md)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import click

from dialguard import import_files
from dialguard.audit import Journal
from dialguard.cli.common import (
    EXIT_DEPENDENCY,
    Failure,
    campaign_named,
    change_at,
    config_option,
    errors_are_one_line,
    operator_option,
    run_with_store,
)
from dialguard.config import Config, load_config
from dialguard.model import CallRequest
from dialguard.service import OutcomeKind, OutcomeStatus, Service

__all__ = ["consent", "dnc", "outcome"]

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
