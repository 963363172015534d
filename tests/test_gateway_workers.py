"""The gateway on several processes: shared port, merged admin, crash restart, reload, takeover.

Every test runs real gateway processes against a real upstream on loopback;
the restart tests send requests continuously (bounded in count and time)
through the restart and count every refused or failed one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from core.testing import ComponentFactory, free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent


@pytest_asyncio.fixture
async def upstream() -> AsyncIterator[int]:
    """An upstream on a free port that answers every path with its path."""

    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"path": request.path_qs})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield int(runner.addresses[0][1])
    await runner.cleanup()


def routes_file(tmp_path: Path, port: int) -> Path:
    path = tmp_path / "routes.toml"
    path.write_text(
        f'[[routes]]\nid = "shop"\nprefix = "/shop"\nurls = ["http://127.0.0.1:{port}"]\n'
    )
    return path


@dataclasses.dataclass
class Load:
    """Requests sent one after another by ``clients`` tasks until stopped; what happened to each."""

    ok: int = 0
    refused: int = 0
    failed: list[str] = dataclasses.field(default_factory=list)

    async def run(
        self, url: str, stop: asyncio.Event, clients: int = 4, limit: int = 20_000
    ) -> None:
        # A new connection per request: every request goes through accept().
        connector = aiohttp.TCPConnector(force_close=True, limit=0)
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

            async def client(n: int) -> None:
                i = 0
                while not stop.is_set() and self.ok + self.refused + len(self.failed) < limit:
                    i += 1
                    try:
                        async with session.get(f"{url}/shop/{n}/{i}") as resp:
                            body = await resp.read()
                            if resp.status == 200:
                                self.ok += 1
                            else:
                                self.failed.append(f"{resp.status} {body[:200]!r}")
                    except aiohttp.ClientConnectorError as exc:
                        if isinstance(exc.os_error, ConnectionRefusedError):
                            self.refused += 1
                        else:
                            self.failed.append(repr(exc))
                    except (aiohttp.ClientError, TimeoutError) as exc:
                        self.failed.append(repr(exc))

            await asyncio.gather(*(client(n) for n in range(clients)))


async def admin_json(port: int, path: str) -> Any:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}{path}") as resp,
    ):
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def admin_text(port: int, path: str) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}{path}") as resp,
    ):
        assert resp.status == 200
        return await resp.text()


def ready_pids(doc: dict[str, Any]) -> set[int]:
    return {w["pid"] for w in doc["workers"] if w["state"] == "ready"}


def gateway_args(redis_url: str, admin: int, routes: Path, *extra: str) -> list[str]:
    return [
        "--host", "127.0.0.1",
        "--admin-port", str(admin),
        "--redis-url", redis_url,
        "--routes", str(routes),
        "--shutdown-timeout", "5",
        *extra,
    ]  # fmt: skip


async def test_workers_share_the_port_and_the_admin_sums_their_counts(
    components: ComponentFactory, redis_url: str, upstream: int, tmp_path: Path
) -> None:
    admin = free_port()
    gw = await components.start(
        "gateway",
        *gateway_args(redis_url, admin, routes_file(tmp_path, upstream), "--workers", "2"),
        health_port=admin,
        timeout=60,
    )
    workers = await admin_json(admin, "/workers")
    assert len(ready_pids(workers)) == 2
    assert gw.process.pid not in ready_pids(workers)

    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        for i in range(40):
            async with session.get(f"{gw.url}/shop/{i}") as resp:
                assert resp.status == 200

    text = await admin_text(admin, "/metrics")
    totals = {
        s.labels.get("status"): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "gateway_requests_total" and s.labels.get("route") == "shop"
    }
    assert totals == {"200": 40.0}  # one series, the sum of both workers
    per_worker = [
        s
        for f in text_string_to_metric_families(await admin_text(admin, "/metrics?per_worker=1"))
        for s in f.samples
        if s.name == "gateway_requests_total" and s.labels.get("route") == "shop"
    ]
    # 40 connections spread by the kernel over two sockets: both workers served some.
    assert sorted(s.labels["worker"] for s in per_worker) == ["0", "1"]
    assert all(s.value > 0 for s in per_worker)
    assert sum(s.value for s in per_worker) == 40

    ups = await admin_json(admin, "/upstreams")
    assert ups["workers"] == 2
    (shop,) = [u for u in ups["upstreams"] if "shop" in u["routes"]]
    assert sum(ep["requests"] for ep in shop["endpoints"]) == 40
    routes = await admin_json(admin, "/routes")
    assert [r["id"] for r in routes["routes"]] == ["shop"]
    health = await admin_json(admin, "/health")
    assert health["status"] == "UP"
    assert health["workers_ready"] == 2


async def test_a_crashed_worker_is_started_again_on_the_same_port(
    components: ComponentFactory, redis_url: str, upstream: int, tmp_path: Path
) -> None:
    admin = free_port()
    gw = await components.start(
        "gateway",
        *gateway_args(redis_url, admin, routes_file(tmp_path, upstream), "--workers", "2"),
        health_port=admin,
        timeout=60,
    )
    before = ready_pids(await admin_json(admin, "/workers"))
    victim = min(before)
    os.kill(victim, signal.SIGKILL)

    async def replaced() -> bool:
        doc = await admin_json(admin, "/workers")
        pids = ready_pids(doc)
        return len(pids) == 2 and victim not in pids and doc["restarts"] == 1

    await wait_until(replaced, timeout=60, message="the crashed worker replaced")
    async with aiohttp.ClientSession() as session, session.get(f"{gw.url}/shop/x") as resp:
        assert resp.status == 200
    assert "exited with code -9" in gw.log


async def test_sighup_replaces_every_worker_with_no_request_refused_or_failed(
    components: ComponentFactory, redis_url: str, upstream: int, tmp_path: Path
) -> None:
    admin = free_port()
    gw = await components.start(
        "gateway",
        *gateway_args(redis_url, admin, routes_file(tmp_path, upstream), "--workers", "2"),
        health_port=admin,
        timeout=60,
    )
    before = ready_pids(await admin_json(admin, "/workers"))
    load = Load()
    stop = asyncio.Event()
    sending = asyncio.create_task(load.run(gw.url, stop))
    await wait_until(lambda: load.ok >= 20, timeout=30, message="load flowing")
    gw.process.send_signal(signal.SIGHUP)

    async def reloaded() -> bool:
        doc = await admin_json(admin, "/workers")
        return doc["reloads"] == 1 and not (ready_pids(doc) & before) and not doc["retiring"]

    try:
        await wait_until(reloaded, timeout=90, interval=0.2, message="every worker replaced")
        sent_at_reload = load.ok
        await wait_until(lambda: load.ok >= sent_at_reload + 20, timeout=30, message="load after")
    finally:
        stop.set()
        await sending
    print(f"sighup: {load.ok} ok, {load.refused} refused, {len(load.failed)} failed")
    assert load.refused == 0
    assert load.failed == []
    assert load.ok > 40
    assert len(ready_pids(await admin_json(admin, "/workers"))) == 2


@pytest.mark.parametrize(("old_workers", "new_workers"), [("1", "2"), ("2", "1")])
async def test_a_new_gateway_takes_over_the_sockets_with_no_connection_refused(
    components: ComponentFactory,
    redis_url: str,
    upstream: int,
    tmp_path: Path,
    old_workers: str,
    new_workers: str,
) -> None:
    admin = free_port()
    control = str(tmp_path / "gateway.sock")
    routes = routes_file(tmp_path, upstream)
    old = await components.start(
        "gateway",
        *gateway_args(redis_url, admin, routes, "--workers", old_workers),
        "--control-socket", control,
        health_port=admin,
        timeout=60,
    )  # fmt: skip
    load = Load()
    stop = asyncio.Event()
    sending = asyncio.create_task(load.run(old.url, stop))
    await wait_until(lambda: load.ok >= 20, timeout=30, message="load flowing")
    new = await components.start(
        "gateway",
        *gateway_args(redis_url, admin, routes, "--workers", new_workers),
        "--control-socket", control,
        "--takeover",
        port=old.port,
        health=None,
    )  # fmt: skip
    try:
        # The old gateway exits by itself once the new one is ready and its requests are done.
        await wait_until(lambda: old.process.poll() is not None, timeout=90, message="old exits")
        sent_at_exit = load.ok
        await wait_until(lambda: load.ok >= sent_at_exit + 20, timeout=30, message="load after")
    finally:
        stop.set()
        await sending
    print(f"takeover: {load.ok} ok, {load.refused} refused, {len(load.failed)} failed")
    assert old.process.returncode == 0, old.log
    assert new.process.poll() is None, new.log
    assert load.refused == 0
    assert load.failed == []
    assert "handover: pid" in old.log
    health = await admin_json(admin, "/health")
    assert health["status"] == "UP"
    # The new one can be taken over in turn: it serves the control socket now.
    assert Path(control).exists()


async def test_a_second_gateway_on_a_port_in_use_fails_without_takeover(
    components: ComponentFactory, redis_url: str, upstream: int, tmp_path: Path
) -> None:
    admin = free_port()
    routes = routes_file(tmp_path, upstream)
    first = await components.start(
        "gateway",
        *gateway_args(redis_url, admin, routes, "--workers", "2"),
        health_port=admin,
        timeout=60,
    )
    # SO_REUSEPORT would let it bind; the gateway checks first, as a plain bind would.
    second = subprocess.run(
        [
            sys.executable, "-m", "gateway", "--port", str(first.port),
            *gateway_args(redis_url, free_port(), routes, "--workers", "2"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")},
    )  # fmt: skip
    assert second.returncode == 3
    assert "address already in use" in second.stderr


async def test_sighup_to_a_single_process_is_ignored_with_a_warning(
    components: ComponentFactory, redis_url: str, upstream: int, tmp_path: Path
) -> None:
    admin = free_port()
    gw = await components.start(
        "gateway",
        *gateway_args(redis_url, admin, routes_file(tmp_path, upstream), "--workers", "1"),
        health_port=admin,
        timeout=60,
    )
    gw.process.send_signal(signal.SIGHUP)
    await wait_until(lambda: "SIGHUP ignored" in gw.log, timeout=10, message="the warning")
    assert gw.process.poll() is None
    async with aiohttp.ClientSession() as session, session.get(f"{gw.url}/shop/x") as resp:
        assert resp.status == 200
