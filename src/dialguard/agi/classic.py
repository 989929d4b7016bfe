"""Classic AGI: Asterisk runs `agi/dialguard.agi` from its agi-bin once per call.

    AGI(dialguard.agi,NUMBER,CAMPAIGN)                     check a call before dialling
    AGI(dialguard-outcome.agi,NUMBER,refused|do-not-call,CAMPAIGN)   record what was said

The mode comes from the script's name, as Asterisk reports it in ``agi_request``: a name
ending in ``outcome`` (``dialguard-outcome.agi``, a symlink to ``dialguard.agi``) records an
outcome, any other name checks a call. Arguments are those of the FastAGI scripts
``agi://host:4573/check`` and ``/outcome``, so switching adapter is a one-word change.

Asterisk writes the agi_* block (the FastAGI block without ``agi_network*``) to our stdin,
reads commands from our stdout and answers each on stdin. We decide through the same
`Service.decide(..., record=True)` as the FastAGI server, then SET VARIABLE the same
variables: ``DIALGUARD_RESULT``, ``_REASON``, ``_ID``, ``_NUMBER`` (check) or
``DIALGUARD_OUTCOME`` and ``DIALGUARD_ID`` (outcome).

Stdout is the AGI channel: fd 1 is taken over at start and pointed at stderr, so nothing
but our commands (no print, no log line, no traceback) can ever reach Asterisk. Any failure
is one line on stderr and a non-zero exit, and no variable is set after it (none at all when
it comes before the decision): Asterisk then sets ``AGISTATUS=FAILURE`` (res_agi.c: a
non-zero exit status of the script) and the dialplan fails closed. Exit codes: 0 every
variable set and acknowledged; 1 bad input (configuration, agi_* block, protocol, Asterisk
gone); 2 a dependency unavailable (the audit journal); 3 the session bound
(``session_timeout_ms``) passed; 4 an internal error.

Hangup: for a classic script Asterisk does not write ``HANGUP`` on stdin, it sends SIGHUP
(unless the channel variable ``AGISIGHUP=no``); the default action would kill us between
counting the attempt and writing its audit record. SIGHUP is therefore ignored, like the
``HANGUP`` line (which the protocol module also handles, should one come), and the session
finishes: SET VARIABLE still runs on a dead channel.

Time bounds. ``session_timeout_ms`` bounds the whole process, counted from its start (the
analogue of the FastAGI connect), enforced by a timer that ends the process: Asterisk has no
timeout of its own. While a decision is being made and recorded the timer's end waits for
it (the attempt may be counted already; its audit record must follow), then comes at once:
no variable is set after it. ``deadline_ms`` bounds the decision (past it the campaign's fail mode
decides, reason DEADLINE), counted from the moment the imports are done: interpreter
start-up and imports (docs/benchmarks.md, "Classic AGI start-up cost") are spent before any
deadline could save them, and denying a call for them would gain no time, only lose calls.

Configuration: ``DIALGUARD_CONFIG`` and ``DIALGUARD_REDIS_URL``, as everywhere else. They
must be in Asterisk's environment (Asterisk passes it on), or set by a wrapper script.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from pathlib import PurePosixPath
from types import FrameType
from typing import NoReturn

import structlog

from dialguard.agi.protocol import (
    AgiConnection,
    AgiRequest,
    Closed,
    ProtocolError,
    Reply,
    UnsafeValue,
)
from dialguard.answers import SAFE_VALUE, Variables, agi_call, check_variables, outcome_variables
from dialguard.audit import AuditUnavailable, Journal
from dialguard.config import Config, ConfigError, load_config
from dialguard.service import Service
from dialguard.store import Store, StoreUnavailable

__all__ = ["ADAPTER", "main", "mode_of", "run"]

ADAPTER = "classic-agi"  # the `adapter` field of the audit records we write

EXIT_OK = 0
EXIT_INPUT = 1
EXIT_DEPENDENCY = 2
EXIT_TIMEOUT = 3
EXIT_INTERNAL = 4

_PROG = "dialguard.agi"

# Bytes per read from the pipe: a block is ~600 bytes, a reply a few dozen.
_READ_SIZE = 4096

log = structlog.get_logger("dialguard.classic_agi")


class ClassicAgiError(Exception):
    """A failure to report in one line on stderr, with the exit code it ends the process with."""

    def __init__(self, message: str, code: int = EXIT_INPUT) -> None:
        super().__init__(message)
        self.code = code


def mode_of(request: AgiRequest) -> str:
    """``outcome`` when the script's name (agi_request) ends in "outcome", else ``check``."""
    if not request.script:
        raise ClassicAgiError("not an Asterisk agi_* block: no agi_request")
    name = PurePosixPath(request.script).name.removesuffix(".agi")
    return "outcome" if name.endswith("outcome") else "check"


