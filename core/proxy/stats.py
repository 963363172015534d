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


class Row:
    """The counters of one route and service: answers by status, and their latency."""

    __slots__ = ("counts", "latency")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.latency = Histogram()

    def record(self, status: int, seconds: float) -> None:
        counts = self.counts
        counts[status] = counts.get(status, 0) + 1
        histogram = self.latency
        histogram.counts[bisect_left(histogram.bounds, seconds)] += 1
        histogram.sum += seconds


class Stats:
    """The gateway's counters, updated by the data plane and read by the collector.

    - ``rows[(route, service)]``: requests answered by status (499 when the
      client went away first), and seconds from the request head to the last
      response byte. A route's plan keeps its row, so that counting a request
      needs no key to build. ``service`` is bounded: a static route's target,
      or a registered service for a discovery route (a name nobody registered
      is answered 404 and counted as ``unmatched``); a request refused by a
      route's policy (401, 403, 429) counts under that route;
    - ``upstream_errors[(service, kind)]``: failed attempts (connect, timeout,
      reset, 5xx, protocol; ``dependency`` for a 5xx marked as the failure of
      the upstream's own dependency, which does not count against it);
    - ``retries[(service, reason)]``: attempts after the first.
    """

    __slots__ = ("retries", "rows", "upstream_errors")

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], Row] = {}
        self.upstream_errors: dict[tuple[str, str], int] = {}
        self.retries: dict[tuple[str, str], int] = {}

    def row(self, route: str, service: str) -> Row:
        """The counters of ``route`` to ``service``, kept across route table reloads."""
        key = (route, service)
        row = self.rows.get(key)
        if row is None:
            row = self.rows[key] = Row()
        return row

    def request(self, route: str, service: str, status: int, seconds: float) -> None:
        self.row(route, service).record(status, seconds)

    @property
    def requests(self) -> dict[tuple[str, str, int], int]:
        """Requests by ``(route, service, status)``."""
        return {
            (route, service, status): count
            for (route, service), row in self.rows.items()
            for status, count in row.counts.items()
        }

    def latency(self) -> dict[str, Histogram]:
        """Latency by route (the rows of one route merged)."""
        merged: dict[str, Histogram] = {}
        for (route, _), row in self.rows.items():
            into = merged.get(route)
            if into is None:
                into = merged[route] = Histogram(row.latency.bounds)
            into.counts = [a + b for a, b in zip(into.counts, row.latency.counts, strict=True)]
            into.sum += row.latency.sum
        return merged

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
            "seconds from the request head to the last response byte, by route and service",
            labels=["route", "service"],
        )
        for (route, service), row in sorted(stats.rows.items()):
            latency.add_metric([route, service], row.latency.cumulative(), row.latency.sum)
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
