"""Request metrics (core/metrics.py): counted by route, with the process's own series, no *_created."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from core.metrics import HTTPMetrics


async def test_metrics_count_requests_and_carry_the_process_series_without_created(
    aiohttp_client: Callable[[web.Application], Awaitable[TestClient[Any, Any]]],
) -> None:
    metrics = HTTPMetrics("notes")
    app = web.Application(middlewares=[metrics.middleware])

    async def note(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_get("/notes/{id}", note)
    app.router.add_get("/metrics", metrics.handle)
    client = await aiohttp_client(app)
    assert (await client.get("/notes/1")).status == 200
    assert (await client.get("/nowhere")).status == 404

    text = await (await client.get("/metrics")).text()
    assert 'notes_http_requests_total{method="GET",route="/notes/{id}",status="200"} 1.0' in text
    assert 'notes_http_requests_total{method="GET",route="unmatched",status="404"} 1.0' in text
    assert "process_resident_memory_bytes" in text
    assert "python_info{" in text
    assert "python_gc_collections_total" in text
    assert "_created" not in text
