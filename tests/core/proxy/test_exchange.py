"""Upstream behaviour of one request: errors, retries, timeouts, breaker, ejection, budget.

Every upstream is a real server on loopback; discovery cases use the private
Redis and a real watcher.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest_asyncio
from aiohttp import web

from core.redis import Redis, connect
from core.registry.discovery import Registration, Watcher
from core.registry.store import Instance
from core.routes.table import Timeouts
from core.testing import free_port, wait_until
from core.upstream.breaker import BreakerPolicy
from core.upstream.outlier import OutlierPolicy
from core.upstream.retry import RetryPolicy
from core.upstream.upstream import UpstreamPolicy
from tests.core.proxy.conftest import GatewayFactory, Server, Upstreams, raw_exchange


def counting_app(status: int = 200, body: bytes = b"ok") -> tuple[web.Application, list[bytes]]:
    """An upstream answering ``status``; it records the bodies it received."""
    received: list[bytes] = []

    async def handle(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.Response(status=status, body=body)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app, received


async def reset_after_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read a request head, then drop the connection without answering."""
    await reader.readuntil(b"\r\n\r\n")
    writer.transport.abort()


def urls(*servers: Server | str) -> list[str]:
    return [s if isinstance(s, str) else s.url for s in servers]


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


async def send(url: str, method: str = "GET", data: bytes | None = None) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as session, session.request(method, url, data=data) as r:
        return r.status, await r.read()


# ----------------------------------------------------------------------------- errors and retries


async def test_connect_failure_is_retried_on_another_instance_for_any_method(
    upstreams: Upstreams, gateway: GatewayFactory
) -> None:
    app, received = counting_app()
    live = await upstreams.app(app)
    gw = await gateway([{"id": "r", "prefix": "/", "urls": urls(dead_url(), live)}])
    for method in ("POST", "PATCH", "GET"):
        for _ in range(4):
            assert await send(gw.url + "/x", method, b"payload") == (200, b"ok")
    assert received == [b"payload"] * 12
    stats = gw.proxy.stats
    assert stats.upstream_errors[("route:r", "connect")] >= 1
    assert stats.retries[("route:r", "connect")] >= 1


async def test_every_instance_refusing_is_502_problem(gateway: GatewayFactory) -> None:
    gw = await gateway([{"id": "r", "prefix": "/", "urls": urls(dead_url(), dead_url())}])
    async with aiohttp.ClientSession() as session, session.get(gw.url + "/x") as resp:
        assert resp.status == 502
        assert resp.headers["Content-Type"] == "application/problem+json"
        problem = await resp.json(content_type=None)
    assert problem["status"] == 502
    assert "cannot connect" in problem["detail"]
    assert problem["instance"] == "/x"
    assert problem["request_id"] == resp.headers["X-Request-ID"]


async def test_503_is_retried_elsewhere_for_get_but_passed_on_for_post(
    upstreams: Upstreams, gateway: GatewayFactory
) -> None:
    bad_app, bad_got = counting_app(503, b"busy")
    good_app, good_got = counting_app()
    bad, good = await upstreams.app(bad_app), await upstreams.app(good_app)
    gw = await gateway([{"id": "r", "prefix": "/", "urls": urls(bad, good)}])
    for _ in range(6):
        assert await send(gw.url + "/x") == (200, b"ok")
    post_statuses = [(await send(gw.url + "/x", "POST", b"p"))[0] for _ in range(6)]
    # Round robin sends every other POST to the failing instance: its 503 reaches the client.
    assert sorted(set(post_statuses)) == [200, 503]
    retries = gw.proxy.stats.retries[("route:r", "5xx")]
    assert retries >= 3
    assert len(good_got) == 6 + post_statuses.count(200)
    # The failing instance saw each retried GET once and each failed POST.
    assert len(bad_got) == retries + post_statuses.count(503)


