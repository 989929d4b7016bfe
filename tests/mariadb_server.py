"""A private, throw-away MariaDB for tests: never the machine's own on 3306 or its socket.

`mariadb-install-db` into a temporary directory, then `mariadbd` on a free port of
127.0.0.1 with its socket, pid file and log in that directory; stopped (SIGTERM, then
SIGKILL) and the directory removed at the end. `stop()` and `start()` take the same server
down and up again on the same port (VICIdial's database down, then back). `--no-defaults`
everywhere: no my.cnf of the machine is read. As root, the server runs as the `mysql` user
(Debian's mariadb-server package makes it; `make test` installs the package when missing).

Root connects over the socket with no password (`--auth-root-authentication-method=normal`
leaves it none; the socket is in the private directory). The tests' sync connects over TCP
as a real user with a password drawn for each run, as dialguard does against VICIdial.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pymysql

from tests.redis_server import free_port

USER = "cron"  # VICIdial's own scripts' user, as in the issue's example
_SEARCH = (Path("/usr/sbin"), Path("/usr/bin"), Path("/usr/local/sbin"), Path("/usr/local/bin"))


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found is not None:
        return found
    for folder in _SEARCH:
        if (folder / name).is_file():
            return str(folder / name)
    raise RuntimeError(f"MariaDB's {name} not found: run the tests through `make test`")


@dataclass
class MariaDbServer:
    port: int
    workdir: Path
    password: str
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def socket(self) -> Path:
        return self.workdir / "mysqld.sock"

    def url(self, database: str) -> str:
        """The URL the configuration holds (no password in it: that goes in the
        environment or a file)."""
        return f"mysql://{USER}@127.0.0.1:{self.port}/{database}"

    def root(
        self, database: str | None = None
    ) -> pymysql.connections.Connection[pymysql.cursors.Cursor]:
        return pymysql.connect(
            unix_socket=str(self.socket), user="root", database=database, autocommit=True
        )

    def start(self) -> None:
        command = [
            _binary("mariadbd"), "--no-defaults",
            f"--datadir={self.workdir / 'data'}",
            f"--socket={self.socket}",
            f"--pid-file={self.workdir / 'mysqld.pid'}",
            f"--log-error={self.workdir / 'error.log'}",
            f"--port={self.port}", "--bind-address=127.0.0.1",
            "--skip-name-resolve", "--skip-log-bin",
            "--innodb-buffer-pool-size=16M", "--innodb-flush-log-at-trx-commit=0",
            "--max-connections=50",
        ]  # fmt: skip
        if os.geteuid() == 0:
            command.append("--user=mysql")
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                self.root().close()
                return
            except pymysql.MySQLError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    log = (self.workdir / "error.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"mariadbd did not start:\n{log}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    @contextlib.contextmanager
    def database(self) -> Iterator[str]:
        """A fresh database with VICIdial's do-not-call tables and the sync's user; its
        name. Dropped afterwards."""
        name = "vici_" + secrets.token_hex(4)
        with self.root() as db, db.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE {name}")
            cursor.execute(f"GRANT SELECT, INSERT ON {name}.* TO %s@'127.0.0.1'", (USER,))
        create_vicidial_tables(self, name)
        try:
            yield name
        finally:
            with self.root() as db, db.cursor() as cursor:
                cursor.execute(f"DROP DATABASE IF EXISTS {name}")


# VICIdial's do-not-call tables as its schema defines them (MyISAM, as VICIdial installs
# them): ../shared/reference/vicidial.md.
VICIDIAL_TABLES = (
    """CREATE TABLE vicidial_dnc (
        phone_number VARCHAR(18) PRIMARY KEY NOT NULL
    ) ENGINE=MyISAM""",
    """CREATE TABLE vicidial_campaign_dnc (
        phone_number VARCHAR(18) NOT NULL,
        campaign_id VARCHAR(8) NOT NULL,
        INDEX (phone_number),
        UNIQUE INDEX phonecamp (phone_number, campaign_id)
    ) ENGINE=MyISAM""",
    """CREATE TABLE vicidial_dnc_log (
        phone_number VARCHAR(18) NOT NULL,
        campaign_id VARCHAR(8) NOT NULL,
        action ENUM('add','delete') DEFAULT 'add',
        action_date DATETIME NOT NULL,
        user VARCHAR(20) DEFAULT '',
        INDEX (phone_number)
    ) ENGINE=MyISAM""",
)


def create_vicidial_tables(server: MariaDbServer, database: str, *, log: bool = True) -> None:
    with server.root(database) as db, db.cursor() as cursor:
        for statement in VICIDIAL_TABLES if log else VICIDIAL_TABLES[:2]:
            cursor.execute(statement)


@contextlib.contextmanager
def running_mariadb() -> Iterator[MariaDbServer]:
    workdir = Path(tempfile.mkdtemp(prefix="dialguard-mariadb-"))
    password = secrets.token_hex(12)
    if os.geteuid() == 0:
        owner = pwd.getpwnam("mysql")
        os.chown(workdir, owner.pw_uid, owner.pw_gid)
    install = [
        _binary("mariadb-install-db"), "--no-defaults",
        f"--datadir={workdir / 'data'}",
        "--auth-root-authentication-method=normal", "--skip-test-db",
    ]  # fmt: skip
    if os.geteuid() == 0:
        install.append("--user=mysql")
    subprocess.run(install, check=True, capture_output=True, cwd=workdir)
    port = free_port()
    if port == 3306:  # pragma: no cover - the machine's own server holds it anyway
        port = free_port()
    server = MariaDbServer(port, workdir, password)
    try:
        server.start()
        with server.root() as db, db.cursor() as cursor:
            cursor.execute("CREATE USER %s@'127.0.0.1' IDENTIFIED BY %s", (USER, password))
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
