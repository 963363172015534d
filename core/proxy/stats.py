"""The data plane's metrics: plain ints on the hot path, Prometheus at scrape time.

Calling ``prometheus_client`` per request (a labels lookup, a lock, a
``Value`` update per metric) would cost more than proxying a small request.
:class:`Stats` counts in dicts keyed by label tuples and :class:`StatsCollector`
turns them into metric families when ``/metrics`` is scraped.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

__all__ = ["LATENCY_BUCKETS", "Histogram", "Stats", "StatsCollector"]

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


class Histogram:
    """Counts per bucket (upper bounds inclusive, as Prometheus' ``le``), a sum and a count."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            total += count
            out.append((repr(bound), total))
        out.append(("+Inf", total + self.counts[-1]))
        return out


class Stats:
    """The gateway's counters, updated by the data plane and read by the collector.

    - ``requests[(route, service, status)]``: requests answered (status 499
      when the client went away first);
    - ``latency[route]``: seconds from the request head to the last response byte;
    - ``upstream_errors[(service, kind)]``: failed attempts (connect, timeout,
      reset, 5xx, protocol);
    - ``retries[(service, reason)]``: attempts after the first.
    """

    __slots__ = ("latency", "requests", "retries", "upstream_errors")

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = {}
        self.latency: dict[str, Histogram] = {}
        self.upstream_errors: dict[tuple[str, str], int] = {}
        self.retries: dict[tuple[str, str], int] = {}

    def request(self, route: str, service: str, status: int, seconds: float) -> None:
        key = (route, service, status)
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        histogram = self.latency.get(route)
        if histogram is None:
            histogram = self.latency[route] = Histogram()
        # Histogram.observe, inlined: this runs once per request.
        histogram.counts[bisect_left(histogram.bounds, seconds)] += 1
        histogram.sum += seconds

    def upstream_error(self, service: str, kind: str) -> None:
        key = (service, kind)
        self.upstream_errors[key] = self.upstream_errors.get(key, 0) + 1

    def retry(self, service: str, reason: str) -> None:
        key = (service, reason)
        self.retries[key] = self.retries.get(key, 0) + 1


class StatsCollector(Collector):
    """Exports a :class:`Stats` (and gauges read from ``gauges``) at scrape time.

    ``gauges()`` returns ``{name: (help, value)}``; ``extra()`` yields any
    further metric families (breaker transitions, route table reloads).
    """

    def __init__(
        self,
        stats: Stats,
        *,
        namespace: str = "gateway",
        gauges: Callable[[], dict[str, tuple[str, float]]] | None = None,
        extra: Callable[[], Iterator[Metric]] | None = None,
    ) -> None:
        self.stats = stats
        self.namespace = namespace
        self.gauges = gauges
        self.extra = extra

    def collect(self) -> Iterator[Metric]:
        ns = self.namespace
        stats = self.stats
        requests = CounterMetricFamily(
            f"{ns}_requests",
            "proxied requests by route, service and status (499: client gone)",
            labels=["route", "service", "status"],
        )
        for (route, service, status), count in sorted(stats.requests.items()):
            requests.add_metric([route, service, str(status)], count)
        yield requests
        latency = HistogramMetricFamily(
            f"{ns}_request_duration_seconds",
            "seconds from the request head to the last response byte, by route",
            labels=["route"],
        )
        for route, histogram in sorted(stats.latency.items()):
            latency.add_metric([route], histogram.cumulative(), histogram.sum)
        yield latency
        errors = CounterMetricFamily(
            f"{ns}_upstream_errors",
            "failed upstream attempts by service and kind",
            labels=["service", "kind"],
        )
        for (service, kind), count in sorted(stats.upstream_errors.items()):
            errors.add_metric([service, kind], count)
        yield errors
        retries = CounterMetricFamily(
            f"{ns}_retries",
            "upstream attempts after the first, by service and the failure retried",
            labels=["service", "reason"],
        )
        for (service, reason), count in sorted(stats.retries.items()):
            retries.add_metric([service, reason], count)
        yield retries
        if self.gauges is not None:
            for name, (doc, value) in self.gauges().items():
                gauge = GaugeMetricFamily(f"{ns}_{name}", doc)
                gauge.add_metric([], value)
                yield gauge
        if self.extra is not None:
            yield from self.extra()

    def describe(self) -> list[Any]:
        return []
