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
from dialguard.config import DEFAULT_CONFIG, ConfigError, audit_dir_of, load_config
from dialguard.runfiles import (
    PID_NAME,
    clear_request,
    read_results,
    running_service,
    write_request,
)

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

    A file that does not load is refused with the message `serve` would give at start-up
    and the service keeps running as it was. Calls under way finish under the
    configuration they started with. The service answers what changed (exit 0) or why it
    refused (exit 1); each reload is an audit record, applied or not."""
    path = config_path or Path(os.environ.get("DIALGUARD_CONFIG") or DEFAULT_CONFIG)
    try:
        directory = load_config(path).audit_dir
    except ConfigError as exc:
        # The service is the judge (its environment may hold what this shell lacks, an
        # ARI password say): find it from the file's [audit] dir alone, if that reads.
        try:
            directory = audit_dir_of(path)
        except ConfigError:
            raise exc from None
    try:
        service = running_service(directory)
    except OSError as exc:
        raise Failure(
            f"{directory / PID_NAME}: cannot read: {exc.strerror}: run as the service's user"
            " or root",
            EXIT_DEPENDENCY,
        ) from None
    if service is None:
        raise Failure(
            f"no dialguard serve runs with {path} (no live {directory / PID_NAME})",
            EXIT_DEPENDENCY,
        )
    try:
        request = write_request(directory, operator)
    except OSError as exc:
        raise Failure(
            f"{directory}: cannot write the reload request: {exc.strerror}", EXIT_DEPENDENCY
        ) from None
    try:
        _signal(service.pid)
        results = read_results(directory, request, service.workers, timeout)
    finally:
        clear_request(directory)
    missing = [str(worker) for worker in range(service.workers) if worker not in results]
    if missing:
        raise Failure(
            f"signalled dialguard serve (pid {service.pid}), no answer within {timeout:g} s"
            f" from worker {', '.join(missing)}: see its log",
            EXIT_DEPENDENCY,
        )
    refused = {worker: r for worker, r in results.items() if not r.applied}
    if refused:
        worker, first = min(refused.items())
        which = "" if service.workers == 1 else f" by worker {worker} of {service.workers}"
        raise Failure(f"reload refused{which}: {first.message}", EXIT_INPUT)
    if len({(r.policy_hash, r.config_hash) for r in results.values()}) > 1:
        # The file changed between two workers' reading: they now run different things.
        raise Failure(
            "the workers read different files (was it being written?): run dialguard reload again",
            EXIT_INPUT,
        )
    workers = "" if service.workers == 1 else f", {service.workers} workers"
    click.echo(f"reloaded (pid {service.pid}{workers}): {results[0].message}")


def _signal(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise Failure(f"dialguard serve (pid {pid}) is gone", EXIT_DEPENDENCY) from None
    except PermissionError:
        raise Failure(
            f"not allowed to signal dialguard serve (pid {pid}): run as its user or root",
            EXIT_DEPENDENCY,
        ) from None
