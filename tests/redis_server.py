"""A private, throw-away redis-server for tests: never the user's 6379.

With DIALGUARD_TEST_REDIS_ACL=1 in the environment, every server loads the service's ACL
rule (config/redis-acl.conf): `url` then logs in as that user and `admin_url` as the
default one (for what only a test does: FLUSHALL, CONFIG RESETSTAT), and a server that
refused the service anything fails the test that ran it (its ACL LOG is read at stop).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[1]
ACL_FILE = ROOT / "config" / "redis-acl.conf"
ACL_ENV = "DIALGUARD_TEST_REDIS_ACL"
# Which of the file's users `url` logs in as: the service's, or the CLI's.
SERVICE_USER = os.environ.get("DIALGUARD_TEST_REDIS_USER", "dialguard")
USERS = ("dialguard", "dialguard-cli")
# One per test run, so a server restarted on its port takes the URL it had.
SERVICE_PASSWORD = secrets.token_hex(12)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class RedisServer:
    port: int
    process: subprocess.Popen[bytes]
    workdir: Path
    password: str = ""  # the service user's, when the ACL is on

    @property
    def url(self) -> str:
        """What the service connects with (its ACL user when the ACL is on)."""
        if self.password:
            return f"redis://{SERVICE_USER}:{self.password}@127.0.0.1:{self.port}/0"
        return self.admin_url

    @property
    def admin_url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open, nothing answers."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)


def _wait_ready(port: int, deadline_s: float = 10.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2) as s:
            s.sendall(b"PING\r\n")
            if s.recv(16).startswith(b"+PONG"):
                return
        time.sleep(0.05)
    raise RuntimeError(f"redis-server on port {port} did not start")


def write_acl_file(path: Path, password: str) -> None:
    """The shipped ACL rules with `password` given to their users, and a default user (no
    password, every right) for what the tests themselves do."""
    lines = [
        f"{line} >{password}" if line.split()[:2] in (["user", u] for u in USERS) else line
        for line in ACL_FILE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    lines.append("user default on nopass ~* &* +@all")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


# Refusals the code expects and works around: imports ask CONFIG GET for the intset
# limit and take Redis's default without it (config/redis-acl.conf says why it is not
# granted).
EXPECTED_DENIALS = {"command config|get (dialguard-cli)"}


def acl_denials(port: int) -> list[str]:
    """What the server refused since it started, `reason object (user)`, but for
    EXPECTED_DENIALS."""
    with redis.Redis(host="127.0.0.1", port=port) as client:
        entries = client.acl_log(count=1000)
    found = {f"{entry['reason']} {entry['object']} ({entry['username']})" for entry in entries}
    return sorted(found - EXPECTED_DENIALS)


@contextlib.contextmanager
def running_redis(
    port: int = 0, args: Sequence[str] = (), *, acl: bool | None = None
) -> Iterator[RedisServer]:
    """A fresh, empty redis-server; on `port` when given (a restart of an earlier one).
    `args`: more redis-server options; `acl`: load config/redis-acl.conf (default: when
    DIALGUARD_TEST_REDIS_ACL=1)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server not found: run the tests through `make test`")
    workdir = Path(tempfile.mkdtemp(prefix="dialguard-redis-"))
    port = port or free_port()
    if port == 6379:  # pragma: no cover - the kernel would have to hand it out
        port = free_port()
    if acl is None:
        acl = os.environ.get(ACL_ENV) == "1"
    password = SERVICE_PASSWORD if acl else ""
    options = list(args)
    if acl:
        write_acl_file(workdir / "users.acl", password)
        options += ["--aclfile", str(workdir / "users.acl")]
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
            "--daemonize",
            "no",
            *options,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_ready(port)
        yield RedisServer(port=port, process=process, workdir=workdir, password=password)
        if acl and process.poll() is None:
            process.send_signal(signal.SIGCONT)
            denied = acl_denials(port)
            assert not denied, f"the ACL of config/redis-acl.conf refused: {denied}"
    finally:
        process.send_signal(signal.SIGCONT)
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)
