"""The files through which `dialguard reload` finds and talks to a running `serve`.

They live in the audit directory, beside the journal (one configuration, one journal,
one service):

- `serve.pid`: the pid to signal and the number of workers, `flock`ed by `serve` for as
  long as it runs. A lock nobody holds means nobody runs there, whatever the file still
  says, and a pid that is not a dialguard process is never signalled.
- `reload.request`: who asks for a reload, written by `dialguard reload` before SIGHUP
  and removed by it once answered (a bare SIGHUP, from `kill` or systemd, comes from
  nobody in particular).
- `reload.result.N`: what worker N made of it, for `dialguard reload` to print.

Every file is written aside and renamed over, never through a path that could be a
planted link; the request is handed to the directory's owner, the service's user.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

__all__ = [
    "PID_NAME",
    "AlreadyRunning",
    "PidFile",
    "ReloadRequest",
    "ReloadResult",
    "RunningService",
    "clear_request",
    "read_request",
    "read_results",
    "running_service",
    "write_request",
    "write_result",
]

PID_NAME = "serve.pid"
REQUEST_NAME = "reload.request"
RESULT_PREFIX = "reload.result."
# A request older than this was never answered (a service stopped meanwhile): it is not
# credited to whoever sends the next SIGHUP.
REQUEST_TTL_S = 120.0
# `dialguard reload` holds a shared lock for an instant: a `serve` starting then retries.
_LOCK_TRIES = 40


class AlreadyRunning(Exception):
    """Another `serve` holds the pid file of this audit directory."""


class PidFile:
    """`serve.pid`, held (flock) from `acquire` to `release`, inherited by forked workers."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd
        self._owner = os.getpid()

    @classmethod
    def acquire(cls, directory: Path, workers: int) -> PidFile:
        """Take the directory's pid file for this process: AlreadyRunning when another
        service has it, OSError when it cannot be written."""
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = directory / PID_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        try:
            for attempt in range(_LOCK_TRIES):
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                        raise
                    if attempt == _LOCK_TRIES - 1:
                        held = _read(path)
                        pid = held[0] if held else "?"
                        raise AlreadyRunning(
                            f"another dialguard serve (pid {pid}) runs with the journal in"
                            f" {directory}"
                        ) from None
                    time.sleep(0.025)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n{workers}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd)

    def release(self) -> None:
        """Let go of it: only in the process that took it (a forked worker inherits the
        lock, never the right to clear the file). The file stays, emptied: removing it
        would let a `serve` starting now lock a name nobody else can see."""
        if self._fd >= 0 and os.getpid() == self._owner:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = -1


@dataclass(frozen=True, slots=True)
class RunningService:
    pid: int
    workers: int


def running_service(directory: Path) -> RunningService | None:
    """The `serve` running with this audit directory, None if none runs. OSError when
    the file cannot be read (permissions)."""
    path = directory / PID_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
        else:
            return None  # nobody holds it: a leftover
    finally:
        os.close(fd)
    held = _read(path)
    if held is None or not _is_dialguard(held[0]):
        return None
    return RunningService(*held)


def _read(path: Path) -> tuple[int, int] | None:
    try:
        lines = path.read_text(encoding="ascii").split()
    except (OSError, UnicodeDecodeError):
        return None
    if len(lines) != 2 or not all(line.isdigit() for line in lines):
        return None
    return int(lines[0]), int(lines[1])


def _is_dialguard(pid: int) -> bool:
    """A pid is signalled only if it is a dialguard process: the file may name a pid since
    reused (the service's parent killed, its workers still holding the lock)."""
    try:
        return b"dialguard" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False
    except OSError:
        return True  # no /proc to ask: the lock is the evidence


@dataclass(frozen=True, slots=True)
class ReloadRequest:
    id: str
    operator: str


@dataclass(frozen=True, slots=True)
class ReloadResult:
    request: str  # the request's id, "" for a bare SIGHUP
    applied: bool
    message: str  # one line: what changed, or why nothing did
    policy_hash: str = ""  # in force after it
    config_hash: str = ""


def write_request(directory: Path, operator: str) -> ReloadRequest:
    request = ReloadRequest(secrets.token_hex(8), operator)
    body = {"id": request.id, "operator": operator}
    _write_atomically(directory, REQUEST_NAME, body, give_to_owner=True)
    return request


def read_request(directory: Path) -> ReloadRequest | None:
    """The request waiting, if any and recent; None after a bare SIGHUP."""
    path = directory / REQUEST_NAME
    try:
        if time.time() - path.stat().st_mtime > REQUEST_TTL_S:
            return None
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    operator = str(data.get("operator", ""))[:64]
    return ReloadRequest(str(data.get("id", ""))[:32], operator if operator.isprintable() else "")


def clear_request(directory: Path) -> None:
    with contextlib.suppress(OSError):
        (directory / REQUEST_NAME).unlink()


def write_result(directory: Path, worker: int, result: ReloadResult) -> None:
    body = {
        "request": result.request,
        "applied": result.applied,
        "message": result.message,
        "policy_hash": result.policy_hash,
        "config_hash": result.config_hash,
    }
    _write_atomically(directory, f"{RESULT_PREFIX}{worker}", body)


def read_results(
    directory: Path, request: ReloadRequest, workers: int, timeout_s: float
) -> dict[int, ReloadResult]:
    """Each worker's answer to `request`, waited for up to `timeout_s` (those that came)."""
    deadline = time.monotonic() + timeout_s
    found: dict[int, ReloadResult] = {}
    while True:
        for worker in range(workers):
            if worker in found:
                continue
            with contextlib.suppress(OSError, orjson.JSONDecodeError, KeyError):
                data: Any = orjson.loads((directory / f"{RESULT_PREFIX}{worker}").read_bytes())
                if isinstance(data, dict) and data.get("request") == request.id:
                    found[worker] = ReloadResult(
                        request.id,
                        bool(data["applied"]),
                        str(data["message"]),
                        str(data.get("policy_hash", "")),
                        str(data.get("config_hash", "")),
                    )
        if len(found) == workers or time.monotonic() >= deadline:
            return found
        time.sleep(0.05)


def _write_atomically(
    directory: Path, name: str, body: Mapping[str, object], give_to_owner: bool = False
) -> None:
    # A reader never sees half a file: written aside under a name nobody could have
    # planted a link at (mkstemp: O_EXCL), then renamed over.
    fd, temporary = tempfile.mkstemp(prefix=f".{name}.", dir=directory)
    try:
        os.write(fd, orjson.dumps(body))
        if give_to_owner and os.geteuid() == 0:
            # `sudo dialguard reload`: the service, running as the directory's owner,
            # must be able to read who asked.
            owner = os.stat(directory)
            os.fchown(fd, owner.st_uid, owner.st_gid)
    except BaseException:
        os.close(fd)
        os.unlink(temporary)
        raise
    os.close(fd)
    os.replace(temporary, directory / name)