async def test_reset_before_answer_is_retried_for_get_and_502_for_post(
    upstreams: Upstreams, gateway: GatewayFactory
) -> None:
    resetter = await upstreams.raw(reset_after_request)
    good_app, _ = counting_app()
    good = await upstreams.app(good_app)
    gw = await gateway([{"id": "r", "prefix": "/", "urls": urls(resetter, good)}])
    for _ in range(4):
        assert await send(gw.url + "/x") == (200, b"ok")
    post_statuses = {(await send(gw.url + "/x", "POST", b"p"))[0] for _ in range(4)}
    assert post_statuses == {200, 502}


class KeepAliveUpstream:
    """A raw upstream that answers with keep-alive, or drops a connection under a request.

    ``answers(conn, nth)`` decides for the ``nth`` request (1-based) of
    connection number ``conn`` (1-based): True answers 200, False reads the
    request and closes without answering, as a server closing an idle
    keep-alive connection just as a request arrives looks to its client.
    ``seen`` records ``(conn, method, path)`` of every request read.
    """

    def __init__(self, answers: Callable[[int, int], bool]) -> None:
        self.answers = answers
        self.seen: list[tuple[int, str, str]] = []
        self.connections = 0

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = self.connections
        nth = 0
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ")
            length = next(
                (
                    int(line.split(":")[1])
                    for line in lines
                    if line.lower().startswith("content-length:")
                ),
                0,
            )
            await reader.readexactly(length)
            nth += 1
            self.seen.append((conn, method, path))
            if not self.answers(conn, nth):
                writer.transport.abort()
                return
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()


async def test_a_reused_connection_lost_before_answering_is_sent_again_on_a_new_one(
    upstreams: Upstreams, gateway: GatewayFactory
) -> None:
    # Each connection answers its first request and is dropped under the next one.
    upstream = KeepAliveUpstream(lambda conn, nth: nth == 1)
    up = await upstreams.raw(upstream)
    # One instance and no retries: the request is not a retry, the failure not the instance's.
    gw = await gateway([{"id": "r", "prefix": "/", "urls": urls(up), "retry": {"attempts": 1}}])
    async with aiohttp.ClientSession() as session:
        for path in ("/a", "/b", "/c"):
            async with session.get(gw.url + path) as resp:
                assert (resp.status, await resp.read()) == (200, b"ok")
        # A POST is not sent twice: the client gets the failure.
        async with session.post(gw.url + "/d", data=b"payload") as resp:
            assert resp.status == 502
            assert "closed the connection before answering" in (await resp.json())["detail"]
    assert upstream.seen == [
        (1, "GET", "/a"), (1, "GET", "/b"), (2, "GET", "/b"), (2, "GET", "/c"),
        (3, "GET", "/c"), (3, "POST", "/d"),
    ]  # fmt: skip
    stats = gw.proxy.stats
    assert stats.retries == {("route:r", "stale"): 2}
    assert stats.upstream_errors == {("route:r", "reset"): 1}  # the POST's only
    [endpoint] = gw.router.upstreams()[0].endpoints.values()
    assert endpoint.failures == 1
    assert endpoint.outstanding == 0


async def test_a_request_is_sent_again_on_a_new_connection_once_only(
    upstreams: Upstreams, gateway: GatewayFactory
) -> None:
    # Only the very first request is answered: the new connection fails too.
    upstream = KeepAliveUpstream(lambda conn, nth: conn == 1 and nth == 1)
    up = await upstreams.raw(upstream)
    gw = await gateway([{"id": "r", "prefix": "/", "urls": urls(up), "retry": {"attempts": 1}}])
    async with aiohttp.ClientSession() as session:
        async with session.get(gw.url + "/a") as resp:
            assert resp.status == 200
        async with session.get(gw.url + "/b") as resp:
            assert resp.status == 502
    assert upstream.seen == [(1, "GET", "/a"), (1, "GET", "/b"), (2, "GET", "/b")]
    assert gw.proxy.stats.retries == {("route:r", "stale"): 1}
    assert gw.proxy.stats.upstream_errors == {("route:r", "reset"): 1}


