"""Two gateway processes sharing one Redis: one rate limit, one routing view.

Gateways keep no shared state of their own: each decides a rate limit with
the same script on the same bucket, and each follows the registry through
its own subscription. Runs on every Redis topology (``make test-sentinel``,
``make test-cluster``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from core.redis import connect
from core.registry.store import Instance, RegistryStore
from core.testing import Component, ComponentFactory, free_port, wait_until

ROUTES = """
[[routes]]
id = "limited"
prefix = "/limited"
urls = ["http://127.0.0.1:{port}"]
auth = "public"
# 60 tokens, 6 a request: 10 requests pass, and the next needs 6 s of refill.
rate_limit = {{ replenish_rate = 1, burst_capacity = 60, requested_tokens = 6 }}
"""


@pytest.fixture
async def echo() -> AsyncIterator[int]:
    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"path": request.path})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield port
    await runner.cleanup()


async def two_gateways(
    components: ComponentFactory, redis_url: str, routes: Path
) -> list[Component]:
    async def one() -> Component:
        admin = free_port()
        return await components.start(
            "gateway",
            "--host", "127.0.0.1", "--admin-port", str(admin), "--redis-url", redis_url,
            "--routes", str(routes), "--shutdown-timeout", "3",
            health_port=admin,
        )  # fmt: skip

    return list(await asyncio.gather(one(), one()))


async def status(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url) as resp:
        await resp.read()
        return resp.status


async def test_two_gateways_share_one_rate_limit_exactly(
    components: ComponentFactory, redis_url: str, echo: int, tmp_path: Path
) -> None:
    routes = tmp_path / "routes.toml"
    routes.write_text(ROUTES.format(port=echo))
    gateways = await two_gateways(components, redis_url, routes)
    async with aiohttp.ClientSession() as session:
        # 30 requests from one address, alternating between the two gateways.
        urls = [f"{gateways[i % 2].url}/limited/x" for i in range(30)]
        statuses = await asyncio.gather(*(status(session, u) for u in urls))
    by_gateway = [sorted(statuses[i::2]) for i in range(2)]
    assert sorted(statuses) == [200] * 10 + [429] * 20, by_gateway
    # Both took part: the bucket is shared, not one per gateway.
    assert all(200 in s or 429 in s for s in by_gateway)


async def test_two_gateways_converge_on_a_registry_change_as_fast_as_one(
    components: ComponentFactory, redis_url: str, echo: int, tmp_path: Path
) -> None:
    routes = tmp_path / "routes.toml"
    routes.write_text("routes = []\n")
    gateways = await two_gateways(components, redis_url, routes)
    redis = connect(redis_url)
    store = RegistryStore(redis)
    try:
        async with aiohttp.ClientSession() as session:
            # A known service with no instance yet: both answer 503.
            await store.register(Instance("echo", "warm", "127.0.0.1", 9, ttl=30))
            await store.deregister("echo", "warm")
            await wait_until(
                lambda: _all(session, gateways, 503), 10, 0.01, "both gateways know the service"
            )
            seen: list[float] = []

            async def routed(gateway: Component, started: float) -> None:
                await wait_until(
                    lambda: _is(session, gateway, 200), 5, 0.005, f"{gateway.url} routes echo"
                )
                seen.append(time.monotonic() - started)

            started = time.monotonic()
            await store.register(Instance("echo", "e1", "127.0.0.1", echo, ttl=30))
            await asyncio.gather(*(routed(g, started) for g in gateways))
            # Each gateway applies the change from its own subscription: both
            # within what one gateway takes (the registry's push, milliseconds).
            assert max(seen) < 1.0, seen

            seen.clear()

            async def unrouted(gateway: Component, started: float) -> None:
                await wait_until(
                    lambda: _is(session, gateway, 503), 5, 0.005, f"{gateway.url} drops echo"
                )
                seen.append(time.monotonic() - started)

            started = time.monotonic()
            await store.deregister("echo", "e1")
            await asyncio.gather(*(unrouted(g, started) for g in gateways))
            assert max(seen) < 1.0, seen
            print(
                f"both gateways stopped routing to a deregistered instance within {max(seen) * 1000:.0f} ms"
            )
    finally:
        await redis.aclose()


async def _is(session: aiohttp.ClientSession, gateway: Component, expected: int) -> bool:
    return await status(session, f"{gateway.url}/echo/ping") == expected


async def _all(session: aiohttp.ClientSession, gateways: list[Component], expected: int) -> bool:
    return all([await _is(session, g, expected) for g in gateways])
