"""The gateway as a process: flags, discovery routing, hot reload, Redis away, admin, load."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import signal
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
from core.native import loader as native
from core.redis import connect
from core.registry.discovery import Registration
from core.registry.store import Instance
from core.testing import Component, ComponentFactory, RedisServer, free_port, wait_until


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
    # One process unless a test asks for more (a later --workers wins): the
    # process model has its own tests (test_gateway_workers.py), and a parent
    # with a worker per CPU for every test here would double the suite's load.
    async def start(redis_url: str, *args: str) -> Running:
        admin = free_port()
        comp = await components.start(
            "gateway",
            "--host", "127.0.0.1",
            "--admin-port", str(admin),
            "--redis-url", redis_url,
            "--shutdown-timeout", "3",
            "--workers", "1",
            *args,
            health_port=admin,
            timeout=60,
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
        # Settings every component shares are read from ESSAIM_* (OpenTelemetry's).
        env = (f"GATEWAY_{field.name.upper()}", f"ESSAIM_{field.name.upper()}")
        assert any(name in out for name in env) or field.name == "redis_url", field.name
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


# ----------------------------------------------------------------------------- static routes


async def serve(app: web.Application) -> tuple[web.AppRunner, int]:
    """``app`` served on a free loopback port: its runner (to clean up) and the port."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, runner.addresses[0][1]


def write_routes(path: Path, *routes: dict[str, Any]) -> None:
    lines = []
    for route in routes:
        lines.append("[[routes]]")
        for key, value in route.items():
            if isinstance(value, list):
                lines.append(f"{key} = [{', '.join(repr(v) for v in value)}]".replace("'", '"'))
            else:
                lines.append(f'{key} = "{value}"')
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)  # atomic, as an editor or a deploy tool would


async def test_route_file_is_hot_reloaded_and_a_bad_one_rejected_whole(
    redis_url: str,
    tmp_path: Path,
    start_gateway: StartGateway,
    upstream_factory: Callable[[str], Awaitable[Upstream]],
) -> None:
    a, b = await upstream_factory("a"), await upstream_factory("b")
    routes = tmp_path / "routes.toml"
    write_routes(routes, {"id": "shop", "prefix": "/shop", "urls": [f"http://127.0.0.1:{a.port}"]})
    gw = await start_gateway(redis_url, "--routes", str(routes), "--routes-poll", "0.05")
    async with aiohttp.ClientSession() as session:
        assert (await get_json(session, gw.url + "/shop/cart"))[1]["instance"] == "a"
        _, table = await get_json(session, gw.admin + "/routes")
        first_version = table["version"]
        assert [r["id"] for r in table["routes"]] == ["shop"]

        write_routes(
            routes, {"id": "shop", "prefix": "/shop", "urls": [f"http://127.0.0.1:{b.port}"]}
        )

        async def moved_to_b() -> bool:
            return (await get_json(session, gw.url + "/shop/cart"))[1]["instance"] == "b"

        await wait_until(moved_to_b, 10, message="route to b")

        # Two routes with one id: the whole table is refused, the last one stays.
        write_routes(
            routes,
            {"id": "shop", "prefix": "/shop", "urls": [f"http://127.0.0.1:{a.port}"]},
            {"id": "shop", "prefix": "/other", "urls": [f"http://127.0.0.1:{a.port}"]},
        )

        async def rejected() -> Any:
            _, doc = await get_json(session, gw.admin + "/routes")
            return doc["last_rejected"]

        rejection = await wait_until(rejected, 10, message="rejection shown")
        assert "duplicate" in rejection["reason"]
        _, table = await get_json(session, gw.admin + "/routes")
        assert table["version"] not in (None, first_version)
        assert (await get_json(session, gw.url + "/shop/cart"))[1]["instance"] == "b"
        # Readiness reports the rejection; liveness and the traffic health path don't care.
        status, ready = await get_json(session, gw.admin + "/health/ready")
        assert (status, ready["failing"]) == (503, ["routes"])
        assert "duplicate" in ready["checks"]["routes"]["detail"]["rejected"]["reason"]
        assert (await get_json(session, gw.admin + "/health/live")) == (200, {"status": "UP"})
        assert (await get_json(session, gw.url + "/-/health")) == (200, {"status": "UP"})

        # A good table again: ready again.
        write_routes(
            routes, {"id": "shop", "prefix": "/shop", "urls": [f"http://127.0.0.1:{a.port}"]}
        )

        async def ready_again() -> bool:
            return (await get_json(session, gw.admin + "/health/ready"))[0] == 200

        await wait_until(ready_again, 10, message="ready again")