async def test_a_retry_never_goes_back_to_the_instance_that_failed(
    upstreams: Upstreams, gateway: GatewayFactory
) -> None:
    apps = [counting_app(503) for _ in range(3)]
    servers = [await upstreams.app(app) for app, _ in apps]
    gw = await gateway([{"id": "r", "prefix": "/", "urls": urls(*servers)}])
    status, _ = await send(gw.url + "/x")
    assert status == 503  # three attempts, all failed: the last answer is passed on
    assert [len(got) for _, got in apps] == [1, 1, 1]


async def test_small_body_is_sent_again_on_retry_large_body_is_not(
    upstreams: Upstreams, gateway: GatewayFactory
) -> None:
    resetter = await upstreams.raw(reset_after_request)
    good_app, good_got = counting_app()
    good = await upstreams.app(good_app)
    gw = await gateway([{"id": "r", "prefix": "/", "urls": urls(resetter, good)}])
    body = b"b" * 5000
    statuses = [(await send(gw.url + "/x", "PUT", body))[0] for _ in range(4)]
    assert statuses == [200] * 4
    assert good_got == [body] * 4
    big = b"B" * (200 * 1024)  # over the 64 KiB replay buffer: sent once, not kept
    statuses = [(await send(gw.url + "/x", "PUT", big))[0] for _ in range(4)]
    assert sorted(set(statuses)) == [200, 502]


