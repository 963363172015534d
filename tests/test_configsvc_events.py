"""configsvc's change stream for clients without Redis: GET /v1/events as Server-Sent Events."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

import configsvc
from core.testing import RedisServer, wait_until

Client = TestClient[Any, Any]


def _config_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "config"
    folder.mkdir()
    (folder / "application.toml").write_text("[http]\ntimeout = 5\n")
    (folder / "billing.toml").write_text("[billing]\ntax_rate = 0.2\n")
    return folder


async def _client(
    aiohttp_client: Callable[..., Awaitable[Client]], redis_url: str, tmp_path: Path
) -> Client:
    settings = configsvc.Settings(
        redis_url=redis_url,
        config_dir=str(_config_dir(tmp_path)),
        data_dir=str(tmp_path / "data"),
        import_check_interval=0.1,
    )
    return await aiohttp_client(configsvc.build_app(settings))


async def _next_event(resp: ClientResponse) -> dict[str, str]:
    """The next event's fields (``id``, ``event``, ``data``; comments and ``retry`` as well)."""
    fields: dict[str, str] = {}
    while True:
        line = (await asyncio.wait_for(resp.content.readline(), 5)).decode().rstrip("\n")
        if not line:
            if "data" in fields:
                return fields
            continue
        name, _, value = line.partition(": " if not line.startswith(":") else ":")
        fields[name or "comment"] = value.strip()


async def _put(client: Client, name: str, body: str) -> int:
    resp = await client.put(
        f"/v1/documents/{name}", data=body, headers={"Content-Type": "application/toml"}
    )
    assert resp.status in (200, 201), await resp.text()
    return int((await resp.json())["version"])


async def test_a_stream_from_now_gets_each_change_with_its_revision(
    aiohttp_client: Callable[..., Awaitable[Client]], redis_url: str, tmp_path: Path
) -> None:
    client = await _client(aiohttp_client, redis_url, tmp_path)
    rev = int((await (await client.get("/v1/documents")).json())["rev"])
    resp = await client.get("/v1/events")
    assert resp.headers["Content-Type"] == "text/event-stream"
    head = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 5)
    assert head == f": essaim config changes after rev {rev}\nretry: 1000\n\n".encode()

    version = await _put(client, "billing", "[billing]\ntax_rate = 0.25\n")
    event = await _next_event(resp)
    assert (event["id"], event["event"]) == (str(rev + 1), "change")
    assert orjson.loads(event["data"]) == {
        "rev": rev + 1,
        "document": "billing",
        "version": version,
    }
    resp.close()


async def test_a_client_that_resumes_behind_gets_every_documents_version_once(
    aiohttp_client: Callable[..., Awaitable[Client]], redis_url: str, tmp_path: Path
) -> None:
    client = await _client(aiohttp_client, redis_url, tmp_path)
    before = int((await (await client.get("/v1/documents")).json())["rev"])
    billing = await _put(client, "billing", "[billing]\ntax_rate = 0.3\n")
    now = before + 1

    # An EventSource opened on ?since=0 reconnects with Last-Event-ID: that wins.
    resp = await client.get("/v1/events?since=0", headers={"Last-Event-ID": str(before)})
    event = await _next_event(resp)
    assert (event["id"], event["event"]) == (str(now), "resync")
    data = orjson.loads(event["data"])
    assert data["rev"] == now
    assert data["documents"]["billing"] == billing
    assert set(data["documents"]) == {"application", "billing"}
    # Then live changes, without another resync.
    await _put(client, "application", "[http]\ntimeout = 6\n")
    event = await _next_event(resp)
    assert (event["id"], event["event"]) == (str(now + 1), "change")
    resp.close()

    # A client already at the current revision gets no resync, only what comes next.
    resp = await client.get("/v1/events", headers={"Last-Event-ID": str(now + 1)})
    await _put(client, "billing", "[billing]\ntax_rate = 0.31\n")
    event = await _next_event(resp)
    assert (event["id"], event["event"]) == (str(now + 2), "change")
    resp.close()


async def test_a_bad_revision_is_a_problem(
    aiohttp_client: Callable[..., Awaitable[Client]], redis_url: str, tmp_path: Path
) -> None:
    client = await _client(aiohttp_client, redis_url, tmp_path)
    for query, headers in (("?since=abc", {}), ("?since=-1", {}), ("", {"Last-Event-ID": "x"})):
        resp = await client.get(f"/v1/events{query}", headers=headers)
        assert resp.status == 400
        assert resp.content_type == "application/problem+json"


async def test_a_stream_spanning_a_redis_restart_gets_a_resync(
    aiohttp_client: Callable[..., Awaitable[Client]],
    redis_factory: Callable[..., RedisServer],
    tmp_path: Path,
) -> None:
    server = redis_factory()
    client = await _client(aiohttp_client, server.url, tmp_path)
    resp = await client.get("/v1/events")
    assert (await asyncio.wait_for(resp.content.readline(), 5)).startswith(b": essaim")
    server.kill()
    server.start()  # empty: configsvc re-imports its directory, revisions start over

    async def resync_seen() -> bool:
        line = await asyncio.wait_for(resp.content.readline(), 1)
        return line.strip() == b"event: resync"

    await wait_until(resync_seen, timeout=15, message="resync after the restart")
    resp.close()
