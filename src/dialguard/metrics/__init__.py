"""Health and metrics for `dialguard serve`: the HTTP endpoint (endpoint), the lists'
ages read from Redis (lists), the process's own series (series). docs/metrics.md lists
every series.

The counters the core updates live in dialguard.telemetry, which imports neither aiohttp
nor prometheus_client.
"""

from dialguard.metrics.endpoint import start_metrics

__all__ = ["start_metrics"]
