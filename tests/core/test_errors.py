"""Every error a client sees is RFC 9457 problem details, never a traceback."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from core.errors import NotFound, Unprocessable, problem_middleware

Client = TestClient[Any, Any]


async def make(aiohttp_client: Callable[..., Awaitable[Client]]) -> Client:
    async def missing(request: web.Request) -> web.Response:
        raise NotFound("no customer 42")

    async def invalid(request: web.Request) -> web.Response:
        raise Unprocessable("bad email", errors=[{"field": "email"}], headers={"X-Why": "test"})

    async def crash(request: web.Request) -> web.Response:
        raise RuntimeError("secret internals")

    app = web.Application(middlewares=[problem_middleware])
    app.router.add_get("/missing", missing)
    app.router.add_get("/invalid", invalid)
    app.router.add_get("/crash", crash)
    return await aiohttp_client(app)


async def test_problem_has_type_title_status_detail_instance(
    aiohttp_client: Callable[..., Awaitable[Client]],
) -> None:
    client = await make(aiohttp_client)
    resp = await client.get("/missing")
    assert resp.status == 404
    assert resp.content_type == "application/problem+json"
    assert await resp.json() == {
        "type": "about:blank",
        "title": "Not Found",
        "status": 404,
        "detail": "no customer 42",
        "instance": "/missing",
    }


async def test_behind_the_gateway_the_instance_is_the_public_path_with_its_prefix(
    aiohttp_client: Callable[..., Awaitable[Client]],
) -> None:
    client = await make(aiohttp_client)
    resp = await client.get("/missing", headers={"X-Forwarded-Prefix": "/customers"})
    assert (await resp.json())["instance"] == "/customers/missing"
    resp = await client.get("/missing", headers={"X-Forwarded-Prefix": "not-a-path"})
    assert (await resp.json())["instance"] == "/missing"


async def test_extension_members_and_headers_are_kept(
    aiohttp_client: Callable[..., Awaitable[Client]],
) -> None:
    client = await make(aiohttp_client)
    resp = await client.get("/invalid")
    assert resp.status == 422
    assert resp.headers["X-Why"] == "test"
    assert (await resp.json())["errors"] == [{"field": "email"}]


async def test_unhandled_exception_is_a_500_problem_without_internals(
    aiohttp_client: Callable[..., Awaitable[Client]],
) -> None:
    client = await make(aiohttp_client)
    resp = await client.get("/crash")
    assert resp.status == 500
    body = await resp.text()
    assert "secret internals" not in body
    assert "Traceback" not in body
    assert (await resp.json())["title"] == "Internal Server Error"


async def test_aiohttp_routing_errors_become_problems(
    aiohttp_client: Callable[..., Awaitable[Client]],
) -> None:
    client = await make(aiohttp_client)
    resp = await client.get("/nowhere")
    assert resp.status == 404
    assert resp.content_type == "application/problem+json"
    resp = await client.post("/missing")
    assert resp.status == 405
    assert "GET" in resp.headers["Allow"]
    assert (await resp.json())["status"] == 405
