"""The decision's script (store/facts.py, FACTS) of this checkout against another's, in one
private Redis, alternating: what a change to the script costs inside Redis.

    .venv/bin/python bench/facts_script.py --before OTHER/src/dialguard/store/facts.py
                                           [--rounds 10] [--calls 2000] [--batch 4]

Starts a private redis-server (never 6379), loads a 1-million-number do-not-call list, then
for each round calls each script `--calls` times with `--batch` decisions per call (fresh
random numbers, each reserving an attempt slot, as `serve` sends them), one after the
other, and reads Redis's own time for them (INFO commandstats, EVALSHA). Prints µs per
decision inside Redis per round, the medians and their ratio. Both scripts get the keys
and arguments their own Store would send: the shared keys the script reads (its KEYS
comment), then the attempts keys.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import random
import statistics
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dialguard.import_files import DncRow
from dialguard.numbers import normalise
from dialguard.store import Store
from dialguard.store import facts as this_facts
from dialguard.store.keys import Keys
from dialguard.store.loading import load
from tests.redis_server import running_redis

# As bench/redis_capacity.py: every other number of 06 00 00 00 00.. on the list.
PREFIX = "dialguard:"
LISTED = 1_000_000
NOW = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)


def number(i: int) -> str:
    return f"06{i:08d}"


async def _load(url: str) -> None:
    store = Store.from_url(url, PREFIX, 60_000)
    rows = [DncRow(normalise(number(i)).key, "listed") for i in range(0, 2 * LISTED, 2)]
    await load(store.lists, "dnc", rows, "replace")
    await store.close()


def _module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("other_facts", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _shared_keys(script: str, keys: Keys) -> list[str]:
    """The keys before the attempts keys: five before the principals' do-not-call hash
    (KEYS[6]) was read, six since."""
    shared = [keys.index, keys.dnc_live, keys.withdrawal, keys.refusal, keys.cancelled]
    return [*shared, keys.dnc_principal] if "KEYS[6]" in script else shared


def _block(
    client: redis.Redis, script: str, calls: int, batch: int, pick: random.Random, keys: Keys
) -> float:
    """µs per decision inside Redis for `calls` calls of `script`."""
    sha = client.script_load(script)
    shared = _shared_keys(script, keys)
    formats = this_facts.facts_formats(keys)
    now_ms = int(NOW.timestamp() * 1000)
    window = 30 * 86_400_000
    client.config_resetstat()
    for call in range(calls):
        numbers = [normalise(number(pick.randrange(2 * LISTED))).key for _ in range(batch)]
        attempts = [keys.attempts("ACME", n) for n in numbers]
        args: list[str | int] = list(formats)
        for i, n in enumerate(numbers):
            args += (n, f"{n}|ACME", now_ms - window, 4, f"a{call}-{i}", now_ms, window)
        client.evalsha(sha, len(shared) + batch, *shared, *attempts, *args)
    stats = client.info("commandstats")["cmdstat_evalsha"]
    return float(stats["usec"]) / (calls * batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="the other facts.py")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=4)
    options = parser.parse_args()
    other = _module(options.before).FACTS
    keys = Keys(PREFIX)
    pick = random.Random(7)
    before: list[float] = []
    after: list[float] = []
    with running_redis(acl=False) as server:
        asyncio.run(_load(server.url))
        client = redis.Redis.from_url(server.url)
        for round_ in range(options.rounds):
            # Alternate which goes first: a slow moment of the machine hits both.
            order = [(other, before), (this_facts.FACTS, after)]
            for script, results in order if round_ % 2 == 0 else order[::-1]:
                results.append(_block(client, script, options.calls, options.batch, pick, keys))
            print(f"round {round_ + 1}: before {before[-1]:.2f} µs, this {after[-1]:.2f} µs")
        client.close()
    b, a = statistics.median(before), statistics.median(after)
    print(
        f"median µs per decision inside Redis (batch {options.batch}): before {b:.2f},"
        f" this checkout {a:.2f}, ratio {a / b:.3f}"
    )


if __name__ == "__main__":
    main()
