"""Preparing a request head, and reusing it when a client repeats it."""

from __future__ import annotations

import asyncio
import re

import pytest
from aiohttp import web

from core.errors import HTTPProblem, PayloadTooLarge
from core.proxy.head import Heads
from core.proxy.router import Router
from core.routes.table import RouteTable
from tests.core.proxy.conftest import GatewayFactory, Upstreams, parse_responses, raw_exchange


def router_with(*routes: dict[str, object]) -> Router:
    router = Router(None)
    router.install(RouteTable.parse({"routes": list(routes)}), source="test", at=0.0)
    return router


def heads_for(router: Router, max_body: int = 100) -> Heads:
    return Heads(
        router,
        peer=b"10.0.0.9",
        forwarded_for=b"x-forwarded-for: 10.0.0.9\r\n",
        max_body=max_body,
    )


def test_prepare_builds_the_upstream_head_around_the_request_id() -> None:
    router = router_with({"id": "a", "prefix": "/api", "urls": ["http://up:1"], "strip_prefix": 1})
    head, request_line, path, method = heads_for(router).prepare(
        b"POST",
        b"/api/x?y=1",
        [(b"Host", b"h"), (b"Content-Length", b"3"), (b"X-Request-ID", b"given")],
        False,
    )
    assert (request_line, path, method) == (b"POST /x?y=1 HTTP/1.1\r\n", "/api/x", "POST")
    assert head.before_id == (
        b"x-forwarded-for: 10.0.0.9\r\nx-forwarded-host: h\r\nx-forwarded-prefix: /api\r\n"
        b"x-forwarded-proto: http\r\nx-request-id: "
    )
    assert head.after_id == b"\r\nvia: 1.1 essaim\r\ncontent-length: 3\r\n\r\n"
    assert (head.client_id, head.length, head.chunked) == (b"given", 3, False)


def test_prepare_refuses_what_cannot_go() -> None:
    heads = heads_for(router_with({"id": "a", "prefix": "/", "urls": ["http://up:1"]}), 10)
    with pytest.raises(PayloadTooLarge):
        heads.prepare(b"PUT", b"/", [(b"Content-Length", b"11")], False)
    with pytest.raises(HTTPProblem) as info:
        heads.prepare(b"GET", b"/", [(b"Expect", b"magic")], False)
    assert info.value.status == 417


def test_what_requests_share_is_prepared_once_and_what_differs_again() -> None:
    router = router_with(
        {"id": "a", "prefix": "/a", "urls": ["http://up:1"]},
        {"id": "b", "prefix": "/b", "urls": ["http://up:2"], "strip_prefix": 1},
    )
    heads = heads_for(router)
    headers = [(b"Host", b"h"), (b"Accept", b"*/*")]
    first, _, _, _ = heads.prepare(b"GET", b"/a/1?n=1", headers, False)
    second, line, _, _ = heads.prepare(b"GET", b"/a/1?n=2", list(headers), False)
    assert line == b"GET /a/1?n=2 HTTP/1.1\r\n"
    assert second is first  # same headers, route and prefix: prepared once
    third, line, _, _ = heads.prepare(b"GET", b"/b/2", list(headers), False)
    assert (third.plan.route, line) == ("b", b"GET /2 HTTP/1.1\r\n")
    assert b"x-forwarded-prefix: /b" in third.before_id
    changed, _, _, _ = heads.prepare(b"GET", b"/b/2", [(b"Host", b"other")], False)
    assert b"x-forwarded-host: other" in changed.before_id
    table = RouteTable.parse({"routes": [{"id": "c", "prefix": "/", "urls": ["http://up:3"]}]})
    router.install(table, source="t", at=1.0)
    assert heads.prepare(b"GET", b"/b/2", [(b"Host", b"other")], False)[0].plan.route == "c"


async def test_a_repeated_head_gets_a_new_request_id_each_time(
    upstreams: Upstreams, gateway: GatewayFactory
) -> None:
    async def echo_id(request: web.Request) -> web.Response:
        return web.Response(text=request.headers["X-Request-ID"])

    app = web.Application()
    app.router.add_get("/", echo_id)
    up = await upstreams.app(app)
    gw = await gateway([{"id": "r", "prefix": "/", "urls": [up.url]}])
    same = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"
    raw = await raw_exchange(
        gw.port, same * 3 + b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    )
    answers = parse_responses(raw)
    ids = [headers["x-request-id"] for _, headers, _ in answers]
    assert len(set(ids)) == 4
    assert [body.decode() for _, _, body in answers] == ids


async def test_a_repeated_head_follows_a_new_route_table(
    upstreams: Upstreams, gateway: GatewayFactory
) -> None:
    def named(name: str) -> web.Application:
        async def handle(request: web.Request) -> web.Response:
            return web.Response(text=name)

        app = web.Application()
        app.router.add_get("/", handle)
        return app

    a, b = await upstreams.app(named("a")), await upstreams.app(named("b"))
    gw = await gateway([{"id": "r", "prefix": "/", "urls": [a.url]}])
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    request = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"

    async def ask() -> bytes:
        writer.write(request)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
        return await reader.readexactly(length)

    assert await ask() == b"a"
    assert await ask() == b"a"
    gw.install([{"id": "r", "prefix": "/", "urls": [b.url]}], version="v2")
    assert await ask() == b"b"
    gw.install([], version="v3")
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 404")
    writer.close()


async def test_a_client_repeating_its_request_byte_for_byte_gets_each_answered(
    upstreams: Upstreams, gateway: GatewayFactory
) -> None:
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.Response(text=f"{request.method} {request.path} {len(body)}")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    up = await upstreams.app(app)
    gw = await gateway([{"id": "r", "prefix": "/", "urls": [up.url]}])
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)

    async def ask(raw: bytes) -> tuple[bytes, bytes]:
        writer.write(raw)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
        rid = re.search(rb"(?i)x-request-id: (\S+)", head).group(1)  # type: ignore[union-attr]
        return await reader.readexactly(length), rid

    get = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
    post = b"POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nxyz"
    answers = [await ask(raw) for raw in (get, get, get, post, post, get)]
    assert [body for body, _ in answers] == [
        b"GET /a 0", b"GET /a 0", b"GET /a 0", b"POST /b 3", b"POST /b 3", b"GET /a 0",
    ]  # fmt: skip
    assert len({rid for _, rid in answers}) == 6
    writer.close()
