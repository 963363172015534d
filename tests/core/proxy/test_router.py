"""Routing: static routes before discovery, path rewriting, header edits, reloads, balancing."""

from __future__ import annotations

from collections import Counter

import aiohttp
import pytest
from aiohttp import web

from core.errors import NotFound
from core.proxy.router import Router
from core.routes.table import RouteTable
from tests.core.proxy.conftest import GatewayFactory, Upstreams


def named_app(name: str) -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "name": name,
                "path": request.path_qs,
                "headers": {k.lower(): v for k, v in request.headers.items()},
            },
            headers={"Server": "upstream", "X-Internal": "1"},
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


async def fetch(url: str, **kwargs: object) -> tuple[int, dict[str, object], dict[str, str]]:
    async with aiohttp.ClientSession() as session, session.get(url, **kwargs) as resp:  # type: ignore[arg-type]
        return resp.status, await resp.json(content_type=None), dict(resp.headers)


async def test_rewrite_strip_and_header_edits_apply(
    upstreams: Upstreams, gateway: GatewayFactory
) -> None:
    up = await upstreams.app(named_app("a"))
    gw = await gateway(
        [
            {
                "id": "item",
                "path": "/api/items/{id}",
                "urls": [up.url],
                "rewrite": "/v2/items/{id}",
                "request_headers": {"add": {"X-Api": "2"}, "remove": ["Cookie"]},
                "response_headers": {"add": {"Cache-Control": "no-store"}, "remove": ["Server"]},
            },
            {"id": "rest", "prefix": "/api", "urls": [up.url], "strip_prefix": 1},
        ]
    )
    status, body, headers = await fetch(
        gw.url + "/api/items/7?q=1", headers={"Cookie": "a=b", "X-Api": "client's"}
    )
    assert status == 200
    assert body["path"] == "/v2/items/7?q=1"
    seen = body["headers"]
    assert isinstance(seen, dict)
    assert seen["x-api"] == "2"
    assert "cookie" not in seen
    assert "x-forwarded-prefix" not in seen
    assert headers["Cache-Control"] == "no-store"
    assert "Server" not in headers
    assert headers["X-Internal"] == "1"

    _, body, headers = await fetch(gw.url + "/api/other/thing")
    assert body["path"] == "/other/thing"
    assert body["headers"]["x-forwarded-prefix"] == "/api"  # type: ignore[index]
    assert headers["Server"] == "upstream"


async def test_static_routes_come_before_discovery_and_unmatched_is_404(
    upstreams: Upstreams, gateway: GatewayFactory
) -> None:
    up = await upstreams.app(named_app("a"))
    gw = await gateway([{"id": "only", "path": "/exact", "urls": [up.url]}])
    assert (await fetch(gw.url + "/exact"))[0] == 200
    status, problem, _ = await fetch(gw.url + "/exact/more")
    assert status == 404
    assert problem["detail"] == "no route matches this path"


async def test_weighted_urls_share_the_load_by_weight(
    upstreams: Upstreams, gateway: GatewayFactory
) -> None:
    a, b = await upstreams.app(named_app("a")), await upstreams.app(named_app("b"))
    gw = await gateway(
        [
            {
                "id": "w",
                "prefix": "/",
                "balancer": "weighted",
                "urls": [{"url": a.url, "weight": 1}, {"url": b.url, "weight": 3}],
            }
        ]
    )
    seen = Counter([(await fetch(gw.url + "/x"))[1]["name"] for _ in range(40)])
    assert seen == {"a": 10, "b": 30}


async def test_round_robin_alternates(upstreams: Upstreams, gateway: GatewayFactory) -> None:
    a, b = await upstreams.app(named_app("a")), await upstreams.app(named_app("b"))
    gw = await gateway([{"id": "rr", "prefix": "/", "urls": [a.url, b.url]}])
    names = [(await fetch(gw.url + "/x"))[1]["name"] for _ in range(6)]
    assert names in (["a", "b"] * 3, ["b", "a"] * 3)


async def test_reload_keeps_the_state_of_an_upstream_that_stays(
    upstreams: Upstreams, gateway: GatewayFactory
) -> None:
    a = await upstreams.app(named_app("a"))
    routes = [{"id": "r", "prefix": "/", "urls": [a.url]}]
    gw = await gateway(routes)
    for _ in range(3):
        await fetch(gw.url + "/x")
    before = gw.router.upstreams()[0]
    gw.install([*routes, {"id": "new", "path": "/new", "urls": [a.url]}], version="v2")
    assert gw.router.table.version == "v2"
    by_name = {u.name: u for u in gw.router.upstreams()}
    assert by_name["route:r"] is before
    assert before.endpoints[a.url].requests == 3
    assert sorted(by_name) == ["route:new", "route:r"]
    gw.install([{"id": "new", "path": "/new", "urls": [a.url]}], version="v3")
    assert [u.name for u in gw.router.upstreams()] == ["route:new"]


def test_rejected_table_is_recorded_and_the_one_in_force_stays() -> None:
    router = Router(None)
    table = RouteTable.parse(
        {"routes": [{"id": "a", "prefix": "/a", "urls": ["http://x:1"]}]}, "v1"
    )
    router.install(table, source="test", at=1.0)
    router.reject("route 'b', field 'path': bad", source="test", version="v2", at=2.0)
    assert router.table is table
    doc = router.describe_routes()
    assert doc["version"] == "v1"
    assert doc["last_rejected"]["reason"] == "route 'b', field 'path': bad"
    assert doc["reloads"] == {"applied": 1, "rejected": 1}


def test_without_a_registry_unmatched_paths_are_404() -> None:
    router = Router(None)
    with pytest.raises(NotFound):
        router.resolve("GET", b"h", "/billing/x", [])
    table = RouteTable.parse({"routes": [{"id": "a", "prefix": "/", "urls": ["http://x:1"]}]})
    router.install(table, source="test", at=1.0)
    plan, path, prefix = router.resolve("GET", None, "/any/where", [])
    assert (plan.route, path, prefix) == ("a", "/any/where", "")
    # Dot segments never reach the router: core.routes.path refuses them (test_head).


def test_decisions_are_kept_from_a_paths_second_request_on_and_new_paths_keep_nothing() -> None:
    """A path seen once leaves nothing in the cache (traffic of ever-new ids would only
    churn it, and feed the garbage collector); from its second request on, the decision
    is kept and reused; a table change forgets every decision."""
    router = Router(None)
    table = RouteTable.parse({"routes": [{"id": "a", "prefix": "/", "urls": ["http://x:1"]}]})
    router.install(table, source="test", at=1.0)
    for n in range(1000):
        router.resolve("GET", b"h", f"/items/{n}", [])
    assert len(router._cache) == 0
    first = router.resolve("GET", b"h", "/items/7", [])
    assert len(router._cache) == 1
    # What is kept is what the next request gets: marked here to tell it from a new decision
    # (not by identity: the compiled build boxes a new tuple for each answer).
    (key,) = router._cache
    router._cache[key] = (first[0], "/kept", "")
    assert router.resolve("GET", b"h", "/items/7", [])[1:] == ("/kept", "")
    for _ in range(2):
        assert router.resolve("GET", b"other", "/items/7", [])[1:] == ("/items/7", "")
    assert len(router._cache) == 2  # host is in the key
    router.install(table, source="test", at=2.0)
    assert len(router._cache) == 0
    again = router.resolve("GET", b"h", "/items/7", [])
    assert (again[0].route, again[1:]) == ("a", ("/items/7", ""))
