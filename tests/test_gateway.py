"""The gateway as a process: flags, discovery routing, hot reload, Redis away, admin, load."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

import gateway
from core.discovery import Registration
from core.redis import connect
from core.registry_store import Instance
from core.testing import Component, ComponentFactory, free_port, wait_until


@dataclasses.dataclass
class Running:
    """A gateway process: its traffic URL and admin URL."""

    comp: Component
    admin_port: int

    @property
    def url(self) -> str:
        return self.comp.url

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"


StartGateway = Callable[..., Awaitable[Running]]


@pytest.fixture
def start_gateway(components: ComponentFactory) -> StartGateway:
    async def start(redis_url: str, *args: str) -> Running:
        admin = free_port()
        comp = await components.start(
            "gateway",
            "--host", "127.0.0.1",
            "--admin-port", str(admin),
            "--redis-url", redis_url,
            "--shutdown-timeout", "3",
            *args,
            health_port=admin,
        )  # fmt: skip
        return Running(comp, admin)

    return start


class Upstream:
    """An aiohttp server on a free port that says who it is, registrable as an instance."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = 0
        self.hits = 0
        self.runner: web.AppRunner | None = None

    async def start(self) -> Upstream:
        async def hello(request: web.Request) -> web.Response:
            self.hits += 1
            return web.json_response(
                {
                    "instance": self.name,
                    "path": request.path_qs,
                    "prefix": request.headers.get("X-Forwarded-Prefix"),
                }
            )

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", hello)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", self.port)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    def instance(self, service: str, ttl: int = 10) -> Instance:
        return Instance(service, self.name, "127.0.0.1", self.port, ttl=ttl)


@pytest_asyncio.fixture
async def upstream_factory() -> AsyncIterator[Callable[[str], Awaitable[Upstream]]]:
    made: list[Upstream] = []

    async def make(name: str) -> Upstream:
        up = await Upstream(name).start()
        made.append(up)
        return up

    yield make
    for up in made:
        await up.stop()


@pytest_asyncio.fixture
async def registrations(
    redis_url: str,
) -> AsyncIterator[Callable[[Instance], Awaitable[Registration]]]:
    client = connect(redis_url)
    made: list[Registration] = []

    async def register(instance: Instance) -> Registration:
        reg = Registration(client, instance)
        await reg.start(wait=5)
        assert reg.registered.is_set()
        made.append(reg)
        return reg

    yield register
    for reg in made:
        await reg.stop(deregister=False)
    await client.aclose()


async def get_json(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url) as resp:
        return resp.status, await resp.json(content_type=None)


# ----------------------------------------------------------------------------- flags


def test_help_documents_every_flag() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "--help"],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    ).stdout
    for field in dataclasses.fields(gateway.Settings):
        flag = "--" + field.name.replace("_", "-")
        assert flag in out, flag
        assert f"GATEWAY_{field.name.upper()}" in out or field.name == "redis_url"
    assert "REDIS_URL" in out


def test_a_malformed_flag_exits_2_naming_it() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "--max-body", "lots"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.returncode == 2
    assert "--max-body" in proc.stderr


# ----------------------------------------------------------------------------- discovery


async def test_discovery_routes_follow_the_registry_without_restart(
    redis_url: str,
    start_gateway: StartGateway,
    upstream_factory: Callable[[str], Awaitable[Upstream]],
    registrations: Callable[[Instance], Awaitable[Registration]],
) -> None:
    a = await upstream_factory("a")
    reg_a = await registrations(a.instance("billing"))
    gw = await start_gateway(redis_url)
    async with aiohttp.ClientSession() as session:
        status, body = await get_json(session, gw.url + "/billing/invoices/7?x=1")
        assert status == 200
        assert body == {"instance": "a", "path": "/invoices/7?x=1", "prefix": "/billing"}

        status, body = await get_json(session, gw.url + "/nosuch/x")
        assert status == 404
        assert body["status"] == 404
        assert "nosuch" in body["detail"]

        # A new instance gets traffic without a restart.
        b = await upstream_factory("b")
        await registrations(b.instance("billing"))

        async def both_answer() -> bool:
            seen = {
                (await get_json(session, gw.url + "/billing/"))[1]["instance"] for _ in range(6)
            }
            return seen == {"a", "b"}

        await wait_until(both_answer, 10, message="both instances in rotation")

        # An instance gone (deregistered) gets no more traffic.
        await reg_a.stop(deregister=True)

        async def only_b() -> bool:
            seen = {
                (await get_json(session, gw.url + "/billing/"))[1]["instance"] for _ in range(6)
            }
            return seen == {"b"}

        await wait_until(only_b, 10, message="a out of rotation")


async def test_known_service_without_up_instance_is_503_with_retry_after(
    redis_url: str,
    start_gateway: StartGateway,
    upstream_factory: Callable[[str], Awaitable[Upstream]],
    registrations: Callable[[Instance], Awaitable[Registration]],
) -> None:
    a = await upstream_factory("a")
    reg = await registrations(a.instance("billing"))
    await reg.set_status("OUT_OF_SERVICE")
    gw = await start_gateway(redis_url)
    async with aiohttp.ClientSession() as session, session.get(gw.url + "/billing/x") as resp:
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "1"
        assert resp.headers["Content-Type"] == "application/problem+json"
        assert (await resp.json(content_type=None))["status"] == 503
