"""Classic AGI start-up cost: what one `AGI(dialguard.agi,...)` costs per call, against one
FastAGI session on a running `dialguard serve`.

    .venv/bin/python bench/classic_agi.py [--runs 50] [--fastagi-sessions 500]

It starts a private redis-server on a free port (never 6379) and stops it at the end. A
fake Asterisk (this process) then, one call at a time:

- classic: spawns agi/dialguard.agi through its shebang (this virtualenv's python first on
  PATH, as in production), writes the agi_* block Asterisk writes for classic AGI (one write
  per line), answers each command with ``200 result=1`` and waits for the exit. Wall time is
  spawn to exit; CPU is the child's user + system time (getrusage of children);
- baselines, spawned the same way: ``python -c pass`` (interpreter start-up), then the
  interpreter and the script's imports (``IMPORTS`` below: what the script does before it
  reads its first byte);
- FastAGI: connects to `dialguard serve` (started here on a free port, warmed up), sends
  the FastAGI block, answers each command, waits for the close. Wall time is connect to
  close; CPU is the server process's user + system time over all sessions, divided by
  their number (/proc, 10 ms ticks, hence the larger session count).

Every call is a full decision for a fresh mobile number in a press campaign (facts read,
attempt counted when inside calling hours, audit record fsync'd). Not measured: Asterisk's
own fork/exec of the script, which a large Asterisk process pays on top.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the Asterisk peer of the tests builds the blocks

from tests.agi.asterisk_peer import agi_env, encode_block  # noqa: E402

SCRIPT = ROOT / "agi" / "dialguard.agi"
VENV_BIN = Path(sys.executable).parent
CAMPAIGN = "demo-press"
REPLY = b"200 result=1\n"
# What agi/dialguard.agi runs before its first line of work.
IMPORTS = "import sys; sys.modules['rich'] = None; import dialguard.agi.classic"


@dataclass
class Sample:
    wall_s: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)
    results: Counter[str] = field(default_factory=Counter)


def free_port() -> int:
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port != 6379:
            return port


def wait_port(port: int, ping: bytes | None = None, timeout_s: float = 10.0) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2) as s:
            if ping is None:
                return
            s.sendall(ping)
            if s.recv(16).startswith(b"+PONG"):
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing answers on 127.0.0.1:{port}")


@contextlib.contextmanager
def private_redis(workdir: Path) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found (apt-get install redis-server)")
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    argv += ["--appendonly", "no", "--dir", str(workdir), "--daemonize", "no"]
    process = subprocess.Popen(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port, b"PING\r\n")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)


def write_config(directory: Path, fastagi_port: int) -> Path:
    path = directory / "dialguard.toml"
    path.write_text(
        f"""
