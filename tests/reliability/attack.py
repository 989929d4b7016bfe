"""An abusive FastAGI client, in its own process (its sockets and CPU apart from the
well-behaved load and the server), for tests/reliability/test_floods.py:

    python -m tests.reliability.attack MODE --port P [--connections N] [--source ADDR]

Keeps N connections going until SIGTERM, each one re-opened a moment after the server
closes it, then prints one JSON line of counts. MODE:

- silent        connect and send nothing;
- endless-block an agi_* block that never ends (a line after line, as fast as it goes);
- hangups       a real block, then three HANGUP lines before each reply to a command;
- outside       a real block from --source (an address outside [server] allow).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import signal
import sys
from dataclasses import asdict, dataclass

import uvloop

from tests.agi.asterisk_peer import agi_env, encode_block

# How long a connection the server closed waits before it is opened again: the attack
# holds its connections, it does not become a connect storm of its own.
REOPEN_S = {"silent": 1.0, "endless-block": 0.2, "hangups": 0.1, "outside": 0.05}


@dataclass
class Counts:
    connects: int = 0
    refused: int = 0  # connect() failed
    closed_by_server: int = 0
    bytes_received: int = 0
    answered: int = 0  # hangups: sessions that got a DIALGUARD_RESULT
    open_now: int = 0
    open_max: int = 0


class Attack:
    def __init__(self, mode: str, port: int, source: str | None) -> None:
        self.mode, self.port, self.source = mode, port, source
        self.counts = Counts()
        self.stopping = asyncio.Event()
        self.serial = 0

    async def keep_one(self) -> None:
        while not self.stopping.is_set():
            await self.one()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), REOPEN_S[self.mode])

    async def one(self) -> None:
        counts = self.counts
        local = (self.source, 0) if self.source else None
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port, local_addr=local)
        except OSError:
            counts.refused += 1
            return
        counts.connects += 1
        counts.open_now += 1
        counts.open_max = max(counts.open_max, counts.open_now)
        self.serial += 1
        try:
            talk = asyncio.ensure_future(self.talk(reader, writer, self.serial))
            stop = asyncio.ensure_future(self.stopping.wait())
            await asyncio.wait({talk, stop}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if not talk.done():
                talk.cancel()
            elif talk.exception() is None:
                counts.closed_by_server += 1
        finally:
            counts.open_now -= 1
            writer.transport.abort()

    async def talk(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        """Until the server closes the connection (EOF or reset)."""
        try:
            if self.mode == "silent":
                await self.drain(reader)
            elif self.mode == "endless-block":
                line = 0
                while not reader.at_eof():
                    writer.write(
                        b"".join(b"agi_x_%d: %s\n" % (line + i, b"y" * 40) for i in range(16))
                    )
                    line += 16
                    await writer.drain()
            else:
                number = f"07{50_000_000 + n % 40_000_000:08d}"
                env = agi_env("127.0.0.1", self.port, script="check", args=(number, "demo-survey"))
                env["agi_uniqueid"] = f"attack.{n}"
                writer.write(b"".join(encode_block(env)))
                if self.mode == "outside":
                    await self.drain(reader)
                    return
                while line_in := await reader.readline():
                    self.counts.bytes_received += len(line_in)
                    if b'"DIALGUARD_RESULT"' in line_in:
                        self.counts.answered += 1
                    writer.write(b"HANGUP\n" * 3 + b"200 result=1\n")
        except ConnectionError:
            pass

    async def drain(self, reader: asyncio.StreamReader) -> None:
        while data := await reader.read(65536):
            self.counts.bytes_received += len(data)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=sorted(REOPEN_S))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--source", default=None)
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    attack = Attack(args.mode, args.port, args.source)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, attack.stopping.set)
    # Opened in waves, so that the kernel's backlog sees a flood, not one instant burst.
    tasks = []
    for i in range(args.connections):
        tasks.append(asyncio.create_task(attack.keep_one()))
        if i % 500 == 499:
            await asyncio.sleep(0.05)
    print("ready", flush=True)
    await asyncio.gather(*tasks)
    print(json.dumps(asdict(attack.counts)), flush=True)


if __name__ == "__main__":
    uvloop.run(main())
    sys.exit(0)
