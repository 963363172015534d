"""Prometheus metrics for an aiohttp application, one registry per application.

:class:`HTTPMetrics` owns a ``CollectorRegistry`` (so that two components in one
test process never collide), counts requests by route and status, observes
their latency, and serves ``/metrics`` in Prometheus' text format.

Every registry made by :func:`new_registry` also carries the process's own
series (``process_*``: CPU, memory, open files; ``python_*``: version,
garbage collection), as Prometheus's default registry does. No
``*_created`` series are exported: they double the series count and no
dashboard here reads them (prometheus-client's switch is process-wide, and
set when this module is imported).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import cast

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.exposition import generate_latest

__all__ = ["HTTPMetrics", "new_registry"]

# Untyped in prometheus-client 0.26; the cast holds whether or not a later release types it.
cast(Callable[[], None], disable_created_metrics)()


def new_registry() -> CollectorRegistry:
    """A registry of one's own, with the process's ``process_*`` and ``python_*`` series."""
    registry = CollectorRegistry(auto_describe=True)
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)
    return registry


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HTTPMetrics:
    """Request metrics named ``{namespace}_http_requests_total`` and ``..._seconds``."""

    def __init__(self, namespace: str) -> None:
        self.registry = new_registry()
        self.namespace = namespace
        self.requests = Counter(
            f"{namespace}_http_requests",
            "HTTP requests handled, by method, route and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            f"{namespace}_http_request_duration_seconds",
            "HTTP request latency by route",
            ["route"],
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        )

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        start = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            info = request.match_info.route.resource
            route = info.canonical if info is not None else "unmatched"
            self.requests.labels(request.method, route, str(status)).inc()
            self.latency.labels(route).observe(time.perf_counter() - start)

    async def handle(self, request: web.Request) -> web.Response:
        """``GET /metrics``."""
        return web.Response(
            body=generate_latest(self.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )
