"""The gateway's span of each proxied request (core/proxy/span.py), as the exporter gets it."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
from aiohttp import web

from core.proxy.wire import SampledTraceIds, TraceIds
from core.telemetry.spans import Recorder, Span
from core.trace import ratio_bound, sampled_by_ratio
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

    # The request whose traceparent says "not sampled" is recorded nowhere.
    traced, root, failed = _spans(recorder)
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


async def test_without_a_recorder_nothing_is_recorded_and_requests_pass(
    upstreams: Upstreams, gateway: GatewayFactory
) -> None:
    up = await upstreams.app(_app())
    gw = await gateway([{"id": "api", "prefix": "/api", "urls": [up.url]}])
    assert gw.proxy.spans is None
    async with aiohttp.ClientSession() as session, session.get(gw.url + "/api/ok") as resp:
        assert resp.status == 200


async def _sent(gw_url: str, n: int, **headers: str) -> list[str]:
    """The ``traceparent`` the upstream got for each of ``n`` requests (on one connection)."""
    sent = []
    async with aiohttp.ClientSession() as session:
        for _ in range(n):
            async with session.get(gw_url + "/api/ok", headers=headers) as resp:
                assert resp.status == 200
                sent.append(await resp.text())
    return sent


async def test_at_ratio_0_the_traces_it_starts_go_upstream_unsampled_and_are_not_recorded(
    upstreams: Upstreams, gateway: GatewayFactory
) -> None:
    up = await upstreams.app(_app())
    gw = await gateway([{"id": "api", "prefix": "/api", "urls": [up.url]}])
    recorder = Recorder()
    gw.proxy.spans = recorder
    gw.proxy.traces = SampledTraceIds(0.0)
    sent = await _sent(gw.url, 20)
    assert {value[-3:] for value in sent} == {"-00"}
    assert len({value[3:35] for value in sent}) == 20  # a trace each
    # A client's sampled traceparent is obeyed whatever the ratio (ParentBased).
    (kept,) = await _sent(gw.url, 1, traceparent=f"00-{TRACE}-00f067aa0ba902b7-01")
    assert kept.startswith(f"00-{TRACE}-")
    assert kept.endswith("-01")
    assert [span.trace_id for span in _spans(recorder)] == [TRACE.encode()]


async def test_at_ratio_half_the_trace_id_decides_as_opentelemetry_and_the_flags_say_it(
    upstreams: Upstreams, gateway: GatewayFactory
) -> None:
    up = await upstreams.app(_app())
    gw = await gateway([{"id": "api", "prefix": "/api", "urls": [up.url]}])
    recorder = Recorder()
    gw.proxy.spans = recorder
    gw.proxy.traces = SampledTraceIds(0.5)
    sent = await _sent(gw.url, 200)
    bound = ratio_bound(0.5)
    sampled = set()
    for value in sent:
        trace_id = value[3:35]
        decided = sampled_by_ratio(trace_id, bound)
        assert value.endswith("-01" if decided else "-00"), value
        if decided:
            sampled.add(trace_id.encode())
    # Consecutive ids spread evenly: half of any run, give or take a few.
    assert 90 <= len(sampled) <= 110
    assert {span.trace_id for span in _spans(recorder)} == sampled  # no other was recorded
    # A client's unsampled traceparent is obeyed too, even where the ratio would sample.
    low = "4bf92f3577b34da60000000000000001"
    assert sampled_by_ratio(low, bound)
    (kept,) = await _sent(gw.url, 1, traceparent=f"00-{low}-00f067aa0ba902b7-00")
    assert kept.startswith(f"00-{low}-")
    assert kept.endswith("-00")
    assert _spans(recorder) == []


def test_sampled_trace_ids_are_unique_and_each_carries_its_decision() -> None:
    from opentelemetry.sdk.trace.sampling import Decision, TraceIdRatioBased

    for ratio in (0.0, 0.01, 0.25, 0.5, 0.9, 1.0):
        ids, sdk = SampledTraceIds(ratio), TraceIdRatioBased(ratio)
        made = []
        for _ in range(5000):
            trace_id = ids.trace()
            assert len(trace_id) == 32
            assert int(trace_id, 16) != 0
            decision = sdk.should_sample(None, int(trace_id, 16), "x").decision
            assert ids.sampled == (decision is Decision.RECORD_AND_SAMPLE), (ratio, trace_id)
            made.append((trace_id, ids.sampled))
        assert len({trace_id for trace_id, _ in made}) == 5000
        assert abs(sum(decided for _, decided in made) - 5000 * ratio) <= 5, ratio
    # Without sampling, every trace is sampled and nothing is decided.
    plain = TraceIds()
    plain.trace()
    assert plain.sampled is True