async def test_routes_from_the_config_service_follow_it_and_survive_its_absence(
    redis_url: str,
    tmp_path: Path,
    components: ComponentFactory,
    start_gateway: StartGateway,
    upstream_factory: Callable[[str], Awaitable[Upstream]],
) -> None:
    a, b = await upstream_factory("a"), await upstream_factory("b")
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    configsvc = await components.start(
        "configsvc", "--config-dir", str(config_dir), "--data-dir", str(tmp_path / "data"),
        env={"REDIS_URL": redis_url},
    )  # fmt: skip

    def doc(port: int, route_id: str = "api") -> dict[str, Any]:
        return {
            "routes": [{"id": route_id, "prefix": "/api", "urls": [f"http://127.0.0.1:{port}"]}]
        }

    async with aiohttp.ClientSession() as session:

        async def put(body: Any) -> None:
            async with session.put(configsvc.url + "/v1/documents/gateway", json=body) as resp:
                assert resp.status in (200, 201), await resp.text()

        await put(doc(a.port))
        cache = tmp_path / "cache"
        gw = await start_gateway(
            redis_url, "--config-url", configsvc.url, "--config-cache-dir", str(cache)
        )
        assert (await get_json(session, gw.url + "/api/x"))[1]["instance"] == "a"

        await put(doc(b.port))

        async def moved_to_b() -> bool:
            return (await get_json(session, gw.url + "/api/x"))[1]["instance"] == "b"

        await wait_until(moved_to_b, 10, message="route to b")

        await put({"routes": [{"id": "api", "prefix": "/api"}]})  # no target: invalid

        async def rejected() -> Any:
            _, table = await get_json(session, gw.admin + "/routes")
            return table["last_rejected"]

        rejection = await wait_until(rejected, 10, message="rejection shown")
        assert "api" in rejection["reason"]
        assert (await get_json(session, gw.url + "/api/x"))[1]["instance"] == "b"

        # The config service goes away: a gateway started now uses the last-known copy.
        configsvc.terminate()
        assert (await get_json(session, gw.url + "/api/x"))[1]["instance"] == "b"
        again = await start_gateway(
            redis_url, "--config-url", configsvc.url, "--config-cache-dir", str(cache)
        )
        assert (await get_json(session, again.url + "/api/x"))[1]["instance"] == "b"
        _, health = await get_json(session, again.admin + "/health")
        assert health["status"] == "DEGRADED"


# ----------------------------------------------------------------------------- degraded dependencies


async def test_redis_away_the_gateway_keeps_routing_on_its_snapshot(
    redis_factory: Callable[..., RedisServer],
    start_gateway: StartGateway,
    upstream_factory: Callable[[str], Awaitable[Upstream]],
) -> None:
    server = redis_factory()
    a = await upstream_factory("a")
    client = connect(server.url)
    reg = Registration(client, a.instance("billing", ttl=30))
    await reg.start(wait=5)
    gw = await start_gateway(server.url)
    async with aiohttp.ClientSession() as session:
        assert (await get_json(session, gw.url + "/billing/x"))[0] == 200
        await reg.stop(deregister=False)
        await client.aclose()
        server.kill()
        for _ in range(20):
            status, body = await get_json(session, gw.url + "/billing/x")
            assert status == 200
            assert body["instance"] == "a"
        _, health = await get_json(session, gw.admin + "/health")
        assert health["status"] == "DEGRADED"
        assert health["redis"] == "DOWN"
        assert health["registry"]["connected"] is False


