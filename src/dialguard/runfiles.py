"""The files through which `dialguard reload` finds and talks to a running `serve`.

They live in the audit directory, beside the journal (one configuration, one journal,
one service):

- `serve.pid`: the pid to signal, `flock`ed by `serve` for as long as it runs. A lock
  nobody holds means nobody runs there, whatever pid the file still names (a crashed
  service, a pid reused since), so `reload` never signals a stranger.
- `reload.request`: who asks for a reload, written by `dialguard reload` before SIGHUP
  (a bare SIGHUP, from `kill` or systemd, comes from nobody in particular).
- `reload.result`: what the service made of it, for `dialguard reload` to print.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

__all__ = [
    "PID_NAME",
    "AlreadyRunning",
    "PidFile",
    "ReloadRequest",
    "ReloadResult",
    "read_result",
    "running_pid",
    "take_request",
    "write_request",
    "write_result",
]

PID_NAME = "serve.pid"
REQUEST_NAME = "reload.request"
RESULT_NAME = "reload.result"


class AlreadyRunning(Exception):
    """Another `serve` holds the pid file of this audit directory."""


class PidFile:
    """`serve.pid`, held (flock) from `acquire` to `release`, inherited by forked workers."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd

    @classmethod
    def acquire(cls, directory: Path) -> PidFile:
        """Take the directory's pid file for this process: AlreadyRunning when another
        service has it, OSError when it cannot be written."""
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = directory / PID_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            pid = _read_pid(path)
            raise AlreadyRunning(
                f"another dialguard serve (pid {pid or '?'}) runs with the journal in {directory}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(path, fd)

    def release(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                self.path.unlink()
            os.close(self._fd)
            self._fd = -1


def running_pid(directory: Path) -> int | None:
    """The pid of the `serve` running with this audit directory, None if none runs."""
    path = directory / PID_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise
        return _read_pid(path)  # held: its service runs
    else:
        return None  # nobody holds it: a leftover
    finally:
        os.close(fd)


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


@dataclass(frozen=True, slots=True)
class ReloadRequest:
    id: str
    operator: str


@dataclass(frozen=True, slots=True)
class ReloadResult:
    request: str  # the request's id, "" for a bare SIGHUP
    applied: bool
    message: str  # one line: what changed, or why nothing did


def write_request(directory: Path, operator: str) -> ReloadRequest:
    request = ReloadRequest(secrets.token_hex(8), operator)
    _write_atomically(directory / REQUEST_NAME, {"id": request.id, "operator": operator})
    return request


def take_request(directory: Path) -> ReloadRequest | None:
    """The request waiting, removed; None after a bare SIGHUP (or an unreadable file)."""
    path = directory / REQUEST_NAME
    try:
        data = orjson.loads(path.read_bytes())
        path.unlink()
    except (OSError, orjson.JSONDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    operator = str(data.get("operator", ""))[:64]
    return ReloadRequest(str(data.get("id", ""))[:32], operator if operator.isprintable() else "")


def write_result(directory: Path, result: ReloadResult) -> None:
    body = {"request": result.request, "applied": result.applied, "message": result.message}
    _write_atomically(directory / RESULT_NAME, body)


def read_result(directory: Path, request: ReloadRequest, timeout_s: float) -> ReloadResult | None:
    """The service's answer to `request`, waited for up to `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, orjson.JSONDecodeError):
            data = orjson.loads((directory / RESULT_NAME).read_bytes())
            if isinstance(data, dict) and data.get("request") == request.id:
                return ReloadResult(request.id, bool(data["applied"]), str(data["message"]))
        time.sleep(0.05)
    return None


def _write_atomically(path: Path, body: dict[str, object]) -> None:
    # A reader never sees half a file: written aside, then renamed over.
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, orjson.dumps(body))
    finally:
        os.close(fd)
    os.replace(temporary, path)
