"""The `dialguard` command: one group, one module per command or group of commands.

Exit codes: 0 success (a DENY is a successful answer), 1 usage or input error, 2 a
dependency (Redis, journal, central store) unavailable, 3 `audit verify` (or `audit
ship`) found the chain broken, 4 an
internal error (a bug: reported as one line, never a traceback).
"""

from __future__ import annotations

import logging
import re
import sys

import click

from dialguard.cli.api import api
from dialguard.cli.audit import audit
from dialguard.cli.central import central, ship
from dialguard.cli.check import check
from dialguard.cli.common import EXIT_INPUT, EXIT_INTERNAL, configure_logging, fail
from dialguard.cli.console import console
from dialguard.cli.history import history
from dialguard.cli.imports import import_
from dialguard.cli.lists import lists
from dialguard.cli.live import consent, contract, dnc, outcome
from dialguard.cli.pending import apply_pending, pending
from dialguard.cli.policy import policy
from dialguard.cli.reload import reload
from dialguard.cli.scrub import scrub_command
from dialguard.cli.serve import serve
from dialguard.cli.vicidial import vicidial
from dialguard.config import redact_url

__all__ = ["cli", "main"]

_URL = re.compile(r"[a-z][a-z0-9+.-]*://\S+")


@click.group(
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Exit codes: 0 success (a DENY too), 1 bad input, 2 Redis or the journal"
    " unavailable, 3 audit chain broken, 4 internal error. Documentation: README.md;"
    " docs/rules.md (rules, reason codes), docs/policy.md (versions, replay),"
    " docs/imports.md (file formats), docs/data-model.md (what is kept in Redis),"
    " docs/supervisors.md and docs/audit.md (the journal).",
)
def cli() -> None:
    """dialguard: a dial-time compliance gate for outbound calls on Asterisk."""
    # One-shot commands report failures as one line themselves; `serve` turns logs on.
    configure_logging(logging.CRITICAL)


for command in (
    check,
    serve,
    reload,
    dnc,
    consent,
    contract,
    outcome,
    import_,
    audit,
    lists,
    policy,
    central,
    api,
    vicidial,
    scrub_command,
    console,
):
    cli.add_command(command)
audit.add_command(pending)
audit.add_command(history)
audit.add_command(apply_pending)
audit.add_command(ship)


def main() -> None:
    """The console script: click's usage errors become one line and exit code 1; anything
    unexpected one line and exit code 4."""
    try:
        code = cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        fail("aborted", EXIT_INPUT)
    except click.ClickException as exc:
        fail(exc.format_message().replace("\n", " "), EXIT_INPUT)
    except Exception as exc:
        # Whatever raised it, a URL in the text may carry a password.
        detail = _URL.sub(lambda m: redact_url(m.group()), " ".join(str(exc).split()))[:300]
        fail(f"internal error: {type(exc).__name__}: {detail} (please report it)", EXIT_INTERNAL)
    sys.exit(code if isinstance(code, int) else 0)
