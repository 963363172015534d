"""A service's access log and its 5xx: one line each, with the request's ids, never its secrets."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from core.service.scaffold import Service, ServiceSettings, build_app
from core.trace import LogContext

Client = TestClient[Any, Any]
SECRET = "Bearer hunter2-is-a-password"


def _service() -> Service:
    routes = web.RouteTableDef()

    @routes.get("/notes/{id}")
    async def note(request: web.Request) -> web.Response:
        return web.json_response({"id": request.match_info["id"]})

    @routes.post("/boom")
    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("the database said no")

    return Service("notes", "Notes.", routes)


async def _client(
    aiohttp_client: Callable[..., Awaitable[Client]], tmp_path: Path, **settings: Any
) -> Client:
    values = {
        "data_dir": str(tmp_path),
        "instance_id": "notes-1",
        "redis_url": "redis://127.0.0.1:1/0",
    }
    return await aiohttp_client(build_app(_service(), ServiceSettings(**values | settings)))


@pytest.fixture
def caplog_with_context(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """caplog, with the ids every Essaim log line carries."""
    caplog.handler.addFilter(LogContext())
    caplog.set_level(logging.INFO, logger="essaim")
    return caplog


async def test_each_request_is_one_access_line_with_its_ids(
    aiohttp_client: Callable[..., Awaitable[Client]],
    tmp_path: Path,
    caplog_with_context: pytest.LogCaptureFixture,
) -> None:
    client = await _client(aiohttp_client, tmp_path)
    resp = await client.get("/notes/7?token=query-secret", headers={"X-Request-ID": "req-7"})
    assert resp.status == 200
    lines = [r for r in caplog_with_context.records if r.name == "essaim.access"]
    assert len(lines) == 1
    line: Any = lines[0]
    assert (line.method, line.path, line.route, line.status) == (
        "GET",
        "/notes/7",
        "/notes/{id}",
        200,
    )
    assert (line.service, line.instance, line.request_id) == ("notes", "notes-1", "req-7")
    assert len(line.trace_id) == 32
    assert line.bytes_out == len(await resp.read())
    assert "query-secret" not in caplog_with_context.text  # the query string is never logged


async def test_a_5xx_logs_its_exception_once_with_the_request_id_and_no_secret(
    aiohttp_client: Callable[..., Awaitable[Client]],
    tmp_path: Path,
    caplog_with_context: pytest.LogCaptureFixture,
) -> None:
    client = await _client(aiohttp_client, tmp_path)
    resp = await client.post(
        "/boom", json={"password": "swordfish"},
        headers={"Authorization": SECRET, "Cookie": "session=abc123", "X-Request-ID": "req-boom"},
    )  # fmt: skip
    assert resp.status == 500
    assert "the database said no" not in await resp.text()
    errors = [r for r in caplog_with_context.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    error: Any = errors[0]
    assert error.exc_info is not None
    assert error.request_id == "req-boom"
    access = [r for r in caplog_with_context.records if r.name == "essaim.access"]
    assert [(r.status, r.request_id) for r in access] == [(500, "req-boom")]  # type: ignore[attr-defined]
    for secret in ("hunter2", "swordfish", "abc123"):
        assert secret not in caplog_with_context.text


async def test_the_access_log_can_be_turned_off(
    aiohttp_client: Callable[..., Awaitable[Client]],
    tmp_path: Path,
    caplog_with_context: pytest.LogCaptureFixture,
) -> None:
    client = await _client(aiohttp_client, tmp_path, access_log=False)
    assert (await client.get("/notes/1")).status == 200
    assert [r for r in caplog_with_context.records if r.name == "essaim.access"] == []
