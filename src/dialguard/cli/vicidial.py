"""`dialguard vicidial sync|status`: VICIdial's do-not-call lists and dialguard's kept in
step (docs/vicidial.md). `serve` runs `vicidial sync` in a process of its own when the
configuration has a `[vicidial]` section.

Exit codes as everywhere: 0 success, 1 bad input (no `[vicidial]` section, no password, a
state file of another database), 2 a dependency unavailable (VICIdial's database, the
journal; or changes kept in the journal that Redis did not take yet).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import click
import orjson

from dialguard.audit import Journal
from dialguard.cli.common import (
    EXIT_DEPENDENCY,
    Failure,
    config_option,
    configure_logging,
    errors_are_one_line,
)
from dialguard.config import Config, VicidialSettings, load_config
from dialguard.service import Service
from dialguard.store import Store
from dialguard.vicidial.state import State, StateProblem
from dialguard.vicidial.sync import (
    PullReport,
    PushReport,
    Sync,
    SyncProblem,
    keep_syncing,
    report_line,
)
from dialguard.vicidial.tables import SYSTEM_LIST, Tables, VicidialUnavailable

__all__ = ["vicidial"]

R = TypeVar("R")


@click.group()
def vicidial() -> None:
    """VICIdial's do-not-call lists kept in step with dialguard's (docs/vicidial.md)."""


def _settings(config: Config) -> VicidialSettings:
    settings = config.vicidial
    if settings is None:
        raise Failure(f"{config.path}: no [vicidial] section (docs/vicidial.md)")
    if settings.password is None:
        raise Failure(
            f"{config.path}: vicidial: no password for {settings.shown}: set"
            " DIALGUARD_VICIDIAL_PASSWORD or [vicidial] password_file"
        )
    return settings


def _state(settings: VicidialSettings) -> State:
    try:
        return State(settings.state, identity(settings))
    except StateProblem as exc:
        raise Failure(str(exc)) from None


def identity(settings: VicidialSettings) -> str:
    """Which VICIdial database a state file belongs to (the user may change)."""
    return f"{settings.host}:{settings.port}/{settings.database}"


@vicidial.command("sync")
@click.option(
    "--once", is_flag=True, help="One pass, then exit (default: a pass every interval_s)."
)
@click.option(
    "--accept-removals",
    is_flag=True,
    help="Apply the removals this pass finds even beyond [vicidial] max_removals.",
)
@click.option("--json", "as_json", is_flag=True, help="With --once: the pass's counts as JSON.")
@click.option("--parent", type=int, default=0, hidden=True)  # serve: stop when it is gone
@config_option
@errors_are_one_line
def sync_command(
    once: bool, accept_removals: bool, as_json: bool, parent: int, config_path: Path | None
) -> None:
    """Write dialguard's live do-not-call additions to VICIdial's vicidial_dnc, and take
    VICIdial's list changes (vicidial_dnc, mapped campaigns' vicidial_campaign_dnc) into
    dialguard's list, each an audit record. Incremental and idempotent."""
    config = load_config(config_path)
    settings = _settings(config)
    if not once:
        _follow(config, parent)
        return
    try:
        pushed, pulled = asyncio.run(_once(config, accept_removals))
    except (VicidialUnavailable, SyncProblem) as exc:
        raise Failure(str(exc), EXIT_DEPENDENCY) from None
    if as_json:
        click.echo(
            orjson.dumps({"vicidial": settings.shown, **report_line(pushed, pulled)}).decode()
        )
    else:
        _print(settings, pushed, pulled)
    if pulled.held:
        click.echo(
            f"dialguard: warning: {pulled.held:,} removals found in VICIdial's lists, more than"
            f" max_removals ({settings.max_removals:,}): none applied. Check VICIdial's lists,"
            " then run `dialguard vicidial sync --once --accept-removals`",
            err=True,
        )
    if pulled.pending:
        raise Failure(
            f"Redis unavailable: {pulled.pending:,} changes are kept in the audit journal and"
            " applied once Redis answers (by `dialguard serve`, or `dialguard audit"
            " apply-pending`)",
            EXIT_DEPENDENCY,
        )


