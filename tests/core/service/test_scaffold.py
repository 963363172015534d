"""The service scaffold (core/service/scaffold.py), through the smallest service run as a process."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from core.errors import SettingsError
from core.events.bus import Event
from core.registry.store import RegistryStore
from core.service.scaffold import Service, ServiceSettings, build_app
from core.settings import load
from core.testing import ComponentFactory, RedisServer, free_port, wait_until


async def instances(redis_url: str) -> list[tuple[str, int]]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        return [(i.id, i.port) for i in await RegistryStore(client).instances("customers")]
    finally:
        await client.aclose()


async def test_a_service_on_port_0_registers_the_port_it_listens_on_and_deregisters_on_sigterm(
    components: ComponentFactory, redis_url: str, tmp_path: Path
) -> None:
    # The factory passes a --port of its own first; the last one given wins.
    args = ("--data-dir", str(tmp_path), "--instance-id", "customers-7", "--port", "0")
    service = await components.start(
        "services.customers", *args, health=None, env={"REDIS_URL": redis_url}
    )
    registered = await wait_until(lambda: instances(redis_url), 10, message="registered")
    assert registered[0][0] == "customers-7"
    port = registered[0][1]
    assert port not in (0, service.port)
    async with aiohttp.ClientSession() as http:
        async with http.get(
            f"http://127.0.0.1:{port}/health", headers={"X-Request-ID": "r-1"}
        ) as r:
            health = await r.json()
            assert (r.status, r.headers["X-Request-ID"], r.headers["X-Instance-ID"]) == (
                200,
                "r-1",
                "customers-7",
            )
        assert (health["status"], health["registered"], health["redis"]) == ("UP", True, "UP")
        assert health["database"]["path"] == str(tmp_path / "customers.db")
        async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
            assert (
                'customers_http_requests_total{method="GET",route="/health",status="200"}'
                in await r.text()
            )
        async with http.get(f"http://127.0.0.1:{port}/nowhere") as r:
            assert (r.status, r.content_type) == (404, "application/problem+json")
    assert service.terminate() == 0
    assert await instances(redis_url) == []
    assert "deregistered customers/customers-7" in service.log


async def test_a_stopping_service_answers_with_connection_close_until_it_stops(
    components: ComponentFactory, redis_url: str, tmp_path: Path
) -> None:
    # A keep-alive client (the gateway's pool) leaves a stopping process on an
    # answer, not by having an idle connection closed under its next request.
    service = await components.start(
        "services.customers", "--data-dir", str(tmp_path), env={"REDIS_URL": redis_url}
    )
    await wait_until(lambda: instances(redis_url), 10, message="registered")
    answers: list[str] = []  # the Connection header of each answer, in order
    async with aiohttp.ClientSession() as http:

        async def ask() -> bool:
            try:
                async with http.get(f"{service.url}/health") as r:
                    await r.read()
                    answers.append(r.headers.get("Connection", "keep-alive").lower())
            except aiohttp.ClientConnectionError:
                return False  # stopped: no longer accepting
            return True

        assert await ask()
        service.process.send_signal(signal.SIGTERM)
        # Requests keep it in its deregistration wait (until 0.1 s without one, 1 s at most).
        async with asyncio.timeout(15):
            while await ask():
                pass
    assert service.process.wait(15) == 0
    assert answers[0] == "keep-alive"
    assert "close" in answers
    first_close = answers.index("close")
    assert set(answers[first_close:]) == {"close"}, answers
    assert await instances(redis_url) == []


async def test_a_service_without_redis_serves_and_registers_once_redis_is_there(
    components: ComponentFactory, tmp_path: Path
) -> None:
    redis = RedisServer()  # not started yet
    try:
        service = await components.start(
            "services.customers", "--data-dir", str(tmp_path), env={"REDIS_URL": redis.url}
        )
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{service.url}/customers", json={"name": "Ada", "email": "ada@example.com"}
            ) as r:
                assert r.status == 201
            async with http.get(f"{service.url}/health") as r:
                assert (await r.json())["status"] == "DEGRADED"
            redis.start()
            await wait_until(
                lambda: instances(redis.url), 10, message="registered once Redis is up"
            )
            async with http.get(f"{service.url}/health") as r:
                assert (await r.json())["status"] == "UP"
    finally:
        redis.close()


def test_a_bad_setting_stops_the_service_with_one_line_and_exit_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "services.billing", "--port", str(free_port())],
        env={"BILLING_TTL": "0", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        cwd=Path(__file__).resolve().parents[3],
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "billing: ttl: expected 1-300 seconds, got 0"


def test_route_policies_must_name_routes_the_service_has() -> None:
    routes = web.RouteTableDef()

    @routes.get("/notes")
    async def notes(request: web.Request) -> web.Response:
        return web.Response()

    with pytest.raises(ValueError, match="expected 'METHOD /path'"):
        Service("notes", "Notes.", routes, access={"get /notes": "public"})
    with pytest.raises(ValueError, match="expected 'public', 'authenticated'"):
        Service("notes", "Notes.", routes, access={"GET /notes": "everyone"})
    typo = Service("notes", "Notes.", routes, access={"GET /note": "public"})
    with pytest.raises(ValueError, match="'GET /note': notes has no such route"):
        build_app(typo, ServiceSettings())
    build_app(dataclasses.replace(typo, access={"GET /notes": "public"}), ServiceSettings())


def test_an_event_handler_with_the_wrong_signature_is_refused_when_the_service_is_declared() -> (
    None
):
    routes = web.RouteTableDef()

    def two_args(conn: sqlite3.Connection, event: Event) -> None: ...

    async def coroutine(app: web.Application, conn: sqlite3.Connection, event: Event) -> None: ...

    def right(app: web.Application, conn: sqlite3.Connection, event: Event) -> None: ...

    with pytest.raises(
        ValueError, match=r"handlers\['note.added'\]: .*two_args\(conn.*can't be called"
    ):
        Service("notes", "Notes.", routes, handlers={"note.added": two_args})
    with pytest.raises(ValueError, match=r"coroutine is async"):
        Service("notes", "Notes.", routes, handlers={"note.added": coroutine})
    assert Service("notes", "Notes.", routes, handlers={"note.added": right}).handlers


def test_a_bad_jwks_url_stops_the_service_with_one_line() -> None:
    with pytest.raises(SettingsError, match="jwks_url: expected an http"):
        load(ServiceSettings, prefix="NOTES_", argv=["--jwks-url", "auth:9100"], environ={})