node = "bench"
[redis]
prefix = "dialguard:"
timeout_ms = 250
[server]
host = "127.0.0.1"
port = {fastagi_port}
deadline_ms = 300
session_timeout_ms = 5000
[audit]
dir = "{directory / "audit"}"
[policy]
file = "{ROOT / "config" / "policy" / "france.toml"}"
[campaigns.{CAMPAIGN}]
principal = "ACME"
purpose = "press"
"""
    )
    return path


def block(number: str, session: int, *, fastagi_port: int | None) -> list[bytes]:
    """The agi_* block of Asterisk 22.10.1, one bytes object per line as it writes them;
    classic AGI gets the same block without the agi_network keys."""
    args = (number, CAMPAIGN)
    if fastagi_port is not None:
        env = agi_env("127.0.0.1", fastagi_port, script="check", args=args, session=session)
    else:
        classic = {"agi_network": None, "agi_network_script": None, "agi_request": "dialguard.agi"}
        env = agi_env("", 0, script="", args=args, env_overrides=classic, session=session)
    return encode_block(env)


def result_of(commands: Sequence[bytes]) -> str:
    found = dict(line.split(b'"')[1:4:2] for line in commands if line.startswith(b"SET VARIABLE"))
    return (
        found.get(b"DIALGUARD_RESULT", b"-") + b" " + found.get(b"DIALGUARD_REASON", b"-")
    ).decode()


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def spawn_once(argv: Sequence[str], env: dict[str, str], lines: Sequence[bytes]) -> list[bytes]:
    """One classic AGI call as Asterisk makes it; returns the commands the script sent."""
    process = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env
    )
    assert process.stdin is not None and process.stdout is not None
    commands: list[bytes] = []
    with contextlib.suppress(BrokenPipeError):
        for line in lines:
            process.stdin.write(line)
            process.stdin.flush()
        while command := process.stdout.readline():
            commands.append(command)
            process.stdin.write(REPLY)
            process.stdin.flush()
    process.stdin.close()
    process.stdout.close()
    if process.wait() != 0 and lines:
        raise RuntimeError(f"{argv[0]} exited with {process.returncode}")
    return commands


def measure_spawns(
    argv: Sequence[str], env: dict[str, str], runs: int, *, agi: bool, offset: int
) -> Sample:
    sample = Sample()
    for i in range(runs):
        number = f"06{20000000 + offset + i:08d}"
        lines = block(number, offset + i, fastagi_port=None) if agi else []
        cpu0, wall0 = children_cpu(), time.perf_counter()
        commands = spawn_once(argv, env, lines)
        sample.wall_s.append(time.perf_counter() - wall0)
        sample.cpu_s.append(children_cpu() - cpu0)
        if agi:
            sample.results[result_of(commands)] += 1
    return sample


def fastagi_session(port: int, lines: Sequence[bytes]) -> list[bytes]:
    commands: list[bytes] = []
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for line in lines:
            sock.sendall(line)
        reader = sock.makefile("rb")
        while command := reader.readline():
            commands.append(command)
            sock.sendall(REPLY)
    return commands


def process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def measure_fastagi(env: dict[str, str], config: Path, port: int, sessions: int) -> Sample:
    server = subprocess.Popen(
        [str(VENV_BIN / "dialguard"), "serve", "--config", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port)
        for i in range(20):  # warm-up: imports done, Redis connections open
            fastagi_session(port, block(f"06{30000000 + i:08d}", i, fastagi_port=port))
        sample = Sample()
        cpu0 = process_cpu(server.pid)
        for i in range(sessions):
            lines = block(f"06{40000000 + i:08d}", i, fastagi_port=port)
            wall0 = time.perf_counter()
            commands = fastagi_session(port, lines)
            sample.wall_s.append(time.perf_counter() - wall0)
            sample.results[result_of(commands)] += 1
        sample.cpu_s = [(process_cpu(server.pid) - cpu0) / sessions]
        return sample
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=20)


def ms(value: float) -> str:
    return f"{value * 1000:.1f}"


def row(name: str, sample: Sample) -> str:
    wall = sorted(sample.wall_s)
    p90 = statistics.quantiles(wall, n=10)[8] if len(wall) >= 2 else wall[0]
    cpu = sorted(sample.cpu_s)
    cpu_p90 = statistics.quantiles(cpu, n=10)[8] if len(cpu) >= 2 else cpu[0]
    return (
        f"| {name} | {len(wall)} | {ms(statistics.median(wall))} | {ms(p90)} "
        f"| {ms(statistics.median(cpu))} | {ms(cpu_p90)} |"
    )


def machine() -> str:
    model = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        for line in subprocess.run(
            ["lscpu"], capture_output=True, text=True, check=True
        ).stdout.splitlines():
            if line.startswith("Model name"):
                model = line.split(":", 1)[1].strip()
    return (
        f"nproc {os.cpu_count()}, {model or platform.processor()}, "
        f"Linux {platform.release()}, Python {platform.python_version()}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50, help="classic AGI runs (default 50)")
    parser.add_argument(
        "--fastagi-sessions", type=int, default=500, help="FastAGI sessions (default 500)"
    )
    options = parser.parse_args()
    python = str(VENV_BIN / "python")
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="dialguard-bench-") as tmp:
        workdir = Path(tmp)
        fastagi_port = free_port()
        config = write_config(workdir, fastagi_port)
        with private_redis(workdir) as redis_url:
            env = {k: v for k, v in os.environ.items() if not k.startswith("DIALGUARD_")}
            env |= {
                "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
                "DIALGUARD_CONFIG": str(config),
                "DIALGUARD_REDIS_URL": redis_url,
            }
            runs = options.runs
            spawn_once([str(SCRIPT)], env, block("0612345678", 0, fastagi_port=None))  # warm
            bare = measure_spawns([python, "-c", "pass"], env, runs, agi=False, offset=0)
            imports = measure_spawns([python, "-c", IMPORTS], env, runs, agi=False, offset=0)
            classic = measure_spawns([str(SCRIPT)], env, runs, agi=True, offset=0)
            fastagi = measure_fastagi(env, config, fastagi_port, options.fastagi_sessions)

    print(f"machine: {machine()}")
    print(f"load average (1 min): {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")
    print(
        f"command: .venv/bin/python bench/classic_agi.py --runs {runs} "
        f"--fastagi-sessions {options.fastagi_sessions}"
    )
    print()
    print("| per call | n | wall median ms | wall p90 ms | CPU median ms | CPU p90 ms |")
    print("|---|---|---|---|---|---|")
    print(row("`python -c pass` (interpreter alone)", bare))
    print(row("interpreter + the script's imports", imports))
    print(row("classic AGI `dialguard.agi` (full call)", classic))
    print(row("FastAGI session on `dialguard serve`", fastagi))
    print()
    print("FastAGI CPU: server process time over all sessions / sessions (one figure).")
    print(f"classic answers: {dict(classic.results)}")
    print(f"FastAGI answers: {dict(fastagi.results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
