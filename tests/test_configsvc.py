"""The config service over real HTTP and a real Redis: import, reload, versions, bad input."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

import configsvc
from core.config.store import CHANNEL, REV_KEY
from core.redis import Redis
from core.settings import Secret
from core.testing import ComponentFactory, RedisServer, subscribed, wait_until

Client = TestClient[Any, Any]

APPLICATION = """
[log]
level = "info"

[http]
timeout = 10.0
retries = 2

[http.pool]
size = 10
idle = 30
"""

BILLING = """
[http]
timeout = 5.0

[http.pool]
size = 50

[billing]
currency = "EUR"
"""

BILLING_PROD = """
[log]
level = "warning"

[http.pool]
idle = 5
"""


def write_dir(path: Path, files: dict[str, str]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (path / name).write_text(text)
    return path


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    return write_dir(
        tmp_path / "config",
        {
            "application.toml": APPLICATION,
            "billing.toml": BILLING,
            "billing-prod.toml": BILLING_PROD,
        },
    )


@pytest.fixture
async def make_client(
    aiohttp_client: Callable[..., Awaitable[Client]],
    redis_url: str,
    config_dir: Path,
    tmp_path: Path,
) -> Callable[..., Awaitable[Client]]:
    async def make(**overrides: Any) -> Client:
        overrides.setdefault("config_dir", str(config_dir))
        overrides.setdefault("data_dir", str(tmp_path / "data"))
        overrides.setdefault("redis_url", redis_url)
        settings = configsvc.Settings(import_check_interval=0.1, **overrides)
        return await aiohttp_client(configsvc.build_app(settings))

    return make


@pytest.fixture
async def client(make_client: Callable[..., Awaitable[Client]]) -> Client:
    return await make_client()


async def dump(r: Redis) -> dict[str, Any]:
    """Every key with its value: to prove that a bad request changed nothing."""
    out: dict[str, Any] = {}
    for key in sorted(await r.keys("*")):
        kind = await r.type(key)
        if kind == "string":
            out[key] = await r.get(key)
        elif kind == "hash":
            out[key] = await r.hgetall(key)
        elif kind == "set":
            out[key] = sorted(await r.smembers(key))
        elif kind == "list":
            out[key] = await r.lrange(key, 0, -1)
    return out


async def put_json(client: Client, name: str, doc: Any, **kw: Any) -> ClientResponse:
    return await client.put(f"/v1/documents/{name}", data=orjson.dumps(doc),
                            headers={"Content-Type": "application/json", **kw})  # fmt: skip


async def config(client: Client, app: str, profile: str = "default") -> dict[str, Any]:
    resp = await client.get(f"/v1/config/{app}/{profile}")
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def problem(resp: ClientResponse, status: int) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/problem+json"
    body: dict[str, Any] = await resp.json()
    assert body["status"] == status
    return body


# ----------------------------------------------------------------------------- merge and import


async def test_merged_config_applies_application_then_app_then_profile(client: Client) -> None:
    body = await config(client, "billing", "prod")
    assert body["app"] == "billing"
    assert body["profile"] == "prod"
    assert [s["name"] for s in body["sources"]] == ["application", "billing", "billing-prod"]
    assert body["config"] == {
        "log": {"level": "warning"},
        "http": {"timeout": 5.0, "retries": 2, "pool": {"size": 50, "idle": 5}},
        "billing": {"currency": "EUR"},
    }
    assert all(s["version"] == 1 and s["origin"] == "file" for s in body["sources"])


async def test_profile_without_its_own_document_merges_application_and_app(client: Client) -> None:
    body = await config(client, "billing", "staging")
    assert [s["name"] for s in body["sources"]] == ["application", "billing"]
    assert body["config"]["http"]["pool"] == {"size": 50, "idle": 30}
    assert body["config"]["log"]["level"] == "info"


async def test_an_app_with_no_document_gets_application_alone(client: Client) -> None:
    body = await config(client, "newcomer")
    assert [s["name"] for s in body["sources"]] == ["application"]
    assert body["config"]["http"]["timeout"] == 10.0


async def test_a_table_replaced_by_a_value_in_a_later_layer_is_replaced(client: Client) -> None:
    await put_json(client, "orders", {"http": "off", "log": {"level": ["a"]}})
    body = await config(client, "orders")
    assert body["config"]["http"] == "off"
    assert body["config"]["log"] == {"level": ["a"]}


async def test_version_changes_when_any_source_changes(client: Client) -> None:
    before = (await config(client, "billing", "prod"))["version"]
    other = (await config(client, "inventory"))["version"]
    await put_json(client, "application", {"log": {"level": "debug"}})
    after = await config(client, "billing", "prod")
    assert after["version"] != before
    # The new application document replaced the old one whole: its keys are gone.
    assert "retries" not in after["config"]["http"]
    assert (await config(client, "inventory"))["version"] != other
    await put_json(client, "billing-prod", {"log": {"level": "error"}})
    assert (await config(client, "billing", "prod"))["version"] != after["version"]
    # A document of another app changes nothing for billing.
    same = (await config(client, "billing", "prod"))["version"]
    await put_json(client, "inventory", {"x": 1})
    assert (await config(client, "billing", "prod"))["version"] == same


async def test_reload_imports_a_changed_file_as_a_new_version(
    client: Client, config_dir: Path, redis: Redis
) -> None:
    async with subscribed(redis, CHANNEL) as messages:
        (config_dir / "billing.toml").write_text(BILLING.replace('"EUR"', '"CHF"'))
        resp = await client.post("/v1/reload")
        await wait_until(lambda: messages, 2.0, message="change published")
    event = orjson.loads(messages[0][1])
    assert resp.status == 200, await resp.text()
    report = await resp.json()
    assert report["written"] == ["billing"]
    assert report["unchanged"] == ["application", "billing-prod"]
    body = await config(client, "billing", "prod")
    assert body["config"]["billing"]["currency"] == "CHF"
    billing = next(s for s in body["sources"] if s["name"] == "billing")
    assert billing["version"] == 2
    assert event == {"rev": report["rev"], "document": "billing", "version": 2}


async def test_reload_with_a_broken_file_reports_it_and_changes_nothing(
    client: Client, config_dir: Path, redis: Redis
) -> None:
    (config_dir / "billing.toml").write_text(BILLING.replace('"EUR"', '"CHF"'))
    (config_dir / "inventory.toml").write_text("[stock]\nlow = 5\nhigh = \n")
    (config_dir / "Bad_Name.toml").write_text("a = 1\n")
    before = await dump(redis)
    resp = await client.post("/v1/reload")
    body = await problem(resp, 422)
    errors = {e["file"]: e for e in body["errors"]}
    assert errors["inventory.toml"]["line"] == 3
    assert errors["inventory.toml"]["reason"] == "Invalid value"
    assert "inventory.toml:3" in body["detail"]
    assert "document name" in errors["Bad_Name.toml"]["reason"]
    assert await dump(redis) == before
    assert (await config(client, "billing"))["config"]["billing"]["currency"] == "EUR"
    health = await (await client.get("/health")).json()
    assert {e["file"] for e in health["import"]["errors"]} == {"inventory.toml", "Bad_Name.toml"}


async def test_reload_after_a_file_is_removed_deletes_its_document(
    client: Client, config_dir: Path
) -> None:
    (config_dir / "billing-prod.toml").unlink()
    resp = await client.post("/v1/reload")
    assert (await resp.json())["deleted"] == ["billing-prod"]
    body = await config(client, "billing", "prod")
    assert [s["name"] for s in body["sources"]] == ["application", "billing"]
    assert (await client.get("/v1/documents/billing-prod")).status == 404


async def test_an_api_edit_survives_reload_until_its_file_changes(
    client: Client, config_dir: Path
) -> None:
    await put_json(client, "billing", {"billing": {"currency": "USD"}})
    assert (await (await client.post("/v1/reload")).json())["written"] == []
    assert (await config(client, "billing"))["config"]["billing"]["currency"] == "USD"
    (config_dir / "billing.toml").write_text(BILLING.replace('"EUR"', '"GBP"'))
    assert (await (await client.post("/v1/reload")).json())["written"] == ["billing"]
    assert (await config(client, "billing"))["config"]["billing"]["currency"] == "GBP"


async def test_start_with_a_broken_directory_imports_nothing_and_reports_it(
    make_client: Callable[..., Awaitable[Client]], tmp_path: Path
) -> None:
    broken = write_dir(tmp_path / "broken", {"application.toml": "a = 1\n", "x.toml": "= 2\n"})
    client = await make_client(config_dir=str(broken))
    assert (await client.get("/v1/documents/application")).status == 404
    health = await (await client.get("/health")).json()
    assert health["status"] == "UP"
    assert health["import"]["errors"][0]["file"] == "x.toml"
    assert health["import"]["errors"][0]["line"] == 1


async def test_a_missing_directory_is_reported(make_client: Callable[..., Awaitable[Client]], tmp_path: Path) -> None:  # fmt: skip
    client = await make_client(config_dir=str(tmp_path / "nowhere"))
    body = await problem(await client.post("/v1/reload"), 422)
    assert "not a directory" in body["errors"][0]["reason"]


async def test_redis_emptied_is_noticed_and_the_directory_imported_again(
    client: Client, redis: Redis
) -> None:
    await redis.flushall()

    async def back() -> bool:
        resp = await client.get("/v1/documents/billing")
        return resp.status == 200

    await wait_until(back, 5.0, message="directory imported again")
    assert (await config(client, "billing", "prod"))["config"]["log"]["level"] == "warning"


async def test_right_after_redis_was_emptied_reads_serve_the_directory(
    client: Client, redis: Redis
) -> None:
    await redis.flushall()
    body = await config(client, "billing", "prod")
    assert body["config"]["log"]["level"] == "warning"


async def test_a_write_right_after_redis_was_emptied_is_not_undone_by_the_import(
    client: Client, redis: Redis
) -> None:
    await redis.flushall()
    resp = await put_json(client, "billing", {"billing": {"currency": "HUF"}})
    assert resp.status in (200, 201)
    body = await config(client, "billing", "prod")
    assert body["config"]["billing"]["currency"] == "HUF"
    assert body["config"]["log"]["level"] == "warning"  # the rest of the directory is back


async def test_an_api_change_survives_redis_emptied_with_its_history(
    client: Client, redis: Redis, config_dir: Path
) -> None:
    assert (await put_json(client, "billing", {"billing": {"tax_rate": 0.25}})).status == 200
    assert (await put_json(client, "billing", {"billing": {"tax_rate": 0.3}})).status == 200
    before = await config(client, "billing", "prod")
    history = await (await client.get("/v1/documents/billing/history")).json()
    await redis.flushall()

    # Restored from the disk, not the file's first import: same version, same identity.
    after = await config(client, "billing", "prod")
    assert after["config"]["billing"]["tax_rate"] == 0.3
    assert after["version"] == before["version"]
    assert await (await client.get("/v1/documents/billing/history")).json() == history
    # Numbers go on growing from where they were; a rollback reaches the restored history.
    resp = await client.post("/v1/documents/billing/rollback?version=2")
    assert (await resp.json())["version"] == 4
    assert (await config(client, "billing"))["config"]["billing"]["tax_rate"] == 0.25


async def test_a_file_changed_while_redis_was_away_is_imported_over_the_restored_state(
    client: Client, redis: Redis, config_dir: Path
) -> None:
    await put_json(client, "billing-prod", {"log": {"level": "debug"}})
    await redis.flushall()
    (config_dir / "application.toml").write_text(APPLICATION.replace("retries = 2", "retries = 7"))
    body = await config(client, "billing", "prod")
    assert body["config"]["http"]["retries"] == 7  # the file, a new version
    assert body["config"]["log"]["level"] == "debug"  # the API's change, restored
    origins = {s["name"]: (s["version"], s["origin"]) for s in body["sources"]}
    assert origins["application"] == (2, "file")
    assert origins["billing-prod"] == (2, "api")


async def test_a_deleted_document_stays_deleted_after_redis_emptied(
    client: Client, redis: Redis
) -> None:
    await put_json(client, "orders", {"limit": 1})
    assert (await client.delete("/v1/documents/orders")).status == 200
    await redis.flushall()
    await config(client, "billing")  # restored by now
    assert (await client.get("/v1/documents/orders")).status == 404
    history = await (await client.get("/v1/documents/orders/history")).json()
    assert [(v["version"], v.get("deleted", False)) for v in history["versions"]] == [
        (2, True),
        (1, False),
    ]


async def test_versions_written_by_another_process_are_journaled_too(
    make_client: Callable[..., Awaitable[Client]], redis: Redis, tmp_path: Path
) -> None:
    """Two config services on one Redis, each with its own disk: each restores all."""
    first = await make_client(data_dir=str(tmp_path / "first"))
    second = await make_client(data_dir=str(tmp_path / "second"))
    await put_json(first, "orders", {"limit": 1})
    await put_json(second, "orders", {"limit": 2})

    def journaled(data_dir: Path) -> list[int]:
        with contextlib.closing(sqlite3.connect(data_dir / "configsvc.db")) as db:
            rows = db.execute("SELECT version FROM versions WHERE name = 'orders' ORDER BY 1")
            return [v for (v,) in rows]

    # Each recorded its own write at once, and the other's within its sync interval (5 s).
    await wait_until(
        lambda: journaled(tmp_path / "first") == journaled(tmp_path / "second") == [1, 2],
        15.0,
        message="journals synced",
    )
    await redis.flushall()
    for client in (first, second):
        versions = await (await client.get("/v1/documents/orders/history")).json()
        assert [v["version"] for v in versions["versions"]] == [2, 1]


async def test_the_journal_keeps_the_last_50_versions_on_disk(client: Client, redis: Redis) -> None:
    for i in range(55):
        await put_json(client, "orders", {"i": i})
    await redis.flushall()
    await config(client, "orders")
    history = await (await client.get("/v1/documents/orders/history")).json()
    assert [v["version"] for v in history["versions"]] == list(range(55, 5, -1))
    assert (await (await client.get("/v1/documents/orders")).json()) == {"i": 54}


# ----------------------------------------------------------------------------- documents and versions


async def test_put_makes_versions_and_identical_content_makes_none(
    client: Client, redis: Redis
) -> None:
    resp = await put_json(client, "orders", {"a": 1, "b": {"c": [1, 2]}})
    assert resp.status == 201
    first = await resp.json()
    assert first["version"] == 1
    assert first["changed"] is True
    assert len(first["hash"]) == 64
    rev = await redis.get(REV_KEY)
    # Same content, keys in another order: no new version, no revision.
    resp = await put_json(client, "orders", {"b": {"c": [1, 2]}, "a": 1})
    assert resp.status == 200
    same = await resp.json()
    assert (same["version"], same["changed"], same["hash"]) == (1, False, first["hash"])
    assert await redis.get(REV_KEY) == rev
    resp = await put_json(client, "orders", {"a": 2})
    assert (await resp.json())["version"] == 2
    resp = await client.get("/v1/documents/orders")
    assert await resp.json() == {"a": 2}
    assert resp.headers["X-Config-Version"] == "2"
    history = await (await client.get("/v1/documents/orders/history")).json()
    assert [v["version"] for v in history["versions"]] == [2, 1]
    assert history["versions"][1]["hash"] == first["hash"]
    assert history["versions"][0]["time"].endswith("Z")


async def test_put_takes_toml(client: Client) -> None:
    resp = await client.put(
        "/v1/documents/orders",
        data=b'[db]\npath = "orders.db"\nstarted = 1979-05-27T07:32:00Z\n',
        headers={"Content-Type": "application/toml; charset=utf-8"},
    )
    assert resp.status == 201, await resp.text()
    doc = await (await client.get("/v1/documents/orders")).json()
    assert doc == {"db": {"path": "orders.db", "started": "1979-05-27T07:32:00+00:00"}}


async def test_document_served_as_toml_on_request(client: Client) -> None:
    resp = await client.get("/v1/documents/billing", headers={"Accept": "application/toml"})
    assert resp.content_type == "application/toml"
    text = await resp.text()
    assert 'currency = "EUR"' in text
    resp = await client.get("/v1/documents/billing?format=toml")
    assert await resp.text() == text


async def test_history_keeps_the_last_50_versions(client: Client) -> None:
    for i in range(55):
        assert (await put_json(client, "orders", {"i": i})).status in (200, 201)
    history = await (await client.get("/v1/documents/orders/history")).json()
    versions = [v["version"] for v in history["versions"]]
    assert versions == list(range(55, 5, -1))
    assert (await client.get("/v1/documents/orders?version=6")).status == 200
    assert (await client.get("/v1/documents/orders?version=5")).status == 404


async def test_rollback_makes_an_old_version_current_as_a_new_version(client: Client) -> None:
    await put_json(client, "orders", {"limit": 1})
    await put_json(client, "orders", {"limit": 2})
    old = (await config(client, "orders"))["version"]
    resp = await client.post("/v1/documents/orders/rollback?version=1")
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert (body["version"], body["rolled_back_to"], body["changed"]) == (3, 1, True)
    merged = await config(client, "orders")
    assert merged["config"]["limit"] == 1
    assert merged["version"] != old
    history = await (await client.get("/v1/documents/orders/history")).json()
    assert history["versions"][0]["origin"] == "rollback:1"
    # Rolling back to what is current is not a change.
    again = await (await client.post("/v1/documents/orders/rollback?version=3")).json()
    assert (again["version"], again["changed"]) == (3, False)


async def test_old_version_content_is_readable(client: Client) -> None:
    await put_json(client, "orders", {"limit": 1})
    await put_json(client, "orders", {"limit": 2})
    assert await (await client.get("/v1/documents/orders?version=1")).json() == {"limit": 1}


async def test_delete_is_a_version_and_numbers_keep_growing(client: Client) -> None:
    await put_json(client, "orders", {"limit": 1})
    resp = await client.delete("/v1/documents/orders")
    assert resp.status == 200
    assert (await resp.json())["version"] == 2
    assert (await client.get("/v1/documents/orders")).status == 404
    assert [s["name"] for s in (await config(client, "orders"))["sources"]] == ["application"]
    await problem(await client.delete("/v1/documents/orders"), 404)
    history = await (await client.get("/v1/documents/orders/history")).json()
    assert history["versions"][0] == {**history["versions"][0], "version": 2, "deleted": True}
    await problem(await client.post("/v1/documents/orders/rollback?version=2"), 422)
    resp = await client.post("/v1/documents/orders/rollback?version=1")
    assert (await resp.json())["version"] == 3
    assert await (await client.get("/v1/documents/orders")).json() == {"limit": 1}
    resp = await put_json(client, "orders", {"limit": 5})
    assert (await resp.json())["version"] == 4


async def test_document_list(client: Client) -> None:
    body = await (await client.get("/v1/documents")).json()
    assert [d["name"] for d in body["documents"]] == ["application", "billing", "billing-prod"]


# ----------------------------------------------------------------------------- ETag


async def test_config_answers_304_while_nothing_changed(client: Client) -> None:
    resp = await client.get("/v1/config/billing/prod")
    etag = resp.headers["ETag"]
    assert etag == f'"{(await resp.json())["version"]}"'
    resp = await client.get("/v1/config/billing/prod", headers={"If-None-Match": etag})
    assert resp.status == 304
    assert resp.headers["ETag"] == etag
    assert int(resp.headers["X-Config-Rev"]) >= 3
    await put_json(client, "billing", {"billing": {"currency": "JPY"}})
    resp = await client.get("/v1/config/billing/prod", headers={"If-None-Match": etag})
    assert resp.status == 200
    assert resp.headers["ETag"] != etag
    assert (await resp.json())["config"]["billing"]["currency"] == "JPY"


async def test_document_answers_304_while_nothing_changed(client: Client) -> None:
    resp = await client.get("/v1/documents/billing")
    etag = resp.headers["ETag"]
    resp = await client.get("/v1/documents/billing", headers={"If-None-Match": f"W/{etag}"})
    assert resp.status == 304
    await put_json(client, "billing", {"x": 1})
    resp = await client.get("/v1/documents/billing", headers={"If-None-Match": etag})
    assert resp.status == 200


# ----------------------------------------------------------------------------- bad input


def nested(depth: int) -> dict[str, Any]:
    doc: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        doc = {"n": doc}
    return doc


BAD_PUTS = [
    pytest.param("orders", b'{"a": 1,\n "b": }', "application/json", 400, "line 2", id="malformed-json"),
    pytest.param("orders", b"[a]\nb = 1\nc = [1,\n", "application/toml", 400, "line", id="malformed-toml"),
    pytest.param("orders", b"[1, 2]", "application/json", 422, "must be a table", id="not-a-table"),
    pytest.param("orders", b'"text"', "application/json", 422, "must be a table", id="a-string"),
    pytest.param("Orders", b"{}", "application/json", 422, "invalid document name", id="uppercase-name"),
    pytest.param("-orders", b"{}", "application/json", 422, "invalid document name", id="leading-dash"),
    pytest.param("a" * 64, b"{}", "application/json", 422, "invalid document name", id="name-too-long"),
    pytest.param("orders", b'{"a": "' + b"x" * (256 * 1024) + b'"}', "application/json", 413, "limit", id="too-large"),
    pytest.param("orders", orjson.dumps(nested(33)), "application/json", 422, "deeper than 32", id="too-deep"),
    pytest.param("orders", b"[" * 2000 + b"]" * 2000, "application/json", 422, "deeper", id="very-deep-json"),
    pytest.param("orders", b'{"a": {"b": null}}', "application/json", 422, "a.b is null", id="null"),
    pytest.param("orders", b"a = inf\n", "application/toml", 422, "finite", id="infinity"),
    pytest.param("orders", b"\xff\xfe = 1", "application/toml", 400, "UTF-8", id="not-utf8"),
    pytest.param("orders", b"a: 1", "text/yaml", 415, "application/json", id="media-type"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "body", "content_type", "status", "detail"), BAD_PUTS)
async def test_bad_put_is_refused_and_changes_nothing(
    client: Client,
    redis: Redis,
    name: str,
    body: bytes,
    content_type: str,
    status: int,
    detail: str,
) -> None:
    await put_json(client, "orders", {"limit": 1})
    before = await dump(redis)
    resp = await client.put(
        f"/v1/documents/{name}", data=body, headers={"Content-Type": content_type}
    )
    problem_body = await problem(resp, status)
    assert detail in problem_body["detail"]
    assert await dump(redis) == before


async def test_malformed_json_names_line_and_reason(client: Client) -> None:
    resp = await client.put("/v1/documents/orders", data=b'{\n"a": 1,\n"b": tru\n}',
                            headers={"Content-Type": "application/json"})  # fmt: skip
    body = await problem(resp, 400)
    assert body["errors"][0]["line"] == 3
    assert body["errors"][0]["reason"]


async def test_nesting_of_32_is_accepted(client: Client) -> None:
    assert (await put_json(client, "orders", nested(32))).status == 201


BAD_OTHERS = [
    pytest.param("post", "/v1/documents/orders/rollback?version=9", 404, id="rollback-unknown-version"),
    pytest.param("post", "/v1/documents/orders/rollback?version=x", 400, id="rollback-bad-version"),
    pytest.param("post", "/v1/documents/orders/rollback?version=0", 400, id="rollback-version-0"),
    pytest.param("post", "/v1/documents/orders/rollback", 400, id="rollback-no-version"),
    pytest.param("post", "/v1/documents/nothing/rollback?version=1", 404, id="rollback-unknown-document"),
    pytest.param("delete", "/v1/documents/nothing", 404, id="delete-unknown"),
    pytest.param("delete", "/v1/documents/Bad", 422, id="delete-bad-name"),
    pytest.param("get", "/v1/documents/nothing", 404, id="get-unknown"),
    pytest.param("get", "/v1/documents/nothing/history", 404, id="history-unknown"),
    pytest.param("get", "/v1/config/Bad/default", 422, id="config-bad-app"),
    pytest.param("get", "/v1/config/billing/pr_od", 422, id="config-bad-profile"),
    pytest.param("get", "/v1/documents/orders?format=yaml", 400, id="bad-format"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "status"), BAD_OTHERS)
async def test_bad_request_is_refused_and_changes_nothing(
    client: Client, redis: Redis, method: str, path: str, status: int
) -> None:
    await put_json(client, "orders", {"limit": 1})
    before = await dump(redis)
    await problem(await client.request(method, path), status)
    assert await dump(redis) == before


# ----------------------------------------------------------------------------- token


async def test_writes_require_the_token_when_set(
    make_client: Callable[..., Awaitable[Client]], redis: Redis
) -> None:
    client = await make_client(token=Secret("s3cret"))
    before = await dump(redis)
    writes = [
        ("put", "/v1/documents/orders"),
        ("delete", "/v1/documents/billing"),
        ("post", "/v1/documents/billing/rollback?version=1"),
        ("post", "/v1/reload"),
    ]
    for method, path in writes:
        for auth in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
            resp = await client.request(method, path, data=b"{}",
                                        headers={"Content-Type": "application/json", **auth})  # fmt: skip
            body = await problem(resp, 401)
            assert "CONFIGSVC_TOKEN" in body["detail"]
            challenge = resp.headers["WWW-Authenticate"]
            assert challenge.startswith('Bearer realm="essaim-configsvc"')
            # RFC 6750: a token was given and was wrong ("Basic s3cret" carries none).
            given = auth.get("Authorization", "").startswith("Bearer")
            assert challenge.endswith('error="invalid_token"') == given, challenge
    assert await dump(redis) == before
    # Reads stay open; a write with the token goes through.
    assert (await client.get("/v1/config/billing/prod")).status == 200
    resp = await put_json(client, "orders", {"a": 1}, Authorization="Bearer s3cret")
    assert resp.status == 201


def test_refuses_to_listen_off_loopback_without_a_token() -> None:
    code = configsvc.main(["--host", "0.0.0.0"])
    assert code == 2
    with pytest.raises(Exception, match="CONFIGSVC_TOKEN"):
        configsvc.Settings(host="0.0.0.0").validate()
    configsvc.Settings(host="0.0.0.0", token=Secret("t")).validate()


# ----------------------------------------------------------------------------- Redis away, process


async def test_redis_away_answers_503_and_heals(
    make_client: Callable[..., Awaitable[Client]], redis_factory: Callable[..., RedisServer]
) -> None:
    server = redis_factory()
    client = await make_client(redis_url=server.url)
    assert (await client.get("/v1/documents/billing")).status == 200
    server.kill()
    resp = await client.get("/v1/config/billing/prod")
    await problem(resp, 503)
    assert resp.headers["Retry-After"] == "1"
    assert (await client.get("/health")).status == 503
    # Alive, so that a liveness probe leaves it be; not ready while Redis is away.
    assert (await client.get("/health/live")).status == 200
    resp = await client.get("/health/ready")
    ready = await resp.json()
    assert (resp.status, ready["failing"]) == (503, ["redis"])
    assert ready["checks"]["journal"]["status"] == "UP"
    server.start()

    async def healed() -> bool:
        resp = await client.get("/v1/config/billing/prod")
        return resp.status == 200 and (await resp.json())["config"]["log"]["level"] == "warning"

    await wait_until(healed, 10.0, message="configsvc healed and re-imported")
    assert (await client.get("/health/ready")).status == 200


async def test_an_api_change_survives_empty_redis_restarts_and_a_configsvc_restart(
    components: ComponentFactory,
    redis_factory: Callable[..., RedisServer],
    config_dir: Path,
    tmp_path: Path,
) -> None:
    server = redis_factory()
    args = ("--config-dir", str(config_dir), "--data-dir", str(tmp_path / "data"))
    comp = await components.start("configsvc", *args, env={"REDIS_URL": server.url})
    async with aiohttp.ClientSession() as session:

        async def tax_rate() -> Any:
            async with session.get(f"{comp.url}/v1/config/billing/prod") as resp:
                return (await resp.json())["config"]["billing"]["tax_rate"] if resp.ok else None

        async with session.put(
            f"{comp.url}/v1/documents/billing", json={"billing": {"tax_rate": 0.25}}
        ) as resp:
            assert resp.status == 200
        server.kill()
        server.start()  # empty
        assert await wait_until(lambda: _is(tax_rate(), 0.25), 10, message="restored")

        # Redis emptied again while configsvc is down: restored at its start.
        assert comp.terminate() == 0
        server.kill()
        server.start()
        comp = await components.start("configsvc", *args, env={"REDIS_URL": server.url})
        assert await tax_rate() == 0.25
        async with session.get(f"{comp.url}/v1/documents/billing/history") as resp:
            versions = [v["origin"] for v in (await resp.json())["versions"]]
        assert versions == ["api", "file"]


async def _is(value: Awaitable[Any], expected: Any) -> bool:
    return await value == expected


async def test_process_serves_and_stops_cleanly_on_sigterm(
    components: ComponentFactory, redis_url: str, config_dir: Path, tmp_path: Path
) -> None:
    comp = await components.start(
        "configsvc", "--config-dir", str(config_dir), "--data-dir", str(tmp_path / "data"),
        env={"REDIS_URL": redis_url},
    )  # fmt: skip
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{comp.url}/v1/config/billing/prod") as resp,
    ):
        assert resp.status == 200
        assert (await resp.json())["config"]["http"]["pool"]["size"] == 50
    comp.process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(comp.process.wait, 15) == 0


def test_help_lists_the_flags_and_their_variables() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "configsvc", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "--config-dir" in out
    assert "CONFIGSVC_TOKEN" in out
