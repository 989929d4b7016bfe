"""`dialguard` run in this process, through the console script's own `main()`: the same
argument parsing, one-line errors and exit codes as the installed script, without a
Python start-up (and its imports) per invocation.

Only for sync tests: the commands call `asyncio.run`, which refuses a running loop.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import structlog
from click.testing import CliRunner

from dialguard.cli import main


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


def run_dialguard(
    args: Sequence[str | Path], env: Mapping[str, str] | None = None, stdin: str | None = None
) -> Result:
    """`dialguard ARGS` with this process's environment, every DIALGUARD_* variable removed
    but those in `env` (a developer's own settings must not reach the tests); `stdin`:
    what standard input holds."""
    overrides: dict[str, str | None] = {k: None for k in os.environ if k.startswith("DIALGUARD_")}
    overrides.update(env or {})
    # The group configures structlog for the command's stderr, a stream that dies with
    # the isolation: later tests in this process must log as they would have.
    saved_logging = structlog.get_config()
    try:
        with (
            CliRunner().isolation(input=stdin, env=overrides) as (out, err, _),
            mock.patch.object(sys, "argv", ["dialguard", *map(str, args)]),
        ):
            try:
                main()
            except SystemExit as exit_:
                code = exit_.code
            else:
                raise AssertionError("main() returned instead of exiting")
            sys.stdout.flush()
            sys.stderr.flush()
            stdout, stderr = out.getvalue().decode(), err.getvalue().decode()
    finally:
        structlog.configure(**saved_logging)
    assert isinstance(code, int), f"sys.exit({code!r}): the console script exits with a number"
    return Result(code, stdout, stderr)
