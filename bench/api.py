"""HTTP API load benchmark: POST /v1/decisions against dialguard's API and a bare aiohttp
baseline (same loop, a handler answering a constant), in one run.

    .venv/bin/python bench/api.py [--duration 10] [--concurrency 200] [--rate 1000]

The method of bench/agi_load.py: a private redis-server on a free port (never 6379) with a
consent for each of 50,000 numbers (1 % of them on the do-not-call list), so requests are
full decisions (facts, atomic count, durable audit record); the server pinned to core 0,
the load generator and Redis to core 1; for each server a 1 s warm-up, a closed loop of N
concurrent requests (saturation) and an open loop at a fixed offered rate (latency from
each request's scheduled start, so a stalled server cannot hide its queue). A client is a
dialer or a CRM holding its connections open (HTTP/1.1 keep-alive, at most N), each
request with its bearer token; latency is request sent to whole answer read.
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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from functools import partial
from pathlib import Path

import aiohttp
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


class Load(Pacing):
    def __init__(self, session: aiohttp.ClientSession, url: str, bodies: list[bytes]) -> None:
        super().__init__()
        self.session = session
        self.url = url
        self.bodies = bodies

    async def one(self, started: float) -> None:
        body = random.choice(self.bodies)
        try:
            async with self.session.post(self.url, data=body) as response:
                answer = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
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
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        with redis_server(workdir) as redis_url:
            await load_consents(redis_url, numbers)
            for name in args.servers:
                with api_server(name, redis_url, workdir, tokens) as (pid, port):
                    connector = aiohttp.TCPConnector(limit=args.concurrency)
                    async with aiohttp.ClientSession(
                        connector=connector,
                        headers=headers,
                        timeout=aiohttp.ClientTimeout(total=10),
                    ) as session:
                        url = f"http://127.0.0.1:{port}/v1/decisions"
                        for mode in args.modes:
                            load = partial(Load, session, url, bodies)
                            lags: list[float] = []
                            watching = asyncio.create_task(loop_lag(lags))
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
                if any(p.failed for p in phases if p.server == name):
                    lines = (workdir / f"{name}.log").read_text().splitlines()
                    print("\n".join(lines[-5:]), file=sys.stderr)
                if name == "dialguard":
                    print("reasons:", dict(audit_reasons(workdir / "audit-dialguard")))
    return phases


if __name__ == "__main__":
    phases = uvloop.run(main(arguments(__doc__.splitlines()[0])))
    report(phases, header="| server | load | requests/s | server CPU µs/request")
