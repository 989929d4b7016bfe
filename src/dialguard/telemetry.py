"""What the service counts as it works: plain Python counters, read at scrape time.

The hot path pays a dict update and a bisect per decision (~0.3 µs, against ~2 µs for
prometheus_client's locked `labels().inc()` and `observe()`: docs/metrics.md). The
metrics endpoint (dialguard.metrics) turns these into Prometheus series when scraped.

Threads: the journal's writer thread alone updates the journal's histograms and error
count, the event loop alone everything else; a scrape (on the loop) reads them. A scrape
may see a histogram's count one observation ahead of its sum: Prometheus takes that.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

__all__ = [
    "BATCH_BUCKETS",
    "DECISION_BUCKETS_S",
    "IO_BUCKETS_S",
    "REDIS_OPS",
    "Histogram",
    "Telemetry",
]

# From 0.5 ms (a decision at low load) to 1 s (far past any deadline).
DECISION_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
# A Redis round trip (~70-130 µs) or an fdatasync (~150-250 µs) up to a stall.
IO_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
# Records per journal batch (group commit): one at low load, hundreds in a burst.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

# The calls to Redis that are timed: the facts of a batch of decisions, slot releases,
# cancellations of reservations, journalled changes applied, and the readiness ping.
REDIS_OPS = ("facts", "release", "cancel", "apply", "applied", "ping")
# Why a decision was taken without the facts (each exists from the start at 0).
DEGRADED_CAUSES = ("STORE_UNAVAILABLE", "DEADLINE")
# Why a FastAGI connection was closed before its session began (dialguard.agi.server):
# from outside [server] allow; at max_connections with no silent one to cut; or cut,
# silent past its deadline, to make room for a new one.
REFUSAL_CAUSES = ("not_allowed", "max_connections", "silent_cut")


class Histogram:
    """Counts per bucket (`le` bounds, then +Inf) and their sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> tuple[list[tuple[str, float]], float]:
        """Prometheus's buckets (`le`, count at or below it, up to +Inf) and the sum."""
        counts = list(self.counts)  # one copy: a writer thread may add meanwhile
        total = self.sum
        buckets: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*map(_le, self.bounds), "+Inf"), counts, strict=True):
            running += count
            buckets.append((bound, running))
        return buckets, total

    @property
    def count(self) -> int:
        return sum(self.counts)


def _le(bound: float) -> str:
    return repr(float(bound))


class Telemetry:
    """The counters of one process (`serve --workers N`: one each)."""

    def __init__(self) -> None:
        # (result, reason, campaign) -> decisions answered
        self.decisions: dict[tuple[str, str, str], int] = {}
        self.decision_latency = Histogram(DECISION_BUCKETS_S)
        self.degraded: dict[str, int] = dict.fromkeys(DEGRADED_CAUSES, 0)
        self.redis_errors: dict[str, int] = dict.fromkeys(REDIS_OPS, 0)
        self.redis_latency = {op: Histogram(IO_BUCKETS_S) for op in REDIS_OPS}
        self.journal_batch = Histogram(BATCH_BUCKETS)
        self.journal_fsync = Histogram(IO_BUCKETS_S)
        self.journal_errors = 0
        self.connections_refused: dict[str, int] = dict.fromkeys(REFUSAL_CAUSES, 0)

    def decided(self, result: str, reason: str, campaign: str, seconds: float) -> None:
        key = (result, reason, campaign)
        decisions = self.decisions
        decisions[key] = decisions.get(key, 0) + 1
        self.decision_latency.observe(seconds)

    def connection_refused(self, cause: str) -> None:
        self.connections_refused[cause] = self.connections_refused.get(cause, 0) + 1

    def degraded_decision(self, cause: str) -> None:
        self.degraded[cause] = self.degraded.get(cause, 0) + 1

    def redis_call(self, op: str, seconds: float, *, failed: bool = False) -> None:
        histogram = self.redis_latency.get(op)
        if histogram is None:
            histogram = self.redis_latency[op] = Histogram(IO_BUCKETS_S)
        histogram.observe(seconds)
        if failed:
            self.redis_errors[op] = self.redis_errors.get(op, 0) + 1
