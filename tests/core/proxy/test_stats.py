"""Counters as plain ints, exported to Prometheus at scrape time."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from core.proxy.stats import Histogram, Stats, StatsCollector


def test_histogram_buckets_are_cumulative_and_inclusive() -> None:
    h = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 2.0):
        h.observe(value)
    assert h.cumulative() == [("0.1", 2), ("1.0", 3), ("+Inf", 4)]
    assert h.sum == 2.65


def test_collector_exports_requests_latency_errors_retries_and_gauges() -> None:
    stats = Stats()
    stats.request("r1", "billing", 200, 0.002)
    stats.request("r1", "billing", 200, 0.004)
    stats.request("r1", "billing", 503, 0.001)
    stats.upstream_error("billing", "connect")
    stats.retry("billing", "connect")
    registry = CollectorRegistry()
    registry.register(
        StatsCollector(stats, gauges=lambda: {"client_connections": ("open connections", 7)})
    )
    text = generate_latest(registry).decode()
    assert 'gateway_requests_total{route="r1",service="billing",status="200"} 2.0' in text
    assert 'gateway_requests_total{route="r1",service="billing",status="503"} 1.0' in text
    assert (
        'gateway_request_duration_seconds_bucket{le="0.0025",route="r1",service="billing"} 2.0'
        in text
    )
    assert 'gateway_request_duration_seconds_count{route="r1",service="billing"} 3.0' in text
    assert 'gateway_upstream_errors_total{kind="connect",service="billing"} 1.0' in text
    assert 'gateway_retries_total{reason="connect",service="billing"} 1.0' in text
    assert "gateway_client_connections 7.0" in text
