"""`dialguard reload`: the running `serve` reads its configuration and policy again."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import click

from dialguard.cli.common import (
    EXIT_DEPENDENCY,
    EXIT_INPUT,
    Failure,
    config_option,
    errors_are_one_line,
    operator_option,
)
from dialguard.config import load_config
from dialguard.runfiles import PID_NAME, read_result, running_pid, write_request

__all__ = ["reload"]


@click.command()
@click.option(
    "--timeout",
    type=click.FloatRange(0.1, 600),
    default=10.0,
    show_default=True,
    help="Seconds to wait for the service's answer.",
)
@operator_option
@config_option
@errors_are_one_line
def reload(timeout: float, operator: str, config_path: Path | None) -> None:
    """Make the `serve` running with this configuration read it and its policy again.

    The file is checked first: a bad one is refused here with the message `serve` would
    give at start-up, and the service keeps running as it was. Calls under way finish
    under the configuration they started with. The service answers what changed (exit
    0) or why it refused (exit 1); the reload is an audit record either way."""
    config = load_config(config_path)  # a bad file: its one line, exit 1, nothing signalled
    directory = config.audit_dir
    pid = running_pid(directory)
    if pid is None:
        raise Failure(
            f"no dialguard serve runs with {config.path} (no live {directory / PID_NAME})",
            EXIT_DEPENDENCY,
        )
    request = write_request(directory, operator)
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise Failure(f"dialguard serve (pid {pid}) is gone", EXIT_DEPENDENCY) from None
    except PermissionError:
        raise Failure(
            f"not allowed to signal dialguard serve (pid {pid}): run as its user or root",
            EXIT_DEPENDENCY,
        ) from None
    result = read_result(directory, request, timeout)
    if result is None:
        raise Failure(
            f"signalled dialguard serve (pid {pid}), no answer within {timeout:g} s: see its log",
            EXIT_DEPENDENCY,
        )
    if not result.applied:
        raise Failure(f"reload refused, still running as before: {result.message}", EXIT_INPUT)
    click.echo(f"reloaded (pid {pid}): {result.message}")
