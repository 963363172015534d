"""The gateway's span of each proxied request (core/proxy/span.py), as the exporter gets it."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
from aiohttp import web

from core.telemetry.spans import Recorder, Span
from tests.core.proxy.conftest import GatewayFactory, Upstreams

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def _spans(recorder: Recorder) -> list[Span]:
    """The spans the exporter's thread would make of what was recorded."""
    made = [record[0](record) for record in recorder.take(1000)]
    return [span for span in made if span is not None]


def _app() -> web.Application:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text=request.headers["traceparent"])

    async def boom(request: web.Request) -> web.Response:
        return web.Response(status=500, text="no")

    app = web.Application()
    app.router.add_get("/api/ok", ok)
    app.router.add_get("/api/boom", boom)
    return app


async def test_each_routed_request_is_one_server_span_with_the_ids_it_sent_upstream(
    upstreams: Upstreams, gateway: GatewayFactory
) -> None:
    up = await upstreams.app(_app())
    gw = await gateway(
        [{"id": "api", "prefix": "/api", "urls": [up.url], "retry": {"attempts": 1}}]
    )
    recorder = Recorder()
    gw.proxy.spans = recorder
    before = time.time_ns()
    sent: list[str] = []
    async with aiohttp.ClientSession() as session:
        headers = {"traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"}
        async with session.get(gw.url + "/api/ok?token=secret", headers=headers) as resp:
            sent.append(await resp.text())
        async with session.get(gw.url + "/api/ok") as resp:  # no traceparent: a new trace
            sent.append(await resp.text())
        async with session.get(gw.url + "/api/boom") as resp:
            assert resp.status == 500
        headers = {"traceparent": f"00-{TRACE}-00f067aa0ba902b7-00"}  # not sampled
        async with session.get(gw.url + "/api/ok", headers=headers) as resp:
            await resp.read()
        async with session.get(gw.url + "/nowhere") as resp:  # refused before routing
            assert resp.status == 404
    after = time.time_ns()

    traced, root, failed, unsampled = _spans(recorder)
    assert (traced.kind, traced.name, traced.trace_id, traced.parent_id) == (
        "server", "GET api", TRACE.encode(), b"00f067aa0ba902b7",
    )  # fmt: skip
    # The span id is the parent the upstream was told about.
    assert sent[0] == f"00-{TRACE}-{traced.span_id.decode()}-01"  # type: ignore[union-attr]
    assert before <= traced.start_ns < traced.end_ns <= after
    attributes: dict[str, Any] = dict(traced.attributes)
    assert attributes == {
        "http.request.method": "GET", "url.path": "/api/ok", "url.scheme": "http",
        "client.address": "127.0.0.1", "essaim.route": "api", "essaim.service": "route:api",
        "http.response.status_code": 200, "essaim.instance": f"127.0.0.1:{up.port}",
    }  # fmt: skip
    assert (traced.error, traced.sampled) == (None, True)

    assert root.parent_id is None
    assert sent[1] == f"00-{root.trace_id.decode()}-{root.span_id.decode()}-01"  # type: ignore[union-attr]

    assert failed.attributes["http.response.status_code"] == 500
    assert failed.attributes["error.type"] == "500"
    assert failed.error == "the upstream answered 500"

    assert unsampled.sampled is False


async def test_without_a_recorder_nothing_is_recorded_and_requests_pass(
    upstreams: Upstreams, gateway: GatewayFactory
) -> None:
    up = await upstreams.app(_app())
    gw = await gateway([{"id": "api", "prefix": "/api", "urls": [up.url]}])
    assert gw.proxy.spans is None
    async with aiohttp.ClientSession() as session, session.get(gw.url + "/api/ok") as resp:
        assert resp.status == 200
