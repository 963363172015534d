"""Strict HTTP/1.1 at the edge (issue 10): the target, Host, the version, Date and Via.

Each test sends raw bytes to a real proxy on loopback and reads what an
upstream server recorded of the request line it got.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.core.proxy.conftest import (
    GatewayFactory,
    Server,
    Upstreams,
    parse_responses,
    raw_exchange,
)


class Recorder:
    """A raw upstream that records each request head it gets and answers ``200 ok``."""

    def __init__(self, *, date: bool = True) -> None:
        self.heads: list[bytes] = []
        self.date = date

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            self.heads.append(head)
            date = b"Date: Sun, 06 Dec 2026 10:00:00 GMT\r\n" if self.date else b""
            writer.write(b"HTTP/1.1 200 OK\r\n" + date + b"Content-Length: 2\r\n\r\nok")
            await writer.drain()

    @property
    def lines(self) -> list[bytes]:
        return [h.split(b"\r\n", 1)[0] for h in self.heads]


async def recorder(upstreams: Upstreams, **kwargs: bool) -> tuple[Recorder, Server]:
    rec = Recorder(**kwargs)
    return rec, await upstreams.raw(rec.handle)


def routes(url: str) -> list[dict[str, object]]:
    return [
        {"id": "api", "prefix": "/api", "urls": [url], "strip_prefix": 1},
        {"id": "shop", "prefix": "/", "host": "shop.example", "urls": [url]},
    ]


async def ask(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """The one answer to ``request`` (an HTTP/1.1 one is sent with ``Connection: close``)."""
    if b" HTTP/1.1\r\n" in request:
        request = request[:-2] + b"Connection: close\r\n\r\n"
    raw = await raw_exchange(port, request, timeout=3.0)
    [answer] = parse_responses(raw)
    return answer


@pytest.mark.parametrize(
    ("target", "upstream_line"),
    [
        (b"/api/%61b/c?q=%2e%2e", b"GET /ab/c?q=%2e%2e HTTP/1.1"),  # the query is untouched
        (b"//api//x//", b"GET /x/ HTTP/1.1"),
        (b"/api/a%3bb", b"GET /a%3Bb HTTP/1.1"),
    ],
)
async def test_the_upstream_gets_the_normalized_path_that_was_routed(
    upstreams: Upstreams, gateway: GatewayFactory, target: bytes, upstream_line: bytes
) -> None:
    rec, up = await recorder(upstreams)
    gw = await gateway(routes(up.url))
    status, _, _ = await ask(gw.port, b"GET " + target + b" HTTP/1.1\r\nHost: h\r\n\r\n")
    assert status == 200
    assert rec.lines == [upstream_line]


@pytest.mark.parametrize(
    "target",
    [
        b"/api/products#",
        b"/api/x#frag",
        b"/api/x?a=1#f",
        b"/api/a#b?c",
        b"/api/%61#",
        b"/api/a/../b",
        b"/api/a/%2e%2E/b",
        b"/api/%2E/b",
        b"/api/a%2Fb",
        b"/api/a%5Cb",
        b"/api/a%00",
        b"/api/a\\b",
        b"/api/%G0",
    ],
)
async def test_a_fragment_a_dot_segment_an_encoded_slash_or_nul_is_400_and_goes_nowhere(
    upstreams: Upstreams, gateway: GatewayFactory, target: bytes
) -> None:
    rec, up = await recorder(upstreams)
    gw = await gateway(routes(up.url))
    status, headers, _ = await ask(gw.port, b"POST " + target + b" HTTP/1.1\r\nHost: h\r\n\r\n")
    assert status == 400
    assert headers["content-type"] == "application/problem+json"
    assert rec.heads == []


async def test_http11_without_host_or_with_two_or_a_bad_one_is_400(
    upstreams: Upstreams, gateway: GatewayFactory
) -> None:
    rec, up = await recorder(upstreams)
    gw = await gateway(routes(up.url))
    for head in (
        b"GET /api/x HTTP/1.1\r\n\r\n",
        b"GET /api/x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET /api/x HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n",
        b"GET /api/x HTTP/1.1\r\nHost: a/b\r\n\r\n",
        b"GET /api/x HTTP/1.1\r\nHost: a@b\r\n\r\n",
        b"GET /api/x HTTP/1.1\r\nHost: a:b\r\n\r\n",
    ):
        status, _, _ = await ask(gw.port, head)
        assert status == 400, head
    assert rec.heads == []
    # HTTP/1.0 may leave Host out; an IP literal and a port are valid.
    for head in (
        b"GET /api/x HTTP/1.0\r\n\r\n",
        b"GET /api/x HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n",
        b"GET /api/x HTTP/1.1\r\nHost: shop.example.\r\n\r\n",
    ):
        status, _, _ = await ask(gw.port, head)
        assert status == 200, head


async def test_http09_is_400_and_an_unknown_version_505(
    upstreams: Upstreams, gateway: GatewayFactory
) -> None:
    rec, up = await recorder(upstreams)
    gw = await gateway(routes(up.url))
    status, _, _ = await ask(gw.port, b"GET /api/x\r\n\r\n")
    assert status == 400
    status, _, _ = await ask(gw.port, b"GET /api/x\r\nHost: h\r\n\r\n")
    assert status == 400
    status, _, _ = await ask(gw.port, b"GET /api/x HTTP/2.0\r\nHost: h\r\n\r\n")
    assert status == 505
    # After a good request on the same connection, an HTTP/0.9 one is still refused.
    raw = await raw_exchange(gw.port, b"GET /api/x HTTP/1.1\r\nHost: h\r\n\r\nGET /api/y\r\n\r\n")
    assert [status for status, _, _ in parse_responses(raw)] == [200, 400]
    assert rec.lines == [b"GET /x HTTP/1.1"]


async def test_the_absolute_form_is_routed_by_its_host_and_path(
    upstreams: Upstreams, gateway: GatewayFactory
) -> None:
    rec, up = await recorder(upstreams)
    gw = await gateway(routes(up.url))
    # The authority replaces Host (RFC 9112 3.2.2): the shop.example route.
    status, _, _ = await ask(
        gw.port, b"GET http://shop.example:8080/api/x?y=1 HTTP/1.1\r\nHost: other\r\n\r\n"
    )
    assert status == 200
    assert rec.lines[-1] == b"GET /api/x?y=1 HTTP/1.1"
    assert b"x-forwarded-host: shop.example:8080\r\n" in rec.heads[-1]
    # Any other host: the /api route, its prefix stripped; an empty path is "/".
    status, _, _ = await ask(gw.port, b"GET HTTP://else/api/x HTTP/1.1\r\nHost: else\r\n\r\n")
    assert status == 200
    assert rec.lines[-1] == b"GET /x HTTP/1.1"
    status, _, _ = await ask(gw.port, b"GET http://shop.example HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200
    assert rec.lines[-1] == b"GET / HTTP/1.1"
    for bad in (b"ftp://h/x", b"http://user@h/x", b"http:///x", b"http://h/a#b", b"*"):
        status, _, _ = await ask(gw.port, b"GET " + bad + b" HTTP/1.1\r\nHost: h\r\n\r\n")
        assert status == 400, bad
    assert len(rec.heads) == 3


async def test_date_is_added_when_the_upstream_sends_none_and_kept_when_it_does(
    upstreams: Upstreams, gateway: GatewayFactory
) -> None:
    _, dated = await recorder(upstreams)
    _, undated = await recorder(upstreams, date=False)
    gw = await gateway(
        [
            {"id": "dated", "prefix": "/dated", "urls": [dated.url]},
            {"id": "undated", "prefix": "/undated", "urls": [undated.url]},
        ]
    )
    for _ in range(2):  # the second answer comes from the route's memo of the head
        _, headers, _ = await ask(gw.port, b"GET /undated HTTP/1.1\r\nHost: h\r\n\r\n")
        assert headers["date"].endswith(" GMT")
        _, headers, _ = await ask(gw.port, b"GET /dated HTTP/1.1\r\nHost: h\r\n\r\n")
        assert headers["date"] == "Sun, 06 Dec 2026 10:00:00 GMT"


async def test_via_names_the_clients_protocol_version(
    upstreams: Upstreams, gateway: GatewayFactory
) -> None:
    rec, up = await recorder(upstreams)
    gw = await gateway(routes(up.url))
    _, headers, _ = await ask(gw.port, b"GET /api/x HTTP/1.0\r\n\r\n")
    assert headers["via"] == "1.0 essaim"
    assert b"\r\nvia: 1.0 essaim\r\n" in rec.heads[-1]
    _, headers, _ = await ask(gw.port, b"GET /nowhere HTTP/1.0\r\n\r\n")  # the gateway's own 404
    assert headers["via"] == "1.0 essaim"
    _, headers, _ = await ask(gw.port, b"GET /api/x HTTP/1.1\r\nHost: h\r\n\r\n")
    assert headers["via"] == "1.1 essaim"
    assert b"\r\nvia: 1.1 essaim\r\n" in rec.heads[-1]


async def test_the_gateways_problems_name_the_public_path_in_instance(
    upstreams: Upstreams, gateway: GatewayFactory
) -> None:
    _, up = await recorder(upstreams)
    gw = await gateway(routes(up.url))
    _, _, body = await ask(gw.port, b"GET /nowhere/x?q=1 HTTP/1.1\r\nHost: h\r\n\r\n")
    assert json.loads(body)["instance"] == "/nowhere/x"
    _, _, body = await ask(gw.port, b"GET /api/a/%2e%2e/b HTTP/1.1\r\nHost: h\r\n\r\n")
    assert json.loads(body)["instance"] == "/api/a/%2e%2e/b"  # refused: as the client wrote it
