"""Service-to-service calls against real upstream servers found through a real registry."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from core.errors import BadGateway, GatewayTimeout, ServiceUnavailable, problem_middleware
from core.redis import Redis, connect
from core.registry.discovery import Watcher
from core.registry.store import Instance, RegistryStore
from core.service.calls import Calls, Timeouts, dependency_middleware, forwarding_middleware
from core.testing import free_port
from core.upstream.breaker import BreakerPolicy
from core.upstream.retry import RetryPolicy
from core.upstream.upstream import UpstreamPolicy

Client = TestClient[Any, Any]


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = connect(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def watcher(redis: Redis) -> AsyncIterator[Watcher]:
    w = Watcher(redis)
    await w.start(wait=5)
    yield w
    await w.stop()


Upstreams = Callable[..., Awaitable[TestServer]]


@pytest.fixture
async def upstream(redis: Redis, watcher: Watcher) -> AsyncIterator[Upstreams]:
    """``await upstream(name, handler)`` runs an aiohttp server and registers it."""
    servers: list[TestServer] = []

    async def start(
        service: str, iid: str, handler: Callable[..., Awaitable[web.StreamResponse]]
    ) -> TestServer:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        inst = Instance(service=service, id=iid, host="127.0.0.1", port=server.port or 0, ttl=60)
        await RegistryStore(redis).register(inst)
        await watcher.wait_for(lambda w: iid in {i.id for i in w.instances(service)})
        return server

    yield start
    for server in servers:
        await server.close()


def echo(name: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "instance": name,
                "path": request.path_qs,
                "request_id": request.headers.get("X-Request-ID"),
                "auth": request.headers.get("Authorization"),
                "body": (await request.read()).decode(),
            }
        )

    return handler


async def register_dead(redis: Redis, watcher: Watcher, service: str, iid: str) -> None:
    inst = Instance(service=service, id=iid, host="127.0.0.1", port=free_port(), ttl=60)
    await RegistryStore(redis).register(inst)
    await watcher.wait_for(lambda w: iid in {i.id for i in w.instances(service)})


async def test_calls_are_balanced_over_up_instances(watcher: Watcher, upstream: Upstreams) -> None:
    await upstream("customers", "a", echo("a"))
    await upstream("customers", "b", echo("b"))
    calls = Calls(watcher)
    try:
        seen = [(await calls.get("customers", "/customers/42?x=1")).json() for _ in range(6)]
    finally:
        await calls.close()
    assert sorted(r["instance"] for r in seen) == ["a", "a", "a", "b", "b", "b"]
    assert {r["path"] for r in seen} == {"/customers/42?x=1"}


async def test_request_id_and_authorization_are_passed_on(
    watcher: Watcher, upstream: Upstreams, aiohttp_client: Callable[..., Awaitable[Client]]
) -> None:
    await upstream("customers", "a", echo("a"))
    calls = Calls(watcher)

    async def front(request: web.Request) -> web.Response:
        answer = await calls.post("customers", "/customers", json={"name": "Ada"})
        return web.json_response(answer.json())

    app = web.Application(middlewares=[forwarding_middleware, problem_middleware])
    app.router.add_get("/front", front)
    client = await aiohttp_client(app)
    try:
        resp = await client.get(
            "/front", headers={"X-Request-ID": "req-1", "Authorization": "Bearer t"}
        )
        body = await resp.json()
        assert resp.headers["X-Request-ID"] == "req-1"
        assert body["request_id"] == "req-1"
        assert body["auth"] == "Bearer t"
        assert body["body"] == '{"name":"Ada"}'
        # Without one, an id is generated, passed on and returned.
        resp = await client.get("/front")
        generated = resp.headers["X-Request-ID"]
        assert len(generated) == 32
        assert (await resp.json())["request_id"] == generated
    finally:
        await calls.close()


async def test_a_connect_failure_is_retried_on_another_instance_for_any_method(
    redis: Redis, watcher: Watcher, upstream: Upstreams
) -> None:
    await upstream("billing", "live", echo("live"))
    await register_dead(redis, watcher, "billing", "dead")
    calls = Calls(watcher)
    try:
        answers = [await calls.post("billing", "/bills", json={}) for _ in range(6)]
    finally:
        await calls.close()
    assert {a.status for a in answers} == {200}
    assert {a.instance for a in answers} == {"live"}
    assert calls.upstreams["billing"].failure_counts["connect"] >= 1


async def test_no_instance_up_is_503(watcher: Watcher) -> None:
    calls = Calls(watcher)
    with pytest.raises(ServiceUnavailable) as info:
        await calls.get("nobody", "/")
    assert info.value.status == 503
    assert "no service named 'nobody'" in info.value.detail
    await calls.close()


async def test_all_instances_unreachable_is_502(redis: Redis, watcher: Watcher) -> None:
    await register_dead(redis, watcher, "inventory", "d1")
    await register_dead(redis, watcher, "inventory", "d2")
    calls = Calls(watcher)
    with pytest.raises(BadGateway) as info:
        await calls.get("inventory", "/products")
    assert info.value.status == 502
    await calls.close()


async def test_a_slow_instance_times_out_with_504(watcher: Watcher, upstream: Upstreams) -> None:
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="late")

    await upstream("inventory", "slow", slow)
    calls = Calls(watcher, timeouts=Timeouts(connect=1, per_try=0.2, total=0.5))
    try:
        with pytest.raises(GatewayTimeout):
            await calls.post("inventory", "/products", json={})
    finally:
        release.set()
        await calls.close()


async def test_idempotent_503_is_retried_and_post_is_not(
    watcher: Watcher, upstream: Upstreams
) -> None:
    hits = {"sick": 0, "well": 0}

    async def sick(request: web.Request) -> web.Response:
        hits["sick"] += 1
        return web.Response(status=503, text="busy")

    async def well(request: web.Request) -> web.Response:
        hits["well"] += 1
        return web.Response(text="ok")

    await upstream("stock", "sick", sick)
    await upstream("stock", "well", well)
    calls = Calls(watcher)
    try:
        gets = [await calls.get("stock", "/") for _ in range(4)]
        assert {g.status for g in gets} == {200}
        posts = [await calls.post("stock", "/", json={}) for _ in range(4)]
        assert sorted(p.status for p in posts) == [200, 200, 503, 503]
    finally:
        await calls.close()


async def test_an_open_breaker_answers_503_with_retry_after_at_once(
    watcher: Watcher, upstream: Upstreams
) -> None:
    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=500)

    await upstream("fragile", "x", broken)
    policy = UpstreamPolicy(
        breaker=BreakerPolicy(
            sliding_window_size=4, minimum_number_of_calls=4, wait_duration_in_open_state=30
        ),
        retry=RetryPolicy(attempts=1),
    )
    calls = Calls(watcher, policy=policy)
    try:
        for _ in range(4):
            assert (await calls.get("fragile", "/")).status == 500
        with pytest.raises(ServiceUnavailable) as info:
            await calls.get("fragile", "/")
        assert "circuit breaker" in info.value.detail
        assert 1 <= int(info.value.headers["Retry-After"]) <= 30
    finally:
        await calls.close()


async def test_a_new_instance_is_used_without_restart(
    watcher: Watcher, upstream: Upstreams
) -> None:
    await upstream("customers", "a", echo("a"))
    calls = Calls(watcher)
    try:
        assert (await calls.get("customers", "/")).instance == "a"
        await upstream("customers", "b", echo("b"))
        seen = {(await calls.get("customers", "/")).instance for _ in range(4)}
        assert seen == {"a", "b"}
    finally:
        await calls.close()


async def test_a_truncated_answer_is_a_reset_retried_for_get(
    redis: Redis, watcher: Watcher, upstream: Upstreams
) -> None:
    async def truncate(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")
        await writer.drain()
        writer.close()

    liar = await asyncio.start_server(truncate, "127.0.0.1", 0)
    port = liar.sockets[0].getsockname()[1]
    await RegistryStore(redis).register(
        Instance(service="stock", id="liar", host="127.0.0.1", port=port, ttl=60)
    )
    await upstream("stock", "honest", echo("honest"))
    await watcher.wait_for(lambda w: len(w.instances("stock")) == 2)
    calls = Calls(watcher)
    try:
        answers = [await calls.get("stock", "/") for _ in range(4)]
        assert {a.instance for a in answers} == {"honest"}
        assert calls.upstreams["stock"].failure_counts["reset"] >= 1
        # Not retried for POST (it may have been handled): the liar's share fails.
        outcomes = [await _post_outcome(calls) for _ in range(4)]
        assert sorted(outcomes) == ["502", "502", "ok", "ok"]
    finally:
        await calls.close()
        liar.close()
        await liar.wait_closed()


async def _post_outcome(calls: Calls) -> str:
    try:
        await calls.post("stock", "/", json={})
    except BadGateway:
        return "502"
    return "ok"


async def test_a_marked_dependency_failure_is_returned_not_retried_not_held_against_it(
    watcher: Watcher, upstream: Upstreams
) -> None:
    hits = {"a": 0, "b": 0}

    def failing(name: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            hits[name] += 1
            return web.Response(status=503, headers={"essaim-failure": "Dependency"})

        return handler

    await upstream("billing", "a", failing("a"))
    await upstream("billing", "b", failing("b"))
    policy = UpstreamPolicy(breaker=BreakerPolicy(sliding_window_size=4, minimum_number_of_calls=4))
    calls = Calls(watcher, policy=policy)
    try:
        answers = [await calls.get("billing", "/") for _ in range(10)]
        assert {a.status for a in answers} == {503}
        assert hits["a"] + hits["b"] == 10  # one attempt each: not retried
        up = calls.upstreams["billing"]
        assert up.breaker.describe()["state"] == "CLOSED"
        assert up.dependency_failures == 10
        assert up.failure_counts["5xx"] == 0
    finally:
        await calls.close()


async def test_a_failed_call_escaping_a_handler_answers_a_marked_503(
    redis: Redis, watcher: Watcher, aiohttp_client: Callable[..., Awaitable[Client]]
) -> None:
    await register_dead(redis, watcher, "inventory", "gone")
    calls = Calls(watcher, timeouts=Timeouts(connect=0.5, per_try=1, total=2))

    async def front(request: web.Request) -> web.Response:
        answer = await calls.get("inventory", "/products/1")  # BadGateway escapes
        return web.json_response(answer.json())

    app = web.Application(middlewares=[problem_middleware, dependency_middleware])
    app.router.add_get("/front", front)
    client = await aiohttp_client(app)
    try:
        resp = await client.get("/front")
        assert resp.status == 503
        assert resp.headers["Essaim-Failure"] == "dependency"
        assert resp.headers["Retry-After"] == "1"
        problem = await resp.json(content_type=None)
        assert problem["type"] == "urn:essaim:problem:dependency-unavailable"
        assert problem["dependency"] == "inventory"
        assert "inventory GET /products/1" in problem["detail"]
    finally:
        await calls.close()