# ----------------------------------------------------------------------------- admin


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_admin_shows_routes_upstreams_health_and_metrics(
    redis_url: str,
    tmp_path: Path,
    start_gateway: StartGateway,
    upstream_factory: Callable[[str], Awaitable[Upstream]],
    registrations: Callable[[Instance], Awaitable[Registration]],
    workers: str,
) -> None:
    """The same answers from one process and, merged, from two workers."""
    a = await upstream_factory("a")
    await registrations(a.instance("billing"))
    routes = tmp_path / "routes.toml"
    write_routes(routes, {"id": "pay", "prefix": "/pay", "service": "billing"})
    gw = await start_gateway(redis_url, "--routes", str(routes), "--workers", workers)
    async with aiohttp.ClientSession() as session:
        for path in ("/pay/1", "/pay/2", "/billing/3", "/nosuch/4"):
            await get_json(session, gw.url + path)

        status, table = await get_json(session, gw.admin + "/routes")
        assert status == 200
        assert table["version"].startswith("sha256:")
        assert table["routes"][0]["id"] == "pay"
        assert table["discovery"]["services"] == ["billing"]

        _, ups = await get_json(session, gw.admin + "/upstreams")
        # One upstream per service and policy: "pay" shares "billing"'s unless its
        # breaker or balancer settings differ from the discovery routes'.
        billing = [u for u in ups["upstreams"] if u["name"].startswith("billing")]
        assert sorted(r for u in billing for r in u["routes"]) == ["discovery", "pay"]
        endpoints = [e for u in billing for e in u["endpoints"]]
        assert {e["key"] for e in endpoints} == {"a"}
        assert sum(e["requests"] for e in endpoints) == 3
        assert all(e["outstanding"] == 0 and e["ejected"] is False for e in endpoints)
        assert {u["breaker"]["state"] for u in billing} == {"CLOSED"}

        status, health = await get_json(session, gw.admin + "/health")
        assert status == 200
        assert health["status"] == "UP"
        assert health["routes"]["version"] == table["version"]
        # The gateway runs the build this test process runs (same source, same ESSAIM_NATIVE).
        assert health["build"] == native.BUILD.as_dict()
        status, ready = await get_json(session, gw.admin + "/health/ready")
        assert (status, ready["status"]) == (200, "UP")
        assert sorted(ready["checks"]) == ["registry", "routes"]
        assert (await get_json(session, gw.admin + "/health/live")) == (200, {"status": "UP"})

        async with session.get(gw.admin + "/metrics") as resp:
            text = await resp.text()
        assert 'gateway_requests_total{route="pay",service="billing",status="200"} 2.0' in text
        assert (
            'gateway_requests_total{route="discovery",service="billing",status="200"} 1.0' in text
        )
        assert (
            'gateway_requests_total{route="unmatched",service="unmatched",status="404"} 1.0' in text
        )
        assert 'gateway_request_duration_seconds_count{route="pay",service="billing"} 2.0' in text
        # Breakers and ejections now, per upstream (summed over the workers).
        assert re.search(
            r'gateway_breaker_state\{state="CLOSED",upstream="billing@pay"\} [12]\.0', text
        )
        assert 'gateway_breaker_state{state="OPEN",upstream="billing@pay"} 0.0' in text
        assert 'gateway_endpoint_ejected{endpoint="a",upstream="billing@pay"} 0.0' in text
        assert "gateway_upstream_errors_total" in text
        assert "gateway_retries_total" in text
        assert "gateway_breaker_transitions_total" in text
        # The process's own series, as Prometheus's default registry has them; no *_created.
        assert "process_cpu_seconds_total" in text
        assert "python_info{" in text
        assert "_created" not in text

        # The admin port is not the traffic port, and the traffic port has no admin.
        async with session.get(gw.url + "/metrics") as resp:
            assert resp.status == 404


