"""A private, throw-away PostgreSQL for tests: never the machine's own on 5432.

`initdb` into a temporary directory, then `pg_ctl start` on a free port of 127.0.0.1,
with its unix socket in that directory too; `pg_ctl stop` and the directory removed at the
end. The binaries are found on the PATH, else in Debian's /usr/lib/postgresql/<version>/
bin (the newest version there), as the `postgresql` package installs them (`make test`
installs it when missing). initdb refuses to run as root: as root, the cluster directory
is given to the `postgres` user (made by that package) and the commands run as that user
(runuser). Connections over TCP need the password (scram-sha-256), drawn for each run;
the superuser is `dialguard`.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg

from tests.redis_server import free_port

USER = "dialguard"
_DEBIAN = Path("/usr/lib/postgresql")


def bin_dir() -> Path:
    """Where initdb, pg_ctl and pg_dump are; RuntimeError when PostgreSQL is missing."""
    found = shutil.which("initdb")
    if found is not None:
        return Path(found).resolve().parent
    versions = sorted(
        (p for p in _DEBIAN.glob("*/bin/initdb") if re.fullmatch(r"\d+", p.parent.parent.name)),
        key=lambda p: int(p.parent.parent.name),
    )
    if not versions:
        raise RuntimeError("PostgreSQL's initdb not found: run the tests through `make test`")
    return versions[-1].parent


@dataclass
class PostgresServer:
    port: int
    workdir: Path
    password: str
    bin: Path

    def url(self, database: str = "postgres") -> str:
        """The URL without the password (it goes in DIALGUARD_CENTRAL_PASSWORD)."""
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def admin(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.url(), password=self.password, autocommit=True)

    @contextlib.contextmanager
    def database(self) -> Iterator[str]:
        """A fresh database, dropped afterwards; its URL (no password in it)."""
        name = "t_" + secrets.token_hex(6)
        with self.admin() as db:
            db.execute(f"CREATE DATABASE {name}".encode())
        try:
            yield self.url(name)
        finally:
            with self.admin() as db:
                db.execute(f"DROP DATABASE {name} WITH (FORCE)".encode())

    def dump_schema(self, url: str) -> str:
        """`pg_dump --schema-only` of a database: what a migration changed."""
        database = url.rsplit("/", 1)[1]
        dump = subprocess.run(
            [str(self.bin / "pg_dump"), "--schema-only", "-h", "127.0.0.1", "-p", str(self.port),
             "-U", USER, database],
            env={**os.environ, "PGPASSWORD": self.password},
            check=True,
            capture_output=True,
            text=True,
        ).stdout  # fmt: skip
        # Recent pg_dump guards its output with a random key per dump: not the schema.
        return "\n".join(
            line
            for line in dump.splitlines()
            if not line.startswith(("\\restrict", "\\unrestrict"))
        )


def _as_owner(command: list[str]) -> list[str]:
    """Root runs the cluster's commands as `postgres` (initdb refuses root)."""
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


@contextlib.contextmanager
def running_postgres(
    *, durable: bool = False, kept: Path | None = None
) -> Iterator[PostgresServer]:
    """A fresh cluster. `durable`: fsync on (benchmarks); off by default, for speed (a test
    never survives a power cut). `kept`: the cluster lives in that directory and stays
    there after it stops (a benchmark's 10 M-record store, built once, measured often):
    made there the first time, started again from it the next."""
    binaries = bin_dir()
    reused = kept is not None and (kept / "data").is_dir()
    if kept is not None:
        kept.mkdir(parents=True, exist_ok=True)
    workdir = kept if kept is not None else Path(tempfile.mkdtemp(prefix="dialguard-pg-"))
    secret = workdir / "pwfile"
    password = secret.read_text(encoding="utf-8").strip() if reused else secrets.token_hex(12)
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(workdir, owner.pw_uid, owner.pw_gid)
    if not reused:
        secret.write_text(password + "\n", encoding="utf-8")
        secret.chmod(0o600)
        if os.geteuid() == 0:
            os.chown(secret, owner.pw_uid, owner.pw_gid)
    port = free_port()
    if port == 5432:  # pragma: no cover - the kernel would have to hand it out
        port = free_port()
    data = workdir / "data"
    settings = [
        f"-p {port}",
        f"-k {workdir}",
        "-c listen_addresses=127.0.0.1",
        "-c max_connections=50",
    ]
    if not durable:
        settings += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
    if not reused:
        subprocess.run(
            _as_owner(
                [str(binaries / "initdb"), "-D", str(data), "-U", USER, f"--pwfile={secret}",
                 "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8",
                 "--locale=C", "--no-sync"]
            ),
            check=True,
            capture_output=True,
        )  # fmt: skip
    log = workdir / "server.log"
    try:
        subprocess.run(
            _as_owner(
                [str(binaries / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60",
                 "-o", " ".join(settings), "start"]
            ),
            check=True,
            capture_output=True,
        )  # fmt: skip
        yield PostgresServer(port, workdir, password, binaries)
    finally:
        subprocess.run(
            _as_owner([str(binaries / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
            capture_output=True,
        )
        if kept is None:
            shutil.rmtree(workdir, ignore_errors=True)
