"""`make run`: a Redis if none is configured, the sample data, then the service and the
supervisors' console.

Without DIALGUARD_REDIS_URL, a redis-server of the project's own is started on
127.0.0.1:6390 with its data under .run/redis (append-only file on: do-not-call entries
must survive a restart), and left running for the next `make run`.

`dialguard serve` (FastAGI, health and metrics; it ships the journal into the central
store) and `dialguard console` (http://127.0.0.1:8574/) run side by side until Ctrl-C or
SIGTERM, which stops both; either one stopping stops the other.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN_DIR = ROOT / ".run"
LOCAL_REDIS_PORT = 6390
# --replace: running `make run` again leaves the same lists, not the samples twice.
SAMPLES = [
    ("dnc", "dnc.csv", ["--replace"]),
    ("consent", "consent.csv", ["--replace"]),
    ("contract", "contract.csv", ["--replace"]),
    ("bloctel", "bloctel.csv", ["--replace", "--checked-at", "2026-07-20", "--ref", "sample"]),
]


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), 0.3) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _local_redis() -> str:
    url = f"redis://127.0.0.1:{LOCAL_REDIS_PORT}/0"
    if _answers(LOCAL_REDIS_PORT):
        return url
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("make run: redis-server not found; install it or set DIALGUARD_REDIS_URL")
    data = RUN_DIR / "redis"
    data.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            binary,
            "--port", str(LOCAL_REDIS_PORT),
            "--bind", "127.0.0.1",
            "--dir", str(data),
            "--appendonly", "yes",
            "--daemonize", "yes",
            "--logfile", str(data / "redis.log"),
            "--pidfile", str(data / "redis.pid"),
        ],
        check=True,
    )  # fmt: skip
    for _ in range(100):
        if _answers(LOCAL_REDIS_PORT):
            print(f"make run: started redis-server on {url} (data in .run/redis)")
            return url
        time.sleep(0.05)
    sys.exit(f"make run: redis-server did not start; see {data / 'redis.log'}")


def _drop_old_sample_layout(url: str, config: Path) -> None:
    """Our own Redis holds only sample data: an earlier `make run` may have left it in the
    one-hash-per-list layout, which `serve` refuses (docs/data-model.md, Upgrading)."""
    import redis

    from dialguard.config import load_config
    from dialguard.store.keys import Keys

    keys = Keys(load_config(config, env={"DIALGUARD_REDIS_URL": url}).redis.prefix)
    client = redis.Redis.from_url(url)
    client.delete(*(keys.legacy(kind) for kind in ("dnc", "optout", "consent", "contract")))
    client.close()


def _console_hint(env: dict[str, str]) -> None:
    from dialguard.config import console_settings, load_config

    settings = console_settings(load_config(Path(env["DIALGUARD_CONFIG"]), env=env))
    print(f"make run: the console on http://{settings.host}:{settings.port}/")
    if not settings.users_file.exists():
        print(
            "make run: no console user yet; in another terminal:\n"
            "    .venv/bin/dialguard console user add NAME --role compliance"
        )


def main() -> None:
    env = dict(os.environ)
    env.setdefault("DIALGUARD_CONFIG", str(ROOT / "config" / "dialguard.toml"))
    if not env.get("DIALGUARD_REDIS_URL"):
        env["DIALGUARD_REDIS_URL"] = _local_redis()
        _drop_old_sample_layout(env["DIALGUARD_REDIS_URL"], Path(env["DIALGUARD_CONFIG"]))
    dialguard = str(Path(sys.executable).parent / "dialguard")
    for kind, name, extra in SAMPLES:
        path = ROOT / "config" / "sample" / name
        if path.exists():
            subprocess.run([dialguard, "import", kind, str(path), *extra], env=env, check=True)
    _console_hint(env)
    service = subprocess.Popen([dialguard, "serve"], env=env)
    console = subprocess.Popen([dialguard, "console"], env=env)
    children = (service, console)

    def stop(signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    # Ctrl-C reaches the children by themselves (one process group); SIGTERM to this
    # process is passed on.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, lambda *_: None)
    while all(child.poll() is None for child in children):
        time.sleep(0.2)
    for child in children:
        if child.poll() is None:
            child.terminate()
    for child in children:
        child.wait()
    sys.exit(service.returncode or console.returncode or 0)


if __name__ == "__main__":
    main()
