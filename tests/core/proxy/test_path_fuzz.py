"""Fuzzing request paths: the route (so the policy) applied is the route of the path the upstream gets.

Issue 10: ``POST /inventory/products#`` missed the admin-only route, took
the generic one, and reached the upstream as ``/inventory/products``. Here
paths are built from the pieces of such tricks (dot segments plain and
encoded, repeated and encoded slashes, fragments, queries, ``;``, encoded
unreserved characters, NUL) and sent through a real proxy on loopback.
Each route adds ``x-route: <id>`` to what it forwards; a raw upstream
records the request line and head it got. For every request that reached
it, the route table applied to the public path it got (``X-Forwarded-Prefix``
and the path) must be the route that forwarded it, and that path must be in
normal form. Requests the gateway refused reached nobody.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from core.routes.path import normalize_path
from core.routes.table import RouteTable
from tests.core.proxy.conftest import GatewayFactory, Upstreams, parse_responses
from tests.core.proxy.test_strict_http import Recorder


def routes(url: str) -> list[dict[str, Any]]:
    def tagged(route_id: str, **route: Any) -> dict[str, Any]:
        return {
            "id": route_id,
            "urls": [url],
            "request_headers": {"add": {"x-route": route_id}},
            **route,
        }

    # The demo's shape: products read by anyone, written by admins, a
    # generic /{service}/... route that needs only a login, an admin area.
    return [
        tagged("read", path="/inventory/products/**", methods=["GET"], strip_prefix=1),
        tagged("write", path="/inventory/products/**", methods=["POST"], strip_prefix=1),
        tagged("admin", path="/admin/**"),
        tagged("generic", path="/{service}/**", strip_prefix=1),
    ]


PIECES = [
    "inventory",
    "products",
    "admin",
    "x",
    "",  # an empty segment: '//'
    ".",
    "..",
    "%2e",
    "%2E",
    "%2e%2E",
    ".%2e",
    "%2F",
    "%2f",
    "%5C",
    "#",
    "?",
    ";",
    ";x=1",
    "%69nventory",  # 'inventory' with an encoded unreserved character
    "pr%6Fducts",
    "%41",
    "%00",
    "%3b",
    "~",
]

segment = st.lists(st.sampled_from(PIECES), min_size=1, max_size=2).map("".join)
paths = st.lists(segment, min_size=1, max_size=5).map(lambda s: "/" + "/".join(s))


def send(port: int, method: str, target: str) -> int:
    """One request on a new connection (blocking, from the fuzzing thread); its status."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            f"{method} {target} HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n"
            "Connection: close\r\n\r\n".encode("latin-1")
        )
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    [(status, _, _)] = parse_responses(b"".join(chunks))
    return status


def fields(head: bytes) -> tuple[str, dict[str, str]]:
    """The target of a recorded request head, and its headers (lower-case names)."""
    lines = head.decode("latin-1").split("\r\n")
    target = lines[0].split(" ")[1]
    found = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name:
            found[name.strip().lower()] = value.strip()
    return target, found


async def test_the_route_applied_is_always_the_route_of_the_path_the_upstream_gets(
    upstreams: Upstreams, gateway: GatewayFactory
) -> None:
    rec = Recorder()
    up = await upstreams.raw(rec.handle)
    table_doc = routes(up.url)
    gw = await gateway(table_doc)
    table = RouteTable.parse({"routes": table_doc})
    forwarded = []

    @settings(max_examples=250, deadline=None, database=None)
    @given(st.sampled_from(["GET", "POST"]), paths)
    @example("POST", "/inventory/products#")  # the attack of issue 10
    @example("POST", "/inventory/products/%2e%2e/x")
    @example("GET", "//admin/x")
    def one(method: str, target: str) -> None:
        before = len(rec.heads)
        status = send(gw.port, method, target)
        if status in (400, 404):
            assert len(rec.heads) == before, f"refused ({status}) but forwarded: {target}"
            return
        assert status == 200, target
        assert len(rec.heads) == before + 1
        got, upstream_headers = fields(rec.heads[-1])
        path = got.partition("?")[0]
        public = upstream_headers.get("x-forwarded-prefix", "") + path
        assert normalize_path(public) == public, f"{target} reached the upstream as {got}"
        hit = table.match(method, "h", public, {})
        assert hit is not None, f"{target}: the upstream got {public}, which no route matches"
        assert hit[0].id == upstream_headers["x-route"], (
            f"{method} {target} took route {upstream_headers['x-route']} "
            f"but the upstream got {public}, whose route is {hit[0].id}"
        )
        if "#" in target:
            raise AssertionError(f"a target with a fragment was forwarded: {target}")
        forwarded.append(target)

    await asyncio.to_thread(one)
    assert forwarded, "no example reached the upstream: the test tests nothing"
