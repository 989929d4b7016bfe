"""ARI load benchmark: simulated Stasis() calls against dialguard's ARI application and a
bare ARI baseline (same client, same event handling, same REST calls, no decision).

    .venv/bin/python bench/ari_load.py [--duration 10] [--concurrency 200] [--rate 1000]

The ARI mode of bench/agi_load.py, with the same figures and the same setup: a private
redis-server on a free port (never 6379) with consents for a pool of numbers (full
decisions: facts, atomic count, durable audit); the app pinned to core 0, the load
generator and Redis to core 1. Here the load generator plays Asterisk: the protocol-faithful
fake ARI of the tests (tests/ari/fake_ari.py: aiohttp REST + events websocket) sends one
StasisStart per call, shaped as Asterisk 22 sends it, and a call is over when the app
releases its channel (`continue`, or a hang-up for a denial). Latency is StasisStart sent
to release received: one websocket event and five REST requests (four variables and the
release), against one TCP session for FastAGI. Closed loop (N calls in flight, each
followed at once by the next) and open loop (a fixed offered rate, latency counted from
each call's scheduled start).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from functools import partial
from pathlib import Path

import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the fake ARI of the tests plays Asterisk
sys.path.insert(0, str(ROOT / "bench"))

from agi_load import (  # noqa: E402
    LOADGEN_CORE,
    POOL,
    SERVER_CORE,
    Pacing,
    Phase,
    arguments,
    audit_reasons,
    load_consents,
    redis_server,
    report,
    run_phase,
)

from tests.ari.fake_ari import FakeAri, FakeChannel  # noqa: E402

CAMPAIGN = "demo-prospecting"


class Load(Pacing):
    def __init__(self, fake: FakeAri, numbers: list[str]) -> None:
        super().__init__()
        self.fake = fake
        self.numbers = numbers
        self.waiting: dict[str, asyncio.Future[FakeChannel]] = {}
        fake.on_release = self._released

    def _released(self, channel: FakeChannel) -> None:
        future = self.waiting.pop(channel.id, None)
        if future is not None and not future.done():
            future.set_result(channel)

    async def one(self, started: float) -> None:
        loop = asyncio.get_running_loop()
        number = random.choice(self.numbers)
        channel_id = await self.fake.start_call(number, CAMPAIGN, deliver=False)
        if channel_id is None:
            self.failed += 1  # no app connected: STASISSTATUS=FAILED
            return
        done: asyncio.Future[FakeChannel] = loop.create_future()
        self.waiting[channel_id] = done
        await self.fake.send(self.fake.app_name, start_event(self.fake.channels[channel_id]))
        try:
            channel = await asyncio.wait_for(done, 10)
        except TimeoutError:
            self.failed += 1
            return
        finally:
            self.waiting.pop(channel_id, None)
            del self.fake.channels[channel_id]  # the pool stays small over a long run
        self.latencies.append(time.perf_counter() - started)
        result = channel.variables.get("DIALGUARD_RESULT")
        if len(channel.variables) != 4:
            self.failed += 1
        elif result == "ALLOW" and channel.continued:
            self.allowed += 1
        else:
            self.denied += 1


def start_event(channel: FakeChannel) -> dict[str, object]:
    """The StasisStart of a parked channel, as FakeAri.start_call sends it."""
    return {
        "type": "StasisStart",
        "timestamp": channel.json["creationtime"],
        "args": channel.json["dialplan"]["app_data"].split(",")[1:],
        "channel": channel.json,
        "asterisk_id": "02:42:ac:11:00:02",
        "application": channel.app,
    }


@contextmanager
def ari_app(
    mode: str, fake: FakeAri, password: str, redis_url: str, workdir: Path
) -> Iterator[int]:
    log = open(workdir / f"{mode}.log", "w")  # noqa: SIM115
    process = subprocess.Popen(
        ["taskset", "-c", str(SERVER_CORE), sys.executable, str(ROOT / "bench" / "ari_server.py"),
         "--mode", mode, "--ari", fake.url, "--config", str(ROOT / "config" / "dialguard.toml"),
         "--redis", redis_url, "--audit", str(workdir / f"audit-{mode}")],
        stdout=subprocess.PIPE,
        stderr=log,
        env={**os.environ, "DIALGUARD_ARI_PASSWORD": password},
    )  # fmt: skip
    try:
        yield process.pid
    finally:
        process.terminate()
        process.wait()
        log.close()


async def main(args: argparse.Namespace) -> list[Phase]:
    os.sched_setaffinity(0, {LOADGEN_CORE})
    random.seed(7)
    numbers = [f"06{n:08d}" for n in random.sample(range(10**8), POOL)]
    password = secrets.token_urlsafe(16)
    phases: list[Phase] = []
    with tempfile.TemporaryDirectory(prefix="dialguard-bench-") as tmp:
        workdir = Path(tmp)
        with redis_server(workdir) as redis_url:
            await load_consents(redis_url, numbers)
            for name in args.servers:
                fake = FakeAri({"dialguard": password})
                fake.record_calls = False
                await fake.start()
                try:
                    with ari_app(name, fake, password, redis_url, workdir) as pid:
                        end = time.monotonic() + 20
                        while not fake.connected() and time.monotonic() < end:
                            await asyncio.sleep(0.05)
                        if not fake.connected():
                            sys.exit(f"{name} app did not connect; see {workdir / f'{name}.log'}")
                        for mode in args.modes:
                            phase = await run_phase(
                                name, mode, pid, partial(Load, fake, numbers), args
                            )
                            print(json.dumps(asdict(phase)), flush=True)
                            phases.append(phase)
                finally:
                    await fake.stop()
                if any(p.failed for p in phases if p.server == name):
                    # Failed calls: the app's log says why (it goes with the temporary dir).
                    lines = (workdir / f"{name}.log").read_text().splitlines()
                    print("\n".join(lines[-5:]), file=sys.stderr)
                if name == "dialguard":
                    print("reasons:", dict(audit_reasons(workdir / "audit-dialguard")))
    return phases


if __name__ == "__main__":
    phases = uvloop.run(main(arguments(__doc__.splitlines()[0])))
    report(phases, header="| app | load | calls/s | app CPU µs/call")
