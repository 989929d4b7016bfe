"""Redis as production runs it, for tests: a replica, three sentinels, TLS with a test CA.
Every process on a free private port of 127.0.0.1, in a temporary directory, stopped at
the end (tests/redis_server.py for the plain server)."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from tests.redis_server import RedisServer, free_port, running_redis

SERVICE = "main"  # the primary's name in the sentinels' configuration


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with contextlib.suppress(redis.RedisError, OSError):
            if predicate():
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what}: not within {timeout} s")


@contextlib.contextmanager
def running_replica(primary: RedisServer) -> Iterator[RedisServer]:
    """A redis-server replicating `primary`, in sync when it is handed out."""
    with redis.Redis(host="127.0.0.1", port=primary.port) as client:
        # The primary waits 5 s by default for more replicas before a full sync.
        client.config_set("repl-diskless-sync-delay", 0)
    with running_redis(args=["--replicaof", "127.0.0.1", str(primary.port)], acl=False) as replica:
        # In sync as WAIT sees it: after a full sync the replica counts only once it has
        # loaded the data and acknowledged an offset.
        client = redis.Redis(host="127.0.0.1", port=primary.port, single_connection_client=True)

        def acknowledged() -> bool:
            client.set("test:replica-ready", 1)
            return int(client.wait(1, 100)) == 1

        wait_for(acknowledged, "the replica's link to its primary")
        client.delete("test:replica-ready")
        client.close()
        yield replica


@dataclass
class Sentinels:
    ports: list[int]
    processes: list[subprocess.Popen[bytes]]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.ports)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def primary_port(self) -> int:
        with redis.Redis(host="127.0.0.1", port=self.ports[0]) as client:
            _, port = client.sentinel_get_master_addr_by_name(SERVICE)
        return int(port)


@contextlib.contextmanager
def running_sentinels(
    primary: RedisServer,
    replicas: int,
    *,
    count: int = 3,
    down_after_ms: int = 1000,
    password: str | None = None,
) -> Iterator[Sentinels]:
    """`count` redis-sentinel processes watching `primary` (quorum: a majority), each
    knowing the others and the `replicas` replicas when handed out; with `password`, each
    asks clients for it (`requirepass`) and gives it to the others."""
    binary = shutil.which("redis-sentinel")
    if binary is None:
        raise RuntimeError("redis-sentinel not found: run the tests through `make test`")
    workdir = Path(tempfile.mkdtemp(prefix="dialguard-sentinel-"))
    ports = [free_port() for _ in range(count)]
    processes = []
    try:
        for port in ports:
            conf = workdir / f"sentinel-{port}.conf"  # sentinel rewrites its own file
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndaemonize no\ndir {workdir}\n"
                f"logfile {workdir}/sentinel-{port}.log\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {primary.port} {count // 2 + 1}\n"
                f"sentinel down-after-milliseconds {SERVICE} {down_after_ms}\n"
                # A split vote is tried again after this, not after the default 3 minutes.
                f"sentinel failover-timeout {SERVICE} 3000\n"
                f"sentinel parallel-syncs {SERVICE} 1\n"
                + (
                    f"requirepass {password}\nsentinel sentinel-pass {password}\n"
                    if password
                    else ""
                ),
                encoding="utf-8",
            )
            processes.append(
                subprocess.Popen(
                    [binary, str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
            )
        for port in ports:
            client = redis.Redis(host="127.0.0.1", port=port, password=password)

            def ready(client: redis.Redis = client) -> bool:
                state: dict[str, Any] = client.sentinel_master(SERVICE)  # type: ignore[assignment]
                return bool(
                    state["num-other-sentinels"] == count - 1 and state["num-slaves"] == replicas
                )

            wait_for(ready, "the sentinels finding each other and the replicas", 30)
            client.close()
        yield Sentinels(ports, processes)
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


@dataclass
class TlsFiles:
    ca: Path  # the CA that signed the server's certificate
    cert: Path
    key: Path
    other_ca: Path  # a CA that signed nothing here: a client trusting it must refuse


def make_tls_files(directory: Path) -> TlsFiles:
    """A test CA and a certificate it signs for 127.0.0.1, with the openssl command."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("openssl not found: run the tests through `make test`")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=directory, check=True, capture_output=True)

    for name in ("ca", "other-ca"):
        run(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", f"/CN=dialguard test {name}",
            "-keyout", f"{name}.key", "-out", f"{name}.crt",
        )  # fmt: skip
    (directory / "san.ext").write_text("subjectAltName = IP:127.0.0.1\n", encoding="utf-8")
    run(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", "redis.key", "-out", "redis.csr",
    )  # fmt: skip
    run(
        "x509", "-req", "-in", "redis.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "redis.crt",
    )  # fmt: skip
    return TlsFiles(
        directory / "ca.crt", directory / "redis.crt", directory / "redis.key",
        directory / "other-ca.crt",
    )  # fmt: skip
