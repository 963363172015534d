"""Rate limit modes across gateway processes sharing one Redis: exact stays exact, synced holds its bound.

Two gateways of two workers each (N = 4 processes deciding on one key, the
client address) take continuous requests on a route limited to ``RATE``
requests a second with bursts of ``BURST``. An exact limiter admits at most
``BURST + RATE * T`` over T seconds; the synced mode's documented bound
(core/security/synced.py) adds ``(N - 1) * (BURST + RATE * d)``, d being one
sync interval plus a round trip: taken here as 0.25 s, generous for a busy
machine where the sync loop runs late.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from core.testing import Component, ComponentFactory, free_port

RATE = 20
BURST = 10
SECONDS = 3.0
PROCESSES = 4
D = 0.25


@pytest_asyncio.fixture
async def echo() -> AsyncIterator[int]:
    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"path": request.path_qs})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield int(runner.addresses[0][1])
    await runner.cleanup()


async def two_gateways(
    components: ComponentFactory, redis_url: str, echo: int, tmp_path: Path
) -> list[Component]:
    routes = tmp_path / "routes.toml"
    limit = f"replenish_rate = {RATE}, burst_capacity = {BURST}"
    routes.write_text(
        f'[[routes]]\nid = "exact"\nprefix = "/exact"\nurls = ["http://127.0.0.1:{echo}"]\n'
        f"rate_limit = {{ {limit} }}\n\n"
        f'[[routes]]\nid = "synced"\nprefix = "/synced"\nurls = ["http://127.0.0.1:{echo}"]\n'
        f'rate_limit = {{ {limit}, mode = "synced" }}\n'
    )
    gateways = []
    for _ in range(2):
        admin = free_port()
        gw = await components.start(
            "gateway",
            "--host", "127.0.0.1", "--admin-port", str(admin), "--redis-url", redis_url,
            "--routes", str(routes), "--workers", str(PROCESSES // 2),
            health_port=admin,
            timeout=60,
        )  # fmt: skip
        gateways.append(gw)
    return gateways


async def hammer(urls: list[str], seconds: float) -> tuple[int, int, list[str], float]:
    """Requests from 4 clients per URL for ``seconds``: (admitted, refused, others, elapsed)."""
    admitted = refused = 0
    others: list[str] = []
    deadline = time.monotonic() + seconds
    start = time.monotonic()
    async with aiohttp.ClientSession() as session:

        async def client(url: str) -> None:
            nonlocal admitted, refused
            sent = 0
            while time.monotonic() < deadline and sent < 5000:
                sent += 1
                async with session.get(url) as resp:
                    await resp.read()
                    if resp.status == 200:
                        admitted += 1
                    elif resp.status == 429:
                        refused += 1
                    else:
                        others.append(str(resp.status))

        await asyncio.gather(*(client(u) for u in urls for _ in range(4)))
    return admitted, refused, others, time.monotonic() - start


@pytest.mark.parametrize("mode", ["exact", "synced"])
async def test_two_gateways_on_one_redis_hold_the_limit_of_the_mode(
    components: ComponentFactory, redis_url: str, echo: int, tmp_path: Path, mode: str
) -> None:
    gateways = await two_gateways(components, redis_url, echo, tmp_path)
    admitted, refused, others, elapsed = await hammer(
        [f"{gw.url}/{mode}/x" for gw in gateways], SECONDS
    )
    exact_bound = BURST + RATE * elapsed
    print(
        f"{mode}: {admitted} admitted, {refused} refused in {elapsed:.2f}s (exact bound {exact_bound:.0f})"
    )
    assert others == []
    assert refused > admitted  # the load was well over the limit
    if mode == "exact":
        assert admitted <= exact_bound + 1
    else:
        assert admitted <= exact_bound + (PROCESSES - 1) * (BURST + RATE * D)
    # ... and the limit does not starve the route either.
    assert admitted >= 0.5 * exact_bound
