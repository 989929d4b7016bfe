"""What every command shares: one-line errors and exit codes, the configuration option,
logging, running a coroutine with a Store, and checking arguments."""

from __future__ import annotations

import asyncio
import getpass
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import wraps
from pathlib import Path
from typing import NoReturn, ParamSpec, TypeVar
from zoneinfo import ZoneInfo

import click
import structlog

from dialguard import import_files
from dialguard.audit import AuditUnavailable
from dialguard.central.errors import CentralUnavailable
from dialguard.changes import FUTURE_SLACK, InvalidChange
from dialguard.config import Config, ConfigError
from dialguard.model import Campaign
from dialguard.numbers import InvalidNumber
from dialguard.store import ListBusy, Store, StoreUnavailable

__all__ = [
    "BULK_TIMEOUT_MS",
    "EXIT_DEPENDENCY",
    "EXIT_INPUT",
    "EXIT_INTERNAL",
    "Failure",
    "at",
    "campaign_named",
    "change_at",
    "config_option",
    "configure_logging",
    "default_operator",
    "errors_are_one_line",
    "fail",
    "operator_option",
    "run_with_store",
]

EXIT_INPUT = 1
EXIT_DEPENDENCY = 2
# 3 is `audit verify`'s "the chain is broken"; 4: a bug of ours, never bad input.
EXIT_INTERNAL = 4
# Redis timeout of the commands that move or count whole lists.
BULK_TIMEOUT_MS = 30_000

P = ParamSpec("P")
R = TypeVar("R")


class Failure(Exception):
    def __init__(self, message: str, code: int = EXIT_INPUT) -> None:
        super().__init__(message)
        self.code = code


def errors_are_one_line(func: Callable[P, R]) -> Callable[P, R]:
    """Turn every expected failure into one line on stderr and its exit code."""

    @wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except Failure as exc:
            fail(str(exc), exc.code)
        except (
            ConfigError,
            InvalidNumber,
            InvalidChange,
            import_files.BadImportFile,
            ListBusy,
        ) as exc:
            fail(str(exc), EXIT_INPUT)
        except (StoreUnavailable, AuditUnavailable, CentralUnavailable) as exc:
            fail(str(exc), EXIT_DEPENDENCY)

    return wrapper


def fail(message: str, code: int) -> NoReturn:
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


def at(value: str | None, config: Config) -> datetime:
    if value is None:
        return datetime.now(UTC)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise Failure(f"--at {value!r} is not an ISO 8601 date-time (2026-11-30T10:30)") from None
    if not import_files.in_supported_years(moment):
        raise Failure(f"--at {value!r} is outside the years the rules are kept for")
    return (
        moment if moment.tzinfo else moment.replace(tzinfo=ZoneInfo(config.policy.default_timezone))
    )


def change_at(value: str | None, config: Config) -> datetime:
    """`--at` of a change (outcome, withdrawal): as `at`, but never ahead of the clock."""
    moment = at(value, config)
    if moment > datetime.now(UTC) + FUTURE_SLACK:
        raise Failure(f"--at {value!r} is in the future; a change is dated when it was made")
    return moment


def run_with_store(
    config: Config, body: Callable[[Store], Awaitable[R]], *, bulk: bool = False
) -> R:
    """Run `body` with a Store. `bulk`: an import or a census, whose commands may take a
    while on a busy Redis; the configured timeout is meant for decisions."""
    timeout_ms = max(config.redis.timeout_ms, BULK_TIMEOUT_MS) if bulk else config.redis.timeout_ms

    async def main() -> R:
        store = Store.from_settings(config.redis, timeout_ms)
        try:
            return await body(store)
        finally:
            await store.close()

    return asyncio.run(main())


def campaign_named(config: Config, name: str) -> Campaign:
    campaign = config.campaigns.get(name)
    if campaign is None:
        known = ", ".join(sorted(config.campaigns))
        raise Failure(f"unknown campaign {name!r} (configured: {known})")
    return campaign


def default_operator() -> str:
    """Who runs the command: the user behind sudo when there is one, else the OS user."""
    sudo_user = os.environ.get("SUDO_USER", "")
    if sudo_user:
        return sudo_user
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container's arbitrary user)
        return f"uid {os.getuid()}"


def _operator(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    if not value or len(value) > 64 or not value.isprintable():
        raise click.BadParameter("1-64 printable characters (a name or a login)")
    return value


operator_option = click.option(
    "--operator",
    default=default_operator,
    callback=_operator,
    show_default="the OS user, or SUDO_USER",
    help="Who makes this change, kept in its audit record.",
)

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Configuration file (default: $DIALGUARD_CONFIG or config/dialguard.toml).",
)