# ----------------------------------------------------------------------------- under load


async def test_an_upstream_killed_under_load_fails_no_idempotent_request(
    redis_url: str,
    components: ComponentFactory,
    start_gateway: StartGateway,
    registrations: Callable[[Instance], Awaitable[Registration]],
) -> None:
    procs = {}
    for name in ("a", "b"):
        port = free_port()
        procs[name] = await components.start(
            "tests.upstream_server", "--name", name, "--delay", "0.005", port=port
        )
        await registrations(Instance("orders", name, "127.0.0.1", port, ttl=30))
    gw = await start_gateway(redis_url)
    statuses: list[int] = []
    served: list[str] = []
    stop = False

    async def worker(session: aiohttp.ClientSession) -> None:
        while not stop:
            async with session.get(gw.url + "/orders/list") as resp:
                statuses.append(resp.status)
                if resp.status == 200:
                    served.append((await resp.json())["instance"])

    async with aiohttp.ClientSession() as session:
        workers = [asyncio.create_task(worker(session)) for _ in range(16)]
        await wait_until(lambda: served.count("a") > 50, 20, message="load on a")
        procs["a"].kill()
        killed_at = len(statuses)
        await wait_until(lambda: len(statuses) > killed_at + 500, 30, message="load after kill")
        stop = True
        await asyncio.gather(*workers)
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    assert set(served[killed_at + 100 :]) == {"b"}


