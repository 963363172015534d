"""One admin view out of several workers': Prometheus samples summed, documents merged."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from core.workers.merge import merge_documents, merge_metrics

WORKER_0 = """\
# HELP gateway_requests proxied requests
# TYPE gateway_requests counter
gateway_requests_total{route="shop",status="200"} 3.0
# HELP gateway_request_duration_seconds latency
# TYPE gateway_request_duration_seconds histogram
gateway_request_duration_seconds_bucket{le="0.01",route="shop"} 2.0
gateway_request_duration_seconds_bucket{le="+Inf",route="shop"} 3.0
gateway_request_duration_seconds_count{route="shop"} 3.0
gateway_request_duration_seconds_sum{route="shop"} 0.5
# HELP gateway_client_connections open client connections
# TYPE gateway_client_connections gauge
gateway_client_connections 2.0
"""

WORKER_1 = """\
# HELP gateway_requests proxied requests
# TYPE gateway_requests counter
gateway_requests_total{route="shop",status="200"} 4.0
gateway_requests_total{route="shop",status="502"} 1.0
# HELP gateway_request_duration_seconds latency
# TYPE gateway_request_duration_seconds histogram
gateway_request_duration_seconds_bucket{le="0.01",route="shop"} 5.0
gateway_request_duration_seconds_bucket{le="+Inf",route="shop"} 5.0
gateway_request_duration_seconds_count{route="shop"} 5.0
gateway_request_duration_seconds_sum{route="shop"} 0.25
# HELP gateway_client_connections open client connections
# TYPE gateway_client_connections gauge
gateway_client_connections 1.0
"""


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def test_counters_histograms_and_gauges_are_summed_into_one_series_each() -> None:
    merged = samples(merge_metrics([("0", WORKER_0), ("1", WORKER_1)]))
    shop = (("route", "shop"),)
    assert merged[("gateway_requests_total", (("route", "shop"), ("status", "200")))] == 7.0
    assert merged[("gateway_requests_total", (("route", "shop"), ("status", "502")))] == 1.0
    assert merged[("gateway_request_duration_seconds_bucket", (("le", "0.01"), *shop))] == 7.0
    assert merged[("gateway_request_duration_seconds_count", shop)] == 8.0
    assert merged[("gateway_request_duration_seconds_sum", shop)] == 0.75
    assert merged[("gateway_client_connections", ())] == 3.0
    assert not any(dict(labels).get("worker") for _, labels in merged)


def test_per_worker_keeps_one_series_per_worker_with_a_worker_label() -> None:
    merged = samples(merge_metrics([("0", WORKER_0), ("1", WORKER_1)], per_worker=True))
    assert merged[("gateway_client_connections", (("worker", "0"),))] == 2.0
    assert merged[("gateway_client_connections", (("worker", "1"),))] == 1.0


def endpoint(requests: int, outstanding: int, ejected: bool, consecutive: int) -> dict[str, object]:
    return {
        "key": "127.0.0.1:9000",
        "requests": requests,
        "outstanding": outstanding,
        "ejected": ejected,
        "consecutive_failures": consecutive,
        "weight": 1,
    }


def test_upstream_documents_sum_counters_and_show_disagreements_by_count() -> None:
    one = {
        "upstreams": [
            {
                "name": "billing",
                "routes": ["discovery"],
                "endpoints": [endpoint(10, 1, False, 0)],
                "failures": {"connect": 1},
                "breaker": {"state": "CLOSED", "failed_calls": 1, "failure_rate": 0.1},
                "eligible": 1,
            }
        ]
    }
    two = {
        "upstreams": [
            {
                "name": "billing",
                "routes": ["pay"],
                "endpoints": [endpoint(5, 2, True, 3)],
                "failures": {"connect": 2, "reset": 1},
                "breaker": {"state": "OPEN", "failed_calls": 4, "failure_rate": 0.6},
                "eligible": 0,
            }
        ]
    }
    merged = merge_documents([one, two])
    (billing,) = merged["upstreams"]
    assert billing["name"] == "billing"
    assert billing["routes"] == ["discovery", "pay"]
    (ep,) = billing["endpoints"]
    assert ep["requests"] == 15
    assert ep["outstanding"] == 3
    assert ep["ejected"] is True
    assert ep["consecutive_failures"] == 3
    assert ep["weight"] == 1  # a setting, the same everywhere: kept, not summed
    assert billing["failures"] == {"connect": 3, "reset": 1}
    assert billing["breaker"]["state"] == {"CLOSED": 1, "OPEN": 1}
    assert billing["breaker"]["failed_calls"] == 5
    assert billing["breaker"]["failure_rate"] == 0.6
    assert billing["eligible"] == 0


def test_process_series_add_up_but_the_start_time_is_the_earliest() -> None:
    def process(start: float, rss: float) -> str:
        return (
            "# HELP process_start_time_seconds start\n# TYPE process_start_time_seconds gauge\n"
            f"process_start_time_seconds {start}\n"
            "# HELP process_resident_memory_bytes rss\n# TYPE process_resident_memory_bytes gauge\n"
            f"process_resident_memory_bytes {rss}\n"
        )

    merged = samples(merge_metrics([("0", process(200.0, 10.0)), ("1", process(100.0, 5.0))]))
    assert merged[("process_start_time_seconds", ())] == 100.0
    assert merged[("process_resident_memory_bytes", ())] == 15.0