async def test_no_retry_once_the_response_has_begun(
    upstreams: Upstreams, gateway: GatewayFactory
) -> None:
    hits = 0

    async def half_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal hits
        await reader.readuntil(b"\r\n\r\n")
        hits += 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()
        writer.transport.abort()

    one, two = await upstreams.raw(half_answer), await upstreams.raw(half_answer)
    gw = await gateway([{"id": "r", "prefix": "/", "urls": urls(one, two)}])
    raw = await raw_exchange(gw.port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200 OK")
    assert raw.endswith(b"partial")  # cut short: the client can tell
    assert hits == 1
    assert gw.proxy.stats.upstream_errors[("route:r", "reset")] == 1


# ----------------------------------------------------------------------------- timeouts


async def test_upstream_too_slow_is_504_after_per_try_timeouts(
    upstreams: Upstreams, gateway: GatewayFactory
) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await reader.read()  # never answers; ends when the gateway gives up

    slow = await upstreams.raw(silent)
    route = {
        "id": "r",
        "prefix": "/",
        "urls": urls(slow),
        "timeouts": {"connect": 0.2, "per_try": 0.2, "total": 0.5},
    }
    gw = await gateway([route])
    started = time.monotonic()
    async with aiohttp.ClientSession() as session, session.get(gw.url + "/x") as resp:
        assert resp.status == 504
        problem = await resp.json(content_type=None)
    assert problem["status"] == 504
    assert "in time" in problem["detail"]
    assert time.monotonic() - started < 5
    assert gw.proxy.stats.upstream_errors[("route:r", "timeout")] >= 1


async def test_slow_answer_on_one_instance_is_retried_on_another_for_get(
    upstreams: Upstreams, gateway: GatewayFactory
) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await reader.read()  # never answers; ends when the gateway gives up

    slow = await upstreams.raw(silent)
    good_app, _ = counting_app()
    good = await upstreams.app(good_app)
    route = {
        "id": "r",
        "prefix": "/",
        "urls": urls(slow, good),
        "timeouts": {"connect": 0.2, "per_try": 0.3, "total": 2.0},
    }
    gw = await gateway([route])
    for _ in range(2):
        assert await send(gw.url + "/x") == (200, b"ok")


# ----------------------------------------------------------------------------- discovery: breaker, ejection, budget


@pytest_asyncio.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = connect(redis_url)
    yield client
    await client.aclose()


@pytest_asyncio.fixture
async def watcher(redis: Redis) -> AsyncIterator[Watcher]:
    w = Watcher(redis)
    await w.start(wait=5)
    yield w
    await w.stop()


Register = Callable[[str, Server], Awaitable[Registration]]


@pytest_asyncio.fixture
async def register(redis: Redis, watcher: Watcher) -> AsyncIterator[Register]:
    made: list[Registration] = []

    async def add(service: str, server: Server) -> Registration:
        reg = Registration(
            redis, Instance(service, f"{service}-{server.port}", server.host, server.port)
        )
        await reg.start(wait=5)
        made.append(reg)
        await watcher.wait_for(
            lambda w: any(i.port == server.port for i in w.instances(service)), 5
        )
        return reg

    yield add
    for reg in made:
        await reg.stop(deregister=False)


async def test_open_breaker_answers_503_with_retry_after_at_once(
    upstreams: Upstreams, gateway: GatewayFactory, watcher: Watcher, register: Register
) -> None:
    app, received = counting_app(500, b"boom")
    up = await upstreams.app(app)
    await register("billing", up)
    policy = UpstreamPolicy(
        breaker=BreakerPolicy(
            sliding_window_size=4, minimum_number_of_calls=4, wait_duration_in_open_state=30
        ),
        outlier=OutlierPolicy(consecutive_failures=0),
    )
    gw = await gateway(watcher=watcher, policy=policy)
    for _ in range(4):
        assert (await send(gw.url + "/billing/x"))[0] == 500
    assert len(received) == 4
    async with aiohttp.ClientSession() as session, session.get(gw.url + "/billing/x") as resp:
        assert resp.status == 503
        assert 25 <= int(resp.headers["Retry-After"]) <= 30
        problem = await resp.json(content_type=None)
    assert "circuit breaker" in problem["detail"]
    assert len(received) == 4  # the upstream was not called
    assert gw.router.transitions[("billing", "CLOSED", "OPEN")] == 1


async def test_a_dependency_failure_is_passed_on_and_not_held_against_the_upstream(
    upstreams: Upstreams, gateway: GatewayFactory, watcher: Watcher, register: Register
) -> None:
    received: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        received.append(request.method)
        return web.json_response(
            {"type": "urn:essaim:problem:dependency-unavailable", "status": 503},
            status=503,
            headers={"Essaim-Failure": "dependency", "Retry-After": "1"},
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    await register("billing", await upstreams.app(app))
    await register("billing", await upstreams.app(app))
    policy = UpstreamPolicy(
        breaker=BreakerPolicy(sliding_window_size=4, minimum_number_of_calls=4),
        outlier=OutlierPolicy(consecutive_failures=2),
    )
    gw = await gateway(watcher=watcher, policy=policy)
    for _ in range(10):
        async with aiohttp.ClientSession() as session, session.get(gw.url + "/billing/x") as resp:
            assert resp.status == 503
            assert resp.headers["Essaim-Failure"] == "dependency"
    assert len(received) == 10  # each passed on as it came: not retried
    upstream = gw.router.describe_upstreams()["upstreams"][0]
    assert upstream["breaker"]["state"] == "CLOSED"
    assert upstream["breaker"]["failed_calls"] == 0
    assert [e["ejected"] for e in upstream["endpoints"]] == [False, False]
    assert upstream["dependency_failures"] == 10
    assert gw.proxy.stats.upstream_errors[("billing", "dependency")] == 10


async def test_an_unmarked_503_still_counts_against_the_upstream(
    upstreams: Upstreams, gateway: GatewayFactory, watcher: Watcher, register: Register
) -> None:
    # The same 503 without the header (or with another value) is the upstream's own.
    async def handle(request: web.Request) -> web.Response:
        return web.Response(status=503, headers={"Essaim-Failure": "dependency-ish"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    await register("billing", await upstreams.app(app))
    policy = UpstreamPolicy(
        breaker=BreakerPolicy(
            sliding_window_size=4, minimum_number_of_calls=4, wait_duration_in_open_state=30
        ),
        retry=RetryPolicy(attempts=1),
    )
    gw = await gateway(watcher=watcher, policy=policy)
    for _ in range(4):
        assert (await send(gw.url + "/billing/x"))[0] == 503
    upstream = gw.router.describe_upstreams()["upstreams"][0]
    assert upstream["breaker"]["state"] == "OPEN"
    assert upstream["dependency_failures"] == 0


async def test_failing_instance_is_ejected_and_others_take_the_traffic(
    upstreams: Upstreams, gateway: GatewayFactory, watcher: Watcher, register: Register
) -> None:
    bad_app, bad_got = counting_app(500, b"boom")
    good_app, good_got = counting_app()
    await register("inventory", await upstreams.app(bad_app))
    await register("inventory", await upstreams.app(good_app))
    policy = UpstreamPolicy(
        outlier=OutlierPolicy(consecutive_failures=3, base_ejection_time=30),
        breaker=BreakerPolicy(enabled=False),
    )
    gw = await gateway(watcher=watcher, policy=policy)
    statuses = [(await send(gw.url + "/inventory/x"))[0] for _ in range(30)]
    assert len(bad_got) == 3  # ejected after its third consecutive failure
    assert statuses.count(500) == 3
    assert len(good_got) == 27
    upstream = gw.router.describe_upstreams()["upstreams"][0]
    assert [e["ejected"] for e in upstream["endpoints"]].count(True) == 1


async def test_spent_retry_budget_passes_the_failure_on(
    upstreams: Upstreams, gateway: GatewayFactory, watcher: Watcher, register: Register
) -> None:
    bad_app, bad_got = counting_app(503, b"busy")
    good_app, _ = counting_app()
    await register("search", await upstreams.app(bad_app))
    await register("search", await upstreams.app(good_app))
    policy = UpstreamPolicy(
        retry_budget_ratio=0.0,
        retry_budget_min_per_second=0.0,
        breaker=BreakerPolicy(enabled=False),
        outlier=OutlierPolicy(consecutive_failures=0),
    )
    gw = await gateway(watcher=watcher, policy=policy, retry=RetryPolicy(attempts=3))
    statuses = [(await send(gw.url + "/search/x"))[0] for _ in range(6)]
    assert statuses.count(503) == 3  # no budget: the 503s were not retried
    assert len(bad_got) == 3


async def test_unknown_service_is_404_and_bad_path_400(
    gateway: GatewayFactory, watcher: Watcher
) -> None:
    gw = await gateway(watcher=watcher, timeouts=Timeouts())
    async with aiohttp.ClientSession() as session:
        async with session.get(gw.url + "/nobody/here") as resp:
            assert resp.status == 404
            assert (await resp.json(content_type=None))["title"] == "Not Found"
        async with session.get(gw.url + "/") as resp:
            assert resp.status == 404


async def test_client_leaving_mid_request_releases_the_upstream_and_counts_499(
    upstreams: Upstreams, gateway: GatewayFactory
) -> None:
    arrived = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        arrived.set()
        await reader.read()

    up = await upstreams.raw(silent)
    gw = await gateway([{"id": "r", "prefix": "/", "urls": urls(up)}])
    _, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n")
    await writer.drain()
    await asyncio.wait_for(arrived.wait(), 5)
    upstream = gw.router.upstreams()[0]
    [endpoint] = upstream.endpoints.values()
    assert endpoint.outstanding == 1
    writer.close()
    await wait_until(lambda: endpoint.outstanding == 0, 5, message="attempt released")
    assert gw.proxy.stats.requests == {("r", "route:r", 499): 1}
    assert endpoint.failures == 0  # the client's leaving is no fault of the upstream
    await wait_until(lambda: gw.proxy.pool.open == 0, 5, message="upstream connection closed")
