"""HTTP/1.1 behaviour of the data plane, against real upstream servers on loopback."""

from __future__ import annotations

import asyncio
import re

import aiohttp
from aiohttp import web

from core.proxy.server import Limits
from tests.core.proxy.conftest import GatewayFactory, Upstreams, parse_responses, raw_exchange


def echo_app() -> web.Application:
    """An upstream that answers what it saw: method, path, query, headers, body size."""

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response(
            {
                "method": request.method,
                "path": request.path,
                "query": request.query_string,
                "headers": {k.lower(): v for k, v in request.headers.items()},
                "body": len(body),
                "peer": request.transport.get_extra_info("peername")[1]
                if request.transport
                else None,
            },
            headers={"X-Upstream": "echo"},
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


def route_to(server_url: str, **more: object) -> list[dict[str, object]]:
    return [{"id": "r", "prefix": "/", "urls": [server_url], **more}]


async def test_request_is_forwarded_with_method_path_query_and_body(
    upstreams: Upstreams, gateway: GatewayFactory
) -> None:
    up = await upstreams.app(echo_app())
    gw = await gateway(route_to(up.url))
    async with (
        aiohttp.ClientSession() as session,
        session.put(gw.url + "/a/b?x=1&y=2", data=b"z" * 1000) as resp,
    ):
        seen = await resp.json()
        assert resp.status == 200
        assert resp.headers["X-Upstream"] == "echo"
    assert seen["method"] == "PUT"
    assert seen["path"] == "/a/b"
    assert seen["query"] == "x=1&y=2"
    assert seen["body"] == 1000


async def test_forwarded_headers_request_id_and_via(
    upstreams: Upstreams, gateway: GatewayFactory
) -> None:
    up = await upstreams.app(echo_app())
    gw = await gateway([{"id": "r", "prefix": "/api", "urls": [up.url], "strip_prefix": 1}])
    async with aiohttp.ClientSession() as session:
        async with session.get(
            gw.url + "/api/items",
            headers={"X-Forwarded-For": "203.0.113.9", "Host": "shop.example", "Via": "1.0 edge"},
        ) as resp:
            seen = (await resp.json())["headers"]
            generated = resp.headers["X-Request-ID"]
            assert resp.headers["Via"] == "1.1 essaim"
        assert seen["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
        assert seen["x-forwarded-proto"] == "http"
        assert seen["x-forwarded-host"] == "shop.example"
        assert seen["x-forwarded-prefix"] == "/api"
        assert seen["x-request-id"] == generated
        assert re.fullmatch(r"[0-9a-f]{12}-[0-9a-f]+", generated)
        assert seen["via"] == "1.0 edge, 1.1 essaim"
        assert seen["host"] == f"127.0.0.1:{up.port}"
        async with session.get(gw.url + "/api/x", headers={"X-Request-ID": "abc-123"}) as resp:
            assert (await resp.json())["headers"]["x-request-id"] == "abc-123"
            assert resp.headers["X-Request-ID"] == "abc-123"


async def test_the_upstream_gets_the_gateways_span_of_the_clients_trace_or_a_new_one(
    upstreams: Upstreams, gateway: GatewayFactory
) -> None:
    up = await upstreams.app(echo_app())
    gw = await gateway([{"id": "r", "prefix": "/api", "urls": [up.url], "strip_prefix": 1}])
    client_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    shape = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
    async with aiohttp.ClientSession() as session:

        async def upstream_saw(**headers: str) -> dict[str, str]:
            async with session.get(gw.url + "/api/x", headers=headers) as resp:
                seen: dict[str, str] = (await resp.json())["headers"]
                return seen

        # A valid traceparent: same trace, the gateway's own span as the parent.
        seen = await upstream_saw(
            traceparent=f"00-{client_trace}-00f067aa0ba902b7-00", tracestate="vendor=1"
        )
        found = shape.fullmatch(seen["traceparent"])
        assert found is not None
        assert found.group(1) == client_trace
        assert found.group(2) not in ("00f067aa0ba902b7", "0" * 16)
        assert found.group(3) == "00"  # the client's sampling decision is kept
        assert seen["tracestate"] == "vendor=1"
        # Each request is a span of its own.
        again = await upstream_saw(traceparent=f"00-{client_trace}-00f067aa0ba902b7-01")
        assert shape.fullmatch(again["traceparent"]).group(2) != found.group(2)  # type: ignore[union-attr]
        # None, or an invalid one: a new trace, never the client's malformed header.
        for headers in ({}, {"traceparent": "00-XYZ-00f067aa0ba902b7-01"},
                        {"traceparent": f"ff-{client_trace}-00f067aa0ba902b7-01"}):  # fmt: skip
            seen = await upstream_saw(**headers)
            started = shape.fullmatch(seen["traceparent"])
            assert started is not None
            assert started.group(1) not in (client_trace, "0" * 32)
            assert started.group(3) == "01"


async def test_hop_by_hop_and_connection_listed_headers_are_removed_both_ways(
    upstreams: Upstreams, gateway: GatewayFactory
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        handler.seen = head  # type: ignore[attr-defined]
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive, X-Secret\r\n"
            b"X-Secret: s\r\nKeep-Alive: timeout=5\r\nProxy-Authenticate: Basic\r\n"
            b"X-Request-ID: upstream-id\r\nX-Kept: k\r\n\r\nok"
        )
        await writer.drain()
        await reader.read()

    up = await upstreams.raw(handler)
    gw = await gateway(route_to(up.url))
    raw = await raw_exchange(
        gw.port,
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close, X-Private\r\nX-Private: p\r\n"
        b"Keep-Alive: 5\r\nTE: trailers\r\nProxy-Authorization: Basic x\r\nUpgrade: foo\r\n"
        b"X-Other: o\r\n\r\n",
    )
    seen = handler.seen.lower()  # type: ignore[attr-defined]
    for name in (b"x-private", b"keep-alive", b"te:", b"proxy-authorization", b"upgrade"):
        assert name not in seen
    assert b"x-other: o" in seen
    [(status, headers, body)] = parse_responses(raw)
    assert status == 200
    assert body == b"ok"
    for name in ("x-secret", "keep-alive", "proxy-authenticate"):
        assert name not in headers
    assert headers["x-kept"] == "k"
    assert headers["x-request-id"] != "upstream-id"
    assert headers["connection"] == "close"


async def test_keep_alive_on_both_sides_reuses_one_upstream_connection(
    upstreams: Upstreams, gateway: GatewayFactory
) -> None:
    up = await upstreams.app(echo_app())
    gw = await gateway(route_to(up.url))
    ports = set()
    conn = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=conn) as session:
        for _ in range(20):
            async with session.get(gw.url + "/k") as resp:
                ports.add((await resp.json())["peer"])
    assert len(ports) == 1
    assert gw.proxy.pool.connects == 1
    assert gw.proxy.pool.reuses == 19


async def test_pipelined_requests_are_answered_in_order(
    upstreams: Upstreams, gateway: GatewayFactory
) -> None:
    async def slow_first(request: web.Request) -> web.Response:
        if request.path == "/1":
            await asyncio.sleep(0.2)
        return web.Response(text=request.path)

    app = web.Application()
    app.router.add_get("/{n}", slow_first)
    up = await upstreams.app(app)
    gw = await gateway(route_to(up.url))
    requests = b"".join(
        f"GET /{n} HTTP/1.1\r\nHost: h\r\n{'Connection: close' if n == 5 else 'X: y'}\r\n\r\n".encode()
        for n in range(1, 6)
    )
    answers = parse_responses(await raw_exchange(gw.port, requests))
    assert [body for _, _, body in answers] == [b"/1", b"/2", b"/3", b"/4", b"/5"]


async def test_chunked_request_and_response_bodies_stream_through(
    upstreams: Upstreams, gateway: GatewayFactory
) -> None:
    async def chunky(request: web.Request) -> web.StreamResponse:
        total = 0
        async for chunk in request.content.iter_any():
            total += len(chunk)
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(5):
            await resp.write(f"part{i}-{total};".encode())
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/c", chunky)
    up = await upstreams.app(app)
    gw = await gateway(route_to(up.url))

    async def body() -> object:
        for _ in range(10):
            yield b"x" * 1000

    async with (
        aiohttp.ClientSession() as session,
        session.post(gw.url + "/c", data=body()) as resp,
    ):
        assert resp.headers["Transfer-Encoding"] == "chunked"
        assert await resp.text() == "".join(f"part{i}-10000;" for i in range(5))


async def test_server_sent_events_arrive_one_by_one(
    upstreams: Upstreams, gateway: GatewayFactory
) -> None:
    release = asyncio.Event()

    async def events(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(3):
            await resp.write(f"data: event {i}\n\n".encode())
            await release.wait()
            release.clear()
        return resp

    app = web.Application()
    app.router.add_get("/events", events)
    up = await upstreams.app(app)
    gw = await gateway(route_to(up.url))
    async with aiohttp.ClientSession() as session, session.get(gw.url + "/events") as resp:
        assert resp.headers["Content-Type"] == "text/event-stream"
        for i in range(3):
            # Each event is readable before the upstream sends the next one.
            line = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 5)
            assert line == f"data: event {i}\n\n".encode()
            release.set()


async def test_head_response_has_no_body_and_connection_is_reused(
    upstreams: Upstreams, gateway: GatewayFactory
) -> None:
    up = await upstreams.app(echo_app())
    gw = await gateway(route_to(up.url))
    raw = await raw_exchange(
        gw.port,
        b"HEAD /h HTTP/1.1\r\nHost: h\r\n\r\nGET /g HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    head_end = raw.index(b"\r\n\r\n") + 4
    assert raw.startswith(b"HTTP/1.1 200 OK")
    assert int(re.search(rb"(?i)content-length: (\d+)", raw[:head_end]).group(1)) > 0
    rest = parse_responses(raw[head_end:])
    assert rest[0][0] == 200
    assert b'"path": "/g"' in rest[0][2]
    assert gw.proxy.pool.connects == 1


async def test_http10_client_gets_a_close_delimited_body(
    upstreams: Upstreams, gateway: GatewayFactory
) -> None:
    async def streamed(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(b"hello ")
        await resp.write(b"world")
        return resp

    app = web.Application()
    app.router.add_get("/s", streamed)
    up = await upstreams.app(app)
    gw = await gateway(route_to(up.url))
    raw = await raw_exchange(gw.port, b"GET /s HTTP/1.0\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head.lower()
    assert b"connection: close" in head.lower()
    assert body == b"hello world"


async def test_expect_100_continue_is_answered_before_the_body(
    upstreams: Upstreams, gateway: GatewayFactory
) -> None:
    up = await upstreams.app(echo_app())
    gw = await gateway(route_to(up.url))
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(
        b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    )
    await writer.drain()
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"hello")
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200 OK")
    length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))
    body = await reader.readexactly(length)
    assert b'"body": 5' in body
    assert b"expect" not in body.lower()
    writer.close()


async def test_expect_100_continue_with_too_large_body_is_refused_at_once(
    upstreams: Upstreams, gateway: GatewayFactory
) -> None:
    up = await upstreams.app(echo_app())
    gw = await gateway(route_to(up.url), limits=Limits(max_body=100))
    raw = await raw_exchange(
        gw.port,
        b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 1000\r\nExpect: 100-continue\r\n\r\n",
    )
    [(status, headers, body)] = parse_responses(raw)
    assert status == 413
    assert headers["content-type"] == "application/problem+json"
    assert b'"status":413' in body
    assert b"100 Continue" not in raw


async def test_websocket_upgrade_is_passed_through(
    upstreams: Upstreams, gateway: GatewayFactory
) -> None:
    async def ws_handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            await ws.send_str("echo:" + msg.data)
        return ws

    app = web.Application()
    app.router.add_get("/ws", ws_handler)
    up = await upstreams.app(app)
    gw = await gateway(route_to(up.url))
    async with aiohttp.ClientSession() as session, session.ws_connect(gw.url + "/ws") as ws:
        for word in ("one", "two"):
            await ws.send_str(word)
            msg = await asyncio.wait_for(ws.receive(), 5)
            assert msg.data == "echo:" + word


async def test_connect_method_is_refused_cleanly(gateway: GatewayFactory) -> None:
    gw = await gateway([])
    raw = await raw_exchange(gw.port, b"CONNECT example.com:443 HTTP/1.1\r\nHost: x\r\n\r\n")
    [(status, headers, _)] = parse_responses(raw)
    assert status == 405
    assert headers["connection"] == "close"


async def test_large_body_streams_both_ways(upstreams: Upstreams, gateway: GatewayFactory) -> None:
    size = 8 * 1024 * 1024

    async def sink_and_source(request: web.Request) -> web.StreamResponse:
        total = 0
        async for chunk in request.content.iter_chunked(65536):
            total += len(chunk)
        resp = web.StreamResponse(headers={"X-Received": str(total)})
        resp.content_length = size
        await resp.prepare(request)
        block = b"y" * 65536
        for _ in range(size // len(block)):
            await resp.write(block)
        return resp

    app = web.Application(client_max_size=size * 2)
    app.router.add_post("/big", sink_and_source)
    up = await upstreams.app(app)
    gw = await gateway(route_to(up.url), limits=Limits(max_body=size))

    async def body() -> object:
        for _ in range(size // 65536):
            yield b"x" * 65536

    async with (
        aiohttp.ClientSession() as session,
        session.post(gw.url + "/big", data=body()) as resp,
    ):
        assert resp.headers["X-Received"] == str(size)
        received = 0
        async for chunk in resp.content.iter_chunked(65536):
            received += len(chunk)
        assert received == size


# ----------------------------------------------------------------------------- limits


async def test_malformed_request_is_400_problem_and_closes(gateway: GatewayFactory) -> None:
    gw = await gateway([])
    raw = await raw_exchange(gw.port, b"GET / HTTP/1.1\r\nHost: h\r\nBad Header\r\n\r\n")
    [(status, headers, body)] = parse_responses(raw)
    assert status == 400
    assert headers["content-type"] == "application/problem+json"
    assert headers["connection"] == "close"
    assert b'"title":"Bad Request"' in body


async def test_head_over_16_kib_is_431(upstreams: Upstreams, gateway: GatewayFactory) -> None:
    up = await upstreams.app(echo_app())
    gw = await gateway(route_to(up.url))
    # Many headers, and one huge header line sent in pieces: both refused.
    many = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(200))
    raw = await raw_exchange(gw.port, b"GET / HTTP/1.1\r\nHost: h\r\n" + many + b"\r\n")
    assert parse_responses(raw)[0][0] == 431
    pieces = [b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: "] + [b"a" * 4096] * 8
    raw = await raw_exchange(gw.port, pieces, pause=lambda: asyncio.sleep(0.01))
    [(status, _, body)] = parse_responses(raw)
    assert status == 431
    assert b"16384" in body
    # Just under the limit goes through.
    fine = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(100))
    raw = await raw_exchange(
        gw.port, b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n" + fine + b"\r\n"
    )
    assert parse_responses(raw)[0][0] == 200


async def test_body_over_limit_is_413_by_length_or_while_streaming(
    upstreams: Upstreams, gateway: GatewayFactory
) -> None:
    up = await upstreams.app(echo_app())
    gw = await gateway(route_to(up.url), limits=Limits(max_body=1000))
    raw = await raw_exchange(gw.port, b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1001\r\n\r\n")
    assert parse_responses(raw)[0][0] == 413
    chunked = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    six_hundred = b"258\r\n" + b"x" * 600 + b"\r\n"
    raw = await raw_exchange(gw.port, [chunked, six_hundred, six_hundred])
    [(status, headers, _)] = parse_responses(raw)
    assert status == 413
    assert headers["connection"] == "close"
    # At the limit is fine.
    raw = await raw_exchange(
        gw.port,
        b"POST / HTTP/1.1\r\nHost: h\r\nConnection: close\r\nContent-Length: 1000\r\n\r\n"
        + b"x" * 1000,
    )
    [(status, _, body)] = parse_responses(raw)
    assert status == 200
    assert b'"body": 1000' in body


async def test_client_too_slow_to_send_its_head_gets_408(gateway: GatewayFactory) -> None:
    gw = await gateway([], limits=Limits(head_timeout=0.2))
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: h\r\n")
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    [(status, headers, _)] = parse_responses(raw)
    assert status == 408
    assert headers["connection"] == "close"


async def test_client_too_slow_to_send_its_body_gets_408(
    upstreams: Upstreams, gateway: GatewayFactory
) -> None:
    up = await upstreams.app(echo_app())
    gw = await gateway(route_to(up.url), limits=Limits(body_timeout=0.2))
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\nonly-some")
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert parse_responses(raw)[0][0] == 408


async def test_idle_keep_alive_connection_is_closed_quietly(gateway: GatewayFactory) -> None:
    gw = await gateway([], limits=Limits(head_timeout=0.2, keepalive_timeout=0.2))
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_trailers_of_a_chunked_request_do_not_leak_into_the_next(
    upstreams: Upstreams, gateway: GatewayFactory
) -> None:
    up = await upstreams.app(echo_app())
    gw = await gateway(route_to(up.url))
    raw = await raw_exchange(
        gw.port,
        b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\nX-Trailer: t\r\n\r\n"
        b"GET /b HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    first, second = parse_responses(raw)
    assert b'"body": 3' in first[2]
    assert b"x-trailer" not in second[2]


async def test_a_slow_reader_pauses_the_upstream_instead_of_filling_memory(
    upstreams: Upstreams, gateway: GatewayFactory
) -> None:
    size = 32 * 1024 * 1024

    async def flood(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_length = size
        await resp.prepare(request)
        block = b"f" * 65536
        for _ in range(size // len(block)):
            await resp.write(block)
        return resp

    app = web.Application()
    app.router.add_get("/flood", flood)
    up = await upstreams.app(app)
    gw = await gateway(route_to(up.url))
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port, limit=65536)
    writer.write(b"GET /flood HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    await writer.drain()
    received = 0
    buffered = 0
    while chunk := await reader.read(65536):
        received += len(chunk)
        for conn in gw.proxy.connections:
            buffered = max(buffered, conn.transport.get_write_buffer_size())
        if received < size // 2:
            await asyncio.sleep(0.001)  # a slow reader for the first half
    writer.close()
    assert received > size
    # Without flow control the gateway would hold most of the 32 MiB.
    assert buffered < 4 * 1024 * 1024, buffered


async def test_the_health_path_is_answered_by_the_gateway_even_under_a_catch_all_route(
    upstreams: Upstreams, gateway: GatewayFactory
) -> None:
    echo = await upstreams.app(echo_app())
    gw = await gateway(route_to(echo.url))
    async with aiohttp.ClientSession() as session:
        for url in ("/-/health", "/-/health?probe=lb"):
            async with session.get(gw.url + url) as resp:
                assert resp.status == 200
                assert await resp.json() == {"status": "UP"}
                assert "X-Upstream" not in resp.headers
        async with session.head(gw.url + "/-/health") as resp:
            assert resp.status == 200
        async with session.post(gw.url + "/-/health") as resp:
            assert (resp.status, resp.headers["Allow"]) == (405, "GET, HEAD")
        # Only that path: its neighbours are routed as usual.
        async with session.get(gw.url + "/-/healthz") as resp:
            assert resp.headers["X-Upstream"] == "echo"
    assert gw.proxy.stats.requests[("health", "health", 200)] == 3


async def test_the_health_path_says_draining_once_the_gateway_stops(
    gateway: GatewayFactory,
) -> None:
    gw = await gateway([])
    gw.proxy.draining = True  # what drain() sets first
    answer = await raw_exchange(gw.port, b"GET /-/health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 503 ")
    assert b"connection: close" in answer
    assert answer.endswith(b'{"status":"DRAINING"}')


async def test_the_drain_answers_a_connection_accepted_before_it_and_closes_idle_ones(
    upstreams: Upstreams, gateway: GatewayFactory
) -> None:
    """A restart stops accepting, then drains: a client connected a moment before still gets
    its answer (its request was on its way), while an idle keep-alive connection is closed."""
    from core.testing import wait_until

    up = await upstreams.app(echo_app())
    gw = await gateway(route_to(up.url))
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", gw.port)
    idle_writer.write(b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n")
    first = await idle_reader.readuntil(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200")
    length = int(re.search(rb"(?i)content-length: (\d+)", first).group(1))  # type: ignore[union-attr]
    await idle_reader.readexactly(length)
    fresh_reader, fresh_writer = await asyncio.open_connection("127.0.0.1", gw.port)
    await wait_until(lambda: len(gw.proxy.connections) == 2, message="both accepted")

    draining = asyncio.create_task(gw.proxy.drain(5.0))
    await wait_until(lambda: gw.proxy.draining, message="draining")
    assert await idle_reader.read() == b""  # closed, nothing more written
    fresh_writer.write(b"GET /late HTTP/1.1\r\nHost: a\r\n\r\n")
    answer = await fresh_reader.read()  # answered, then closed
    assert answer.startswith(b"HTTP/1.1 200")
    assert b'"/late"' in answer
    await draining
    idle_writer.close()
    fresh_writer.close()