async def _once(config: Config, accept_removals: bool) -> tuple[PushReport, PullReport]:
    async def body(sync: Sync) -> tuple[PushReport, PullReport]:
        return await sync.run_pass(accept_removals)

    return await _with_sync(config, body)


async def _with_sync(config: Config, body: Callable[[Sync], Awaitable[R]]) -> R:
    """Run `body` with a Sync: the service (journal, Redis) that records VICIdial's
    changes, VICIdial's tables, the state."""
    state = _state(_settings(config))
    assert config.vicidial is not None
    tables = Tables(config.vicidial)
    store = Store.from_settings(config.redis)
    service = Service(config, store, Journal(config.audit_dir))
    try:
        return await body(Sync(config, service, tables, state))
    finally:
        await service.aclose()
        await store.close()
        tables.close()
        state.close()


def _print(settings: VicidialSettings, pushed: PushReport, pulled: PullReport) -> None:
    cursor = f"{pushed.cursor[0]} byte {pushed.cursor[1]:,}" if pushed.cursor else "-"
    click.echo(
        f"dialguard -> VICIdial ({settings.shown}): {pushed.written:,} do-not-call additions"
        f" written to vicidial_dnc, {pushed.present:,} there already,"
        f" {pushed.echoes:,} from VICIdial not written back; journal read up to {cursor}"
    )
    if pushed.unwritable:
        click.echo(
            f"  {pushed.unwritable:,} not written: not French numbers (VICIdial's"
            " do-not-call tables have no country code)"
        )
    if not settings.pull:
        return
    if not pulled.lists_read:
        click.echo("VICIdial -> dialguard: no list changed since the last pass")
        return
    parts = [
        f"{_list_name(name)} +{pulled.added.get(name, 0):,} -{pulled.removed.get(name, 0):,}"
        for name in pulled.lists_read
    ]
    click.echo(f"VICIdial -> dialguard: {'; '.join(parts)}")
    if pulled.unreadable:
        click.echo(
            f"  {pulled.unreadable:,} entries skipped: not French numbers (AREACODE entries,"
            " other countries, typing errors)"
        )


def _list_name(name: str) -> str:
    return "internal list (vicidial_dnc)" if name == SYSTEM_LIST else f"campaign {name}"


def _follow(config: Config, parent: int) -> None:
    """What `serve` runs in a process of its own: JSON logs on stderr; SIGTERM or SIGINT
    end it after the pass under way."""
    configure_logging(logging.INFO)
    if parent:
        os.nice(10)  # background work: the decisions' process comes first

    async def body(sync: Sync) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await keep_syncing(sync, stop, parent)

    asyncio.run(_with_sync(config, body))


@vicidial.command("status")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@config_option
@errors_are_one_line
def status_command(as_json: bool, config_path: Path | None) -> None:
    """What the sync has done: its journal cursor, the last pass, what each list held."""
    config = load_config(config_path)
    settings = config.vicidial
    if settings is None:
        raise Failure(f"{config.path}: no [vicidial] section (docs/vicidial.md)")
    state = _state(settings)
    try:
        cursor = state.cursor()
        counts = state.counts()
        last_pass = state.noted("last_pass")
        held = int(state.noted("held_removals") or 0)
    finally:
        state.close()
    shown_cursor = f"{cursor[0]}:{cursor[1]}" if cursor else None
    if as_json:
        item = {
            "vicidial": settings.shown,
            "state": str(settings.state),
            "cursor": shown_cursor,
            "last_pass": last_pass,
            "removals_held": held,
            "lists": counts,
        }
        click.echo(orjson.dumps(item).decode())
        return
    click.echo(f"VICIdial {settings.shown}, state {settings.state}")
    click.echo(f"  last pass: {last_pass or 'never'}; journal cursor: {shown_cursor or '-'}")
    for name in [SYSTEM_LIST, *settings.campaigns]:
        click.echo(f"  {_list_name(name)}: {counts.get(name, 0):,} numbers at the last pass")
    if held:
        click.echo(f"  {held:,} removals held (more than max_removals): see docs/vicidial.md")
