"""Eureka clients nobody here wrote, against real processes on loopback.

py-eureka-client (PyPI) registers, heartbeats, discovers an Essaim-native
service and deregisters; eureka-js-client (npm, installed by
:mod:`tests.npm`) registers a Node.js service that the gateway then routes
to. Both go through HTTP Basic with the registry's token in the service URL,
as their users write it.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis

from core.registry.store import EVENTS_KEY
from core.testing import ComponentFactory, free_port, wait_until
from tests import npm

TOKEN = "t0ken"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


async def line(proc: asyncio.subprocess.Process, timeout: float = 15.0) -> str:
    """The process's next line of output; fails with what it said when it ends first."""
    assert proc.stdout is not None
    raw = await asyncio.wait_for(proc.stdout.readline(), timeout)
    if not raw:
        rest = await proc.stderr.read() if proc.stderr else b""
        raise AssertionError(f"the client exited ({await proc.wait()}): {rest.decode()[-2000:]}")
    return raw.decode().strip()


async def instances(http: aiohttp.ClientSession, base: str, service: str) -> list[dict[str, str]]:
    async with http.get(f"{base}/v1/services/{service}?all=1") as resp:
        if resp.status == 404:
            return []
        return list((await resp.json())["instances"])


async def event_types(redis_url: str, instance_id: str) -> list[str]:
    """The types of the registry's retained events about ``instance_id``, oldest first."""
    r = aioredis.Redis.from_url(redis_url)
    try:
        entries = await r.xrange(EVENTS_KEY)
    finally:
        await r.aclose()
    events = [orjson.loads(fields[b"e"]) for _, fields in entries]
    return [e["type"] for e in events if e["instance"]["id"] == instance_id]


async def test_py_eureka_client_registers_heartbeats_discovers_and_deregisters(
    components: ComponentFactory, redis_url: str, http: aiohttp.ClientSession
) -> None:
    registry, native = await asyncio.gather(
        components.start("registry", "--redis-url", redis_url, "--token", TOKEN),
        components.start("tests.upstream_server", "--name", "native-1"),
    )
    resp = await http.put(
        f"{registry.url}/v1/services/natsvc/instances/n1",
        json={"host": "127.0.0.1", "port": native.port, "ttl": 60},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert resp.status == 201
    port = free_port()
    url = f"http://eureka:{TOKEN}@127.0.0.1:{registry.port}/eureka/"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.eureka_py_client", url, "pyclient", str(port),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    assert proc.stdin is not None
    try:
        assert await line(proc) == "registered"
        iid = f"127.0.0.1:pyclient:{port}"
        [inst] = await instances(http, registry.url, "pyclient")
        assert (inst["id"], inst["status"], inst["ttl"]) == (iid, "UP", 3)
        assert inst["metadata"]["language"] == "python"

        # Heartbeats: the renewal time moves on, twice, and the 3 s lease never lapses.
        beats: set[str] = set()

        async def renewed() -> bool:
            for i in await instances(http, registry.url, "pyclient"):
                beats.add(i.get("last_heartbeat", ""))
            return len(beats) >= 3

        await wait_until(renewed, 10, 0.2, "two heartbeats from py-eureka-client")
        assert await event_types(redis_url, iid) == ["register"]

        # Discovery of a service registered natively, through the client's own balancer.
        proc.stdin.write(b"call NATSVC /hello\n")
        answer = await line(proc)
        assert "native-1" in answer, answer
        assert "/hello" in answer, answer

        proc.stdin.write(b"stop\n")
        assert await line(proc) == "stopped"
        assert await asyncio.wait_for(proc.wait(), 10) == 0
        assert "deregister" in await event_types(redis_url, iid)
        assert await instances(http, registry.url, "pyclient") == []
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_eureka_js_client_registers_and_is_routed_to_through_the_gateway(
    components: ComponentFactory, redis_url: str, http: aiohttp.ClientSession
) -> None:
    modules = npm.node_modules()
    admin = free_port()
    registry, gateway = await asyncio.gather(
        components.start("registry", "--redis-url", redis_url, "--token", TOKEN),
        components.start(
            "gateway", "--host", "127.0.0.1", "--admin-port", str(admin), "--redis-url", redis_url,
            "--shutdown-timeout", "3", health_port=admin,
        ),
    )  # fmt: skip
    port = free_port()
    url = f"http://eureka:{TOKEN}@127.0.0.1:{registry.port}/eureka/apps/"
    proc = await asyncio.create_subprocess_exec(
        npm.node(), str(ROOT / "tests" / "js" / "eureka_service.js"), url, "jsapp", str(port),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "NODE_PATH": str(modules)},
    )  # fmt: skip
    try:
        said = await line(proc)
        assert said.startswith("registered"), said
        assert "JSAPP" in said  # its own registry fetch sees itself, upper-cased
        [inst] = await instances(http, registry.url, "jsapp")
        assert (inst["host"], inst["port"], inst["status"]) == ("127.0.0.1", port, "UP")

        async def routed() -> bool:
            async with http.get(f"{gateway.url}/jsapp/hello?x=1") as resp:
                return resp.status == 200 and (await resp.json())["from"] == "node"

        await wait_until(routed, 10, 0.1, "the gateway routes /jsapp to the Node.js service")
        async with http.get(f"{gateway.url}/jsapp/hello?x=1") as resp:
            assert (await resp.json())["path"] == "/hello?x=1"

        # An OUT_OF_SERVICE override (Eureka's way) takes it out of the gateway's routing,
        # whatever its heartbeats say, until the override is removed.
        status_url = f"{registry.url}/eureka/apps/JSAPP/127.0.0.1:jsapp:{port}/status"
        basic = {"Authorization": "Basic " + base64.b64encode(f"eureka:{TOKEN}".encode()).decode()}
        async with http.put(status_url + "?value=OUT_OF_SERVICE", headers=basic) as resp:
            assert resp.status == 200

        async def unrouted() -> bool:
            async with http.get(f"{gateway.url}/jsapp/hello") as resp:
                return resp.status == 503

        await wait_until(unrouted, 5, 0.1, "the gateway stops routing to an OUT_OF_SERVICE one")
        async with http.delete(status_url, headers=basic) as resp:
            assert resp.status == 200
        await wait_until(routed, 5, 0.1, "the gateway routes to it again")

        # Heartbeats keep it past its 3 s lease.
        first = (await instances(http, registry.url, "jsapp"))[0].get("last_heartbeat")

        async def renewed() -> bool:
            now = await instances(http, registry.url, "jsapp")
            return bool(now) and now[0].get("last_heartbeat") != first

        await wait_until(renewed, 5, 0.2, "a heartbeat from eureka-js-client")

        proc.send_signal(signal.SIGTERM)
        assert await line(proc) == "stopped"
        assert await asyncio.wait_for(proc.wait(), 10) == 0
        assert await instances(http, registry.url, "jsapp") == []
        await wait_until(unrouted, 5, 0.1, "the gateway stops routing to it")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
