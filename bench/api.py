"""HTTP API load benchmark: POST /v1/decisions against dialguard's API and a bare aiohttp
baseline (same loop, a handler answering a constant), in one run.

    .venv/bin/python bench/api.py [--duration 10] [--concurrency 200] [--rate 1000]

The method of bench/agi_load.py: a private redis-server on a free port (never 6379) with a
consent for each of 50,000 numbers (1 % of them on the do-not-call list), so requests are
full decisions (facts, atomic count, durable audit record); the server pinned to core 0,
the load generator and Redis to core 1; for each server a 1 s warm-up, a closed loop of N
concurrent requests (saturation) and an open loop at a fixed offered rate (latency from
each request's scheduled start, so a stalled server cannot hide its queue). A client is a
dialer or a CRM holding its connections open (HTTP/1.1 keep-alive), each
request with its bearer token; latency is request sent to whole answer read. The client
writes and reads HTTP/1.1 bytes itself (as the AGI benchmark plays Asterisk with a bare
protocol): a client library would take more of the core it shares with Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from agi_load import (  # noqa: E402
    LOADGEN_CORE,
    POOL,
    SERVER_CORE,
    Pacing,
    Phase,
    arguments,
    audit_reasons,
    free_port,
    load_consents,
    redis_server,
    report,
    run_phase,
)

from dialguard.api.tokens import add_token  # noqa: E402

CAMPAIGN = "demo-prospecting"


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection of the load generator: a request written whole,
    the answer read up to its Content-Length. Bytes in, bytes out, as the AGI benchmark's
    client: an HTTP client library would spend more of the shared core than the server."""

    def __init__(self, lost: Callable[[Connection], None]) -> None:
        self.transport: Any = None
        self.buffer = b""
        self.waiting: asyncio.Future[tuple[int, bytes]] | None = None
        self.lost = lost

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def send(self, request: bytes) -> asyncio.Future[tuple[int, bytes]]:
        self.waiting = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self.waiting

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0 or self.waiting is None:
            return
        head = self.buffer[:head_end].lower()
        at = head.find(b"content-length:")
        length = int(head[at + 15 : head.find(b"\r\n", at)]) if at >= 0 else 0
        if len(self.buffer) < head_end + 4 + length:
            return
        status = int(self.buffer[9:12])
        body = self.buffer[head_end + 4 : head_end + 4 + length]
        self.buffer = self.buffer[head_end + 4 + length :]
        waiting, self.waiting = self.waiting, None
        waiting.set_result((status, body))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost(self)
        if self.waiting is not None and not self.waiting.done():
            self.waiting.set_exception(ConnectionError("closed by the server"))


class Pool:
    """Idle keep-alive connections; a request takes one or opens another (no cap: as the
    AGI benchmark opens a connection per call, nothing queues in the load generator)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.idle: list[Connection] = []

    def _lost(self, connection: Connection) -> None:
        if connection in self.idle:
            self.idle.remove(connection)

    async def request(self, payload: bytes) -> tuple[int, bytes]:
        if self.idle:
            connection = self.idle.pop()
        else:
            loop = asyncio.get_running_loop()
            _, connection = await loop.create_connection(
                lambda: Connection(self._lost), "127.0.0.1", self.port
            )
        status, body = await asyncio.wait_for(connection.send(payload), 10)
        self.idle.append(connection)
        return status, body

    def close(self) -> None:
        for connection in self.idle:
            connection.transport.close()
        self.idle.clear()


def request_bytes(port: int, token: str, body: bytes) -> bytes:
    return (
        f"POST /v1/decisions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


class Load(Pacing):
    def __init__(self, pool: Pool, requests: list[bytes]) -> None:
        super().__init__()
        self.pool = pool
        self.requests = requests

    async def one(self, started: float) -> None:
        try:
            status, answer = await self.pool.request(random.choice(self.requests))
        except (OSError, TimeoutError) as exc:
            if not self.failed:
                print(f"request failed: {exc!r}", file=sys.stderr)
            self.failed += 1
            return
        self.latencies.append(time.perf_counter() - started)
        if status != 200:
            self.failed += 1
        elif b'"result":"ALLOW"' in answer:
            self.allowed += 1
        else:
            self.denied += 1


@contextmanager
def api_server(mode: str, redis_url: str, workdir: Path, tokens: Path) -> Iterator[tuple[int, int]]:
    port = free_port()
    log = open(workdir / f"{mode}.log", "w")  # noqa: SIM115
    process = subprocess.Popen(
        ["taskset", "-c", str(SERVER_CORE), sys.executable, str(ROOT / "bench" / "api_server.py"),
         "--mode", mode, "--port", str(port), "--config", str(ROOT / "config" / "dialguard.toml"),
         "--redis", redis_url, "--audit", str(workdir / f"audit-{mode}"), "--tokens", str(tokens)],
        stdout=subprocess.PIPE,
        stderr=log,
    )  # fmt: skip
    assert process.stdout is not None
    if not process.stdout.readline().startswith(b"ready"):
        sys.exit(f"{mode} server did not start; see {workdir / f'{mode}.log'}")
    try:
        yield process.pid, port
    finally:
        process.terminate()
        process.wait()
        log.close()
        for line in (workdir / f"{mode}.log").read_text().splitlines():
            if '"pauses"' in line:
                print(f"{mode} server: {line}")


async def loop_lag(lags: list[float]) -> None:
    while True:
        before = time.perf_counter()
        await asyncio.sleep(0.001)
        lags.append(time.perf_counter() - before - 0.001)


async def main(args: argparse.Namespace) -> list[Phase]:
    os.sched_setaffinity(0, {LOADGEN_CORE})
    random.seed(7)
    numbers = [f"06{n:08d}" for n in random.sample(range(10**8), POOL)]
    bodies = [
        json.dumps({"number": n, "campaign": CAMPAIGN, "call_id": str(i)}).encode()
        for i, n in enumerate(numbers)
    ]
    phases: list[Phase] = []
    with tempfile.TemporaryDirectory(prefix="dialguard-bench-") as tmp:
        workdir = Path(tmp)
        tokens = workdir / "api-tokens.json"
        token = add_token(tokens, "bench", ["decide"], "bench")
        with redis_server(workdir) as redis_url:
            await load_consents(redis_url, numbers)
            for name in args.servers:
                with api_server(name, redis_url, workdir, tokens) as (pid, port):
                    requests = [request_bytes(port, token, body) for body in bodies]
                    pool = Pool(port)
                    for mode in args.modes:
                        lags: list[float] = []
                        watching = asyncio.create_task(loop_lag(lags))
                        load = partial(Load, pool, requests)
                        phase = await run_phase(name, mode, pid, load, args)
                        watching.cancel()
                        print(json.dumps(asdict(phase)), flush=True)
                        # The load generator's own lateness: latency it would add.
                        lags.sort()
                        print(
                            f"load generator loop lag: p99"
                            f" {lags[int(len(lags) * 0.99)] * 1000:.2f} ms,"
                            f" max {lags[-1] * 1000:.2f} ms"
                        )
                        phases.append(phase)
                    pool.close()
                if any(p.failed for p in phases if p.server == name):
                    lines = (workdir / f"{name}.log").read_text().splitlines()
                    print("\n".join(lines[-5:]), file=sys.stderr)
                if name == "dialguard":
                    print("reasons:", dict(audit_reasons(workdir / "audit-dialguard")))
    return phases


if __name__ == "__main__":
    phases = uvloop.run(main(arguments(__doc__.splitlines()[0])))
    report(phases, header="| server | load | requests/s | server CPU µs/request")