# --- the pipe to Asterisk -------------------------------------------------------------------


class _AsteriskPipe:
    """Blocking reads and writes on the two pipes, through the sans-I/O AgiConnection."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self.read_fd = read_fd
        self.write_fd = write_fd
        self.conn = AgiConnection()

    def _read(self) -> bytes:
        try:
            return os.read(self.read_fd, _READ_SIZE)
        except OSError as exc:
            raise ClassicAgiError(f"cannot read from Asterisk: {exc.strerror}") from None

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.write_fd, view) :]
        except BrokenPipeError:
            raise ClassicAgiError("Asterisk stopped reading before the last variable") from None
        except OSError as exc:
            raise ClassicAgiError(f"cannot write to Asterisk: {exc.strerror}") from None

    def read_request(self) -> AgiRequest:
        while True:
            data = self._read()
            for event in self.conn.receive_data(data):
                if isinstance(event, AgiRequest):
                    return event
            if not data:
                raise ClassicAgiError("stdin closed before the agi_* block was complete")

    def _read_reply(self) -> Reply:
        while True:
            data = self._read()
            for event in self.conn.receive_data(data):
                if isinstance(event, Reply):
                    return event
                if isinstance(event, Closed):
                    raise ClassicAgiError("Asterisk closed stdin before every variable was set")
                # Hangup (the line): dead mode, the reply still follows. Trying: not final.
            if not data:  # receive_data(b"") has raised or returned Closed already
                raise ClassicAgiError("Asterisk closed stdin before every variable was set")

    def set_variables(self, variables: Mapping[str, str]) -> None:
        for name, value in variables.items():
            if not SAFE_VALUE.fullmatch(value):
                raise UnsafeValue(f"refusing to write {name}={value[:80]!r}")
            self._write(self.conn.set_variable(name, value))
            reply = self._read_reply()
            if not reply.ok:
                raise ClassicAgiError(f"SET VARIABLE {name} answered {reply.text[:80]!r}")


# --- the process ----------------------------------------------------------------------------


def main(*, clock: Callable[[], datetime] | None = None) -> int:
    """Run one classic AGI session on fds 0 and 1; return the exit code.

    ``clock`` pins the time of the call (tests); by default the service's own clock.
    """
    entered = time.monotonic()
    started = entered - _process_age_s()
    request: AgiRequest | None = None
    try:
        pipe = _AsteriskPipe(0, _take_stdout())
        _configure_logging()
        # Asterisk's hangup notice to a classic script; dying on it could leave an attempt
        # counted without its audit record. The session finishes instead (see above).
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        config = load_config()
        _SESSION_BOUND.arm(started + config.server.session_timeout_ms / 1000)
        request = pipe.read_request()
        mode = mode_of(request)
        deadline = entered + config.server.deadline_ms / 1000
        variables = asyncio.run(_answer(mode, request, config, deadline, clock))
        pipe.set_variables(variables)
    except ClassicAgiError as exc:
        return _fail(str(exc), exc.code, request)
    except ConfigError as exc:
        return _fail(str(exc), EXIT_INPUT, request)
    except ProtocolError as exc:
        return _fail(f"AGI protocol: {exc}", EXIT_INPUT, request)
    except AuditUnavailable as exc:
        # No durable record, no answer: the dialplan sees a failure and fails closed.
        return _fail(str(exc), EXIT_DEPENDENCY, request)
    except StoreUnavailable as exc:
        return _fail(str(exc), EXIT_DEPENDENCY, request)
    except UnsafeValue as exc:
        return _fail(f"internal error: {exc}", EXIT_INTERNAL, request)
    except Exception as exc:
        return _fail(f"internal error: {type(exc).__name__}: {exc}", EXIT_INTERNAL, request)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    return EXIT_OK


async def _answer(
    mode: str,
    request: AgiRequest,
    config: Config,
    deadline: float,
    clock: Callable[[], datetime] | None,
) -> Variables:
    store = Store.from_settings(config.redis)
    journal = Journal(config.audit_dir)
    service = (
        Service(config, store, journal)
        if clock is None
        else Service(config, store, journal, clock=clock)
    )
    call = agi_call(request)
    try:
        # From the first command to Redis (which may count the attempt, or apply the
        # outcome) until its audit record is durable, the session bound waits: ending the
        # process in between would leave a change with no record of it.
        with _SESSION_BOUND.deferred():
            if mode == "outcome":
                return await outcome_variables(service, config.server, call, ADAPTER)
            remaining = deadline - time.monotonic()
            return await check_variables(service, config.server, call, ADAPTER, remaining)
    finally:
        await service.aclose()
        await store.close()


def _take_stdout() -> int:
    """Keep fd 1 (the pipe to Asterisk) for AGI commands only; point fd 1 at stderr."""
    if sys.stdout is not None:
        sys.stdout.flush()
    agi_out = os.dup(1)  # not inheritable: no child could write to Asterisk either
    os.dup2(2, 1)
    return agi_out


class SessionBound:
    """Ends the process at a monotonic instant, whatever it is waiting for, except inside
    `deferred()`: there the end waits for the block to finish, at most BACKSTOP_S more (a
    journal that never answers must not hold the channel for ever)."""

    BACKSTOP_S = 2.0

    def __init__(self) -> None:
        self._deferring = False
        self._expired = False

    def arm(self, until: float) -> None:
        self._expired = False
        signal.signal(signal.SIGALRM, self._expire)
        signal.setitimer(signal.ITIMER_REAL, max(until - time.monotonic(), 0.001))

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
        if self._expired:
            self._end("session_timeout_ms passed; exiting without an answer")

    def _expire(self, _signum: int, _frame: FrameType | None) -> None:
        if not self._deferring:
            self._end("session_timeout_ms passed; exiting without an answer")
        if self._expired:
            self._end("session_timeout_ms passed and the decision's record is still not written")
        self._expired = True
        signal.setitimer(signal.ITIMER_REAL, self.BACKSTOP_S)

    @staticmethod
    def _end(message: str) -> NoReturn:
        _write_stderr(f"{_PROG}: {message}")
        os._exit(EXIT_TIMEOUT)


_SESSION_BOUND = SessionBound()


def _process_age_s() -> float:
    """Seconds since this process was started (Linux; 10 ms resolution); 0 elsewhere."""
    try:
        with open("/proc/self/stat", "rb") as stat:
            # Field 22, starttime, in clock ticks since boot; the name (field 2) may hold
            # blanks and parentheses, so count from the last ')'.
            ticks = int(stat.read().rsplit(b")", 1)[1].split()[19])
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return 0.0
    # A real age at this point is well under a second; anything odd is not trusted.
    return age if 0.0 <= age < 10.0 else 0.0


def _configure_logging() -> None:
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )


def _fail(message: str, code: int, request: AgiRequest | None) -> int:
    where = f" [{request.channel} {request.uniqueid}]" if request is not None else ""
    _write_stderr(f"{_PROG}: {message}{where}")
    return code


def _write_stderr(line: str) -> None:
    data = (" ".join(line.split()) + "\n").encode("utf-8", "replace")
    with contextlib.suppress(OSError):
        os.write(2, data)


def run() -> NoReturn:
    """The script's entry point: `main()`, then end the process at once.

    Asterisk waits for the script to exit (waitpid) before it goes on with the dialplan, so
    the interpreter's teardown (freeing every module, ~30 ms) would be paid by the call.
    Everything we wrote went out through os.write; the std streams are flushed anyway.
    """
    code = main()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()  # None when the stream was closed: suppressed too
    os._exit(code)


if __name__ == "__main__":
    run()
