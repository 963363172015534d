"""The services of examples/ (Node.js, bash) against real registry, gateway and configsvc processes.

Each registers on the native HTTP API, is reached through the gateway,
heartbeats, registers again when the registry forgot it (a 404 heartbeat),
and deregisters on SIGTERM; the Node.js one also follows its config through
configsvc's change stream (its periodic re-read is 30 s away, so only the
push can bring the change within the test's 5 s).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from core.testing import Component, ComponentFactory, free_port, wait_until
from tests import npm

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


def start_system(components: ComponentFactory, redis_url: str) -> list[Awaitable[Component]]:
    """A registry (with a token) and a gateway on one Redis, to start together."""
    admin = free_port()
    return [
        components.start("registry", "--redis-url", redis_url, "--token", TOKEN),
        components.start(
            "gateway", "--host", "127.0.0.1", "--admin-port", str(admin), "--redis-url", redis_url,
            "--shutdown-timeout", "3", health_port=admin,
        ),
    ]  # fmt: skip


async def get_json(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    try:
        async with http.get(url) as resp:
            is_json = resp.content_type == "application/json"
            return resp.status, (await resp.json()) if is_json else None
    except aiohttp.ClientError:
        return 0, None


async def instance_ids(http: aiohttp.ClientSession, registry: Component, service: str) -> list[str]:
    status, body = await get_json(http, f"{registry.url}/v1/services/{service}")
    return [i["id"] for i in body["instances"]] if status == 200 else []


async def spawn(*argv: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, **env}, cwd=ROOT,
    )  # fmt: skip


async def stop(proc: asyncio.subprocess.Process) -> tuple[int, str]:
    """SIGTERM, then its exit code and everything it printed."""
    proc.send_signal(signal.SIGTERM)
    code = await asyncio.wait_for(proc.wait(), 10)
    assert proc.stdout is not None
    return code, (await proc.stdout.read()).decode()


async def forgotten_then_back(
    http: aiohttp.ClientSession, registry: Component, service: str, iid: str
) -> None:
    """Deregister ``iid`` behind its back; its next heartbeat (404) must register it again."""
    async with http.delete(
        f"{registry.url}/v1/services/{service}/instances/{iid}", headers=AUTH
    ) as resp:
        assert resp.status == 204
    assert iid not in await instance_ids(http, registry, service)

    async def back() -> bool:
        return iid in await instance_ids(http, registry, service)

    await wait_until(back, 5, 0.1, f"{service} registered again after a 404 heartbeat")


async def test_node_example_registers_is_routed_follows_config_and_deregisters(
    components: ComponentFactory, redis_url: str, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    node = npm.node()
    folder = tmp_path / "config"
    folder.mkdir()
    (folder / "hello-node.toml").write_text('[hello]\ngreeting = "bonjour"\n')
    registry, gateway, configsvc = await asyncio.gather(
        *start_system(components, redis_url),
        components.start(
            "configsvc", "--redis-url", redis_url, "--config-dir", str(folder),
            env={"CONFIGSVC_TOKEN": TOKEN},
        ),
    )  # fmt: skip
    proc = await spawn(
        node, "examples/node/service.js",
        env={"REGISTRY_URL": registry.url, "REGISTRY_TOKEN": TOKEN, "CONFIGSVC_URL": configsvc.url,
             "CONFIGSVC_TOKEN": TOKEN, "TTL": "3", "INSTANCE_ID": "n1"},
    )  # fmt: skip
    try:

        async def greets(word: str) -> bool:
            status, body = await get_json(http, f"{gateway.url}/hello-node/hello")
            return status == 200 and body["greeting"] == word

        await wait_until(lambda: greets("bonjour"), 15, 0.1, "the gateway routes to Node.js")
        status, body = await get_json(http, f"{gateway.url}/hello-node/hello")
        assert (body["language"], body["instance"]) == ("javascript", "n1")

        async with http.put(
            f"{configsvc.url}/v1/documents/hello-node",
            json={"hello": {"greeting": "salut"}},
            headers=AUTH,
        ) as resp:
            assert resp.status == 200
        await wait_until(lambda: greets("salut"), 5, 0.1, "the new greeting, without a restart")

        await forgotten_then_back(http, registry, "hello-node", "n1")
        code, out = await stop(proc)
        assert code == 0, out
        assert "deregistered" in out
        assert await instance_ids(http, registry, "hello-node") == []
        status, _ = await get_json(http, f"{gateway.url}/hello-node/hello")
        assert status == 503
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_shell_example_registers_is_routed_and_deregisters(
    components: ComponentFactory, redis_url: str, http: aiohttp.ClientSession
) -> None:
    for tool in ("bash", "curl", "socat"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed: the shell example needs bash, curl and socat")
    registry, gateway = await asyncio.gather(*start_system(components, redis_url))
    port = free_port()
    proc = await spawn(
        "bash", "examples/shell/service.sh",
        env={"REGISTRY_URL": registry.url, "REGISTRY_TOKEN": TOKEN, "PORT": str(port),
             "TTL": "3", "INSTANCE_ID": "s1"},
    )  # fmt: skip
    try:

        async def routed() -> bool:
            status, body = await get_json(http, f"{gateway.url}/hello-shell/hello?x=1")
            return status == 200 and body["language"] == "bash"

        await wait_until(routed, 15, 0.1, "the gateway routes to the bash service")
        _, body = await get_json(http, f"{gateway.url}/hello-shell/hello?x=1")
        assert (body["instance"], body["path"]) == ("s1", "/hello?x=1")

        await forgotten_then_back(http, registry, "hello-shell", "s1")
        code, out = await stop(proc)
        assert code == 0, out
        assert "deregistered" in out
        assert await instance_ids(http, registry, "hello-shell") == []
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
