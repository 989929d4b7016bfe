"""The process's own series, built at each scrape from dialguard.telemetry's counters and
from what the service holds now (changes waiting, sessions in flight, the policy).

A collector, not prometheus_client's Counter and Histogram objects: those take a lock on
every update, on the decision's path; here the hot path only adds to dicts and lists.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from dialguard import __version__
from dialguard.service import Service
from dialguard.telemetry import Histogram, Telemetry

__all__ = ["ServiceSeries"]


class ServiceSeries(Collector):
    def __init__(
        self,
        service: Service,
        telemetry: Telemetry,
        sessions: Mapping[str, Callable[[], int]],
        worker: int,
    ) -> None:
        self._service = service
        self._telemetry = telemetry
        self._sessions = sessions  # adapter -> sessions in flight now
        self._worker = str(worker)

    def collect(self) -> Iterator[Metric]:
        t = self._telemetry
        yield from self._decisions(t)
        yield _counter(
            "dialguard_degraded_decisions",
            "Decisions taken without the facts (the campaign's fail mode), by cause",
            "cause",
            t.degraded,
        )
        yield _counter(
            "dialguard_redis_errors",
            "Calls to Redis that failed, by operation",
            "op",
            t.redis_errors,
        )
        latency = HistogramMetricFamily(
            "dialguard_redis_call_latency_seconds",
            "Time of one call to Redis (one batch of decisions for op=facts), failed ones too",
            labels=["op"],
        )
        for op, histogram in list(t.redis_latency.items()):
            _add(latency, histogram, [op])
        yield latency
        yield _histogram(
            "dialguard_journal_batch_records",
            "Records written per journal batch (group commit: one write and fsync each)",
            t.journal_batch,
        )
        yield _histogram(
            "dialguard_journal_fsync_seconds",
            "Time of each fdatasync of the audit journal",
            t.journal_fsync,
        )
        yield _counter(
            "dialguard_connections_refused",
            "FastAGI connections closed before their session: from outside [server] allow,"
            " beyond max_connections, or cut silent to make room",
            "cause",
            t.connections_refused,
        )
        yield CounterMetricFamily(
            "dialguard_journal_errors",
            "Journal batches that could not be made durable (their calls got no answer)",
            value=t.journal_errors,
        )
        yield from self._now()

    def _decisions(self, t: Telemetry) -> Iterator[Metric]:
        decisions = CounterMetricFamily(
            "dialguard_decisions",
            "Decisions answered, by result, reason and campaign (_unknown: not configured)",
            labels=["result", "reason", "campaign"],
        )
        for labels, count in list(t.decisions.items()):
            decisions.add_metric(list(labels), count)
        yield decisions
        yield _histogram(
            "dialguard_decision_latency_seconds",
            "From the request to the decision's audit record being durable",
            t.decision_latency,
        )

    def _now(self) -> Iterator[Metric]:
        service = self._service
        yield GaugeMetricFamily(
            "dialguard_pending_changes",
            "Journalled changes Redis has not taken yet (counted in this node's decisions)",
            value=len(service.pending),
        )
        yield GaugeMetricFamily(
            "dialguard_pending_oldest_age_seconds",
            "Seconds the oldest change not taken by Redis has waited (0: none waits)",
            value=service.pending.oldest_age_s(service.clock()),
        )
        sessions = GaugeMetricFamily(
            "dialguard_sessions_in_flight",
            "Calls being decided or answered now, by adapter",
            labels=["adapter"],
        )
        for adapter, count in self._sessions.items():
            sessions.add_metric([adapter], count())
        yield sessions
        config = service.config  # at each scrape: a reload swaps it
        info = GaugeMetricFamily(
            "dialguard_build_info",
            "1, labelled with the version, node, worker and the policy in force",
            labels=["version", "node", "worker", "policy", "policy_hash"],
        )
        policy = config.policy
        info.add_metric([__version__, config.node, self._worker, policy.name, policy.hash], 1)
        yield info


def _counter(name: str, documentation: str, label: str, values: Mapping[str, int]) -> Metric:
    family = CounterMetricFamily(name, documentation, labels=[label])
    for value, count in list(values.items()):
        family.add_metric([value], count)
    return family


def _histogram(name: str, documentation: str, histogram: Histogram) -> Metric:
    family = HistogramMetricFamily(name, documentation)
    _add(family, histogram, [])
    return family


def _add(family: HistogramMetricFamily, histogram: Histogram, labels: list[str]) -> None:
    buckets, total = histogram.cumulative()
    family.add_metric(labels, buckets, total)