async def test_200_mib_stream_both_ways_with_bounded_gateway_memory(
    redis_url: str,
    tmp_path: Path,
    start_gateway: StartGateway,
) -> None:
    size = 200 * 1024 * 1024
    block = b"z" * (1024 * 1024)

    async def download(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_length = size
        await resp.prepare(request)
        for _ in range(size // len(block)):
            await resp.write(block)
        return resp

    async def upload(request: web.Request) -> web.Response:
        total = 0
        async for chunk in request.content.iter_any():
            total += len(chunk)
        return web.json_response({"received": total})

    app = web.Application(client_max_size=size * 2)
    app.router.add_get("/files/down", download)
    app.router.add_post("/files/up", upload)
    runner, port = await serve(app)
    routes = tmp_path / "routes.toml"
    write_routes(routes, {"id": "files", "prefix": "/files", "urls": [f"http://127.0.0.1:{port}"]})
    gw = await start_gateway(
        redis_url, "--routes", str(routes), "--max-body", str(size), "--per-try-timeout", "30",
        "--total-timeout", "60",
    )  # fmt: skip
    pid = gw.comp.process.pid

    def rss() -> int:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    baseline = rss()
    peak = baseline
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
            received = 0
            async with session.get(gw.url + "/files/down") as resp:
                assert resp.status == 200
                async for chunk in resp.content.iter_chunked(1024 * 1024):
                    received += len(chunk)
                    peak = max(peak, rss())
            assert received == size

            async def body() -> Any:
                nonlocal peak
                for _ in range(size // len(block)):
                    peak = max(peak, rss())
                    yield block

            async with session.post(gw.url + "/files/up", data=body()) as resp:
                assert resp.status == 200
                assert (await resp.json())["received"] == size
    finally:
        await runner.cleanup()
    # Buffered, 200 MiB would be in memory; streamed, a few socket buffers are.
    assert peak - baseline < 48 * 1024 * 1024, (baseline, peak)


async def _read_answer(reader: asyncio.StreamReader, *, pace: bool = False) -> tuple[int, bytes]:
    """One HTTP/1.1 answer with a Content-Length; ``pace``: read it 16 KiB at a time, slowly."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
    body = bytearray()
    while len(body) < length:
        body += await reader.read(
            min(16 * 1024, length - len(body)) if pace else length - len(body)
        )
        if pace:
            await asyncio.sleep(0.0005)  # a slow client: the gateway's writes to it back up
    return status, bytes(body)


async def test_an_upstream_connection_paused_by_a_slow_client_is_pooled_reading(
    redis_url: str,
    tmp_path: Path,
    start_gateway: StartGateway,
) -> None:
    # A slow client makes the gateway pause reading the upstream connection;
    # when the answer completes while paused, the connection goes back to
    # the pool. It was pooled paused: the next request on it was written,
    # its answer never read, and the client got 504 after the per-try timeout.
    # Sizes whose last read by the gateway (uvloop reads up to 256 KiB) is
    # large enough to pause the client's transport once more.
    sizes = [4 * 1024 * 1024 + k * 40 * 1024 for k in range(2, 7)] * 2

    async def download(request: web.Request) -> web.Response:
        return web.Response(body=b"y" * int(request.query["size"]))

    async def small(request: web.Request) -> web.Response:
        return web.Response(text="small")

    app = web.Application()
    app.router.add_get("/files/big", download)
    app.router.add_get("/files/small", small)
    runner, port = await serve(app)
    routes = tmp_path / "routes.toml"
    routes.write_text(
        '[[routes]]\nid = "files"\nprefix = "/files"\n'
        f'urls = ["http://127.0.0.1:{port}"]\ntimeouts = {{ per_try = 5, total = 5 }}\n'
    )
    gw = await start_gateway(redis_url, "--routes", str(routes))
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.comp.port)
    try:
        for size in sizes:
            writer.write(f"GET /files/big?size={size} HTTP/1.1\r\nHost: gw\r\n\r\n".encode())
            status, body = await asyncio.wait_for(_read_answer(reader, pace=True), 60)
            assert (status, len(body)) == (200, size)
            writer.write(b"GET /files/small HTTP/1.1\r\nHost: gw\r\n\r\n")
            status, body = await asyncio.wait_for(_read_answer(reader), 15)
            assert (status, body) == (200, b"small")
    finally:
        writer.close()
        await runner.cleanup()


async def test_sigterm_lets_a_request_in_flight_finish_and_exits_0(
    redis_url: str,
    tmp_path: Path,
    start_gateway: StartGateway,
) -> None:
    started = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        started.set()
        await asyncio.sleep(0.5)
        return web.Response(text="finished")

    app = web.Application()
    app.router.add_get("/slow", slow)
    runner, port = await serve(app)
    routes = tmp_path / "routes.toml"
    write_routes(routes, {"id": "s", "prefix": "/", "urls": [f"http://127.0.0.1:{port}"]})
    gw = await start_gateway(redis_url, "--routes", str(routes))
    try:
        async with aiohttp.ClientSession() as session:
            request = asyncio.create_task(session.get(gw.url + "/slow"))
            await asyncio.wait_for(started.wait(), 10)
            gw.comp.process.send_signal(signal.SIGTERM)
            resp = await request
            assert resp.status == 200
            assert await resp.text() == "finished"
            resp.release()
        code = await asyncio.get_running_loop().run_in_executor(None, gw.comp.process.wait, 15)
        assert code == 0
    finally:
        await runner.cleanup()


def test_an_invalid_route_file_at_start_exits_3_naming_route_and_field(tmp_path: Path) -> None:
    routes = tmp_path / "routes.toml"
    routes.write_text('[[routes]]\nid = "x"\nprefix = "/x"\nservice = "Bad Name"\n')
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "--routes", str(routes), "--port", "0",
         "--admin-port", "0", "--redis-url", "redis://127.0.0.1:1/0"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    assert proc.returncode == 3
    assert "route 'x', field 'service'" in proc.stderr
    # Refused before anything else: no worker started, Redis never waited for.
    assert "Redis unreachable" not in proc.stderr
    assert "worker" not in proc.stderr
