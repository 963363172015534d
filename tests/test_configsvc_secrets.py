"""Encrypted config values over real HTTP and a real Redis: stored encrypted, served with the token.

Every test here runs the config service with a token and a Fernet key, as the
launcher does, and checks what an operator or a component sees: the raw Redis
state, the HTTP answers with and without the token, the ConfigClient's config,
and the process log.
"""

from __future__ import annotations

import asyncio
import logging
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer
from cryptography.fernet import Fernet

import configsvc
from core.config.client import ConfigClient
from core.config.store import doc_key
from core.config.watch import WatcherProcesses
from core.redis import Redis
from core.settings import Secret
from core.testing import ComponentFactory, wait_until

Client = TestClient[Any, Any]

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
KEY = Fernet.generate_key().decode()
OTHER_KEY = Fernet.generate_key().decode()
PASSWORD = "correct horse battery staple"

APPLICATION = '[log]\nlevel = "info"\n'
BILLING = '[billing]\ncurrency = "EUR"\n\n[billing.db]\nuser = "billing"\n'
INVENTORY = "[inventory]\nlow = 5\n"


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    path = tmp_path / "config"
    path.mkdir()
    (path / "application.toml").write_text(APPLICATION)
    (path / "billing.toml").write_text(BILLING)
    (path / "inventory.toml").write_text(INVENTORY)
    return path


def settings(redis_url: str, config_dir: Path, **overrides: Any) -> configsvc.Settings:
    overrides.setdefault("token", Secret(TOKEN))
    overrides.setdefault("encrypt_key", Secret(KEY))
    overrides.setdefault("data_dir", str(config_dir.parent / "data"))
    return configsvc.Settings(
        redis_url=redis_url, config_dir=str(config_dir), import_check_interval=0.1, **overrides
    )


@pytest.fixture
async def make_client(
    aiohttp_client: Callable[..., Awaitable[Client]], redis_url: str, config_dir: Path
) -> Callable[..., Awaitable[Client]]:
    async def make(**overrides: Any) -> Client:
        return await aiohttp_client(
            configsvc.build_app(settings(redis_url, config_dir, **overrides))
        )

    return make


@pytest.fixture
async def client(make_client: Callable[..., Awaitable[Client]]) -> Client:
    return await make_client()


async def dump(r: Redis) -> dict[str, Any]:
    """Every key with its value: what Redis holds, to compare or to search."""
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


async def encrypt(client: Client, plaintext: str) -> str:
    resp = await client.post(
        "/v1/encrypt", data=plaintext.encode(), headers={"Content-Type": "text/plain", **AUTH}
    )
    assert resp.status == 200, await resp.text()
    return await resp.text()


async def put_json(
    client: Client, name: str, doc: Any, headers: dict[str, str] | None = None
) -> ClientResponse:
    return await client.put(
        f"/v1/documents/{name}",
        data=orjson.dumps(doc),
        headers={"Content-Type": "application/json", **(AUTH if headers is None else headers)},
    )


async def put_secret(client: Client) -> str:
    """Make billing hold ``billing.db.password = {cipher}...``; returns the stored value."""
    value = await encrypt(client, PASSWORD)
    doc = {"billing": {"currency": "EUR", "db": {"user": "billing", "password": value}}}
    resp = await put_json(client, "billing", doc)
    assert resp.status == 200, await resp.text()
    return value


async def problem(resp: ClientResponse, status: int) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/problem+json"
    body: dict[str, Any] = await resp.json()
    assert body["status"] == status
    return body


# ----------------------------------------------------------------------------- storing and serving


async def test_a_cipher_value_is_stored_encrypted_in_redis_and_served_decrypted_only_with_the_token(
    client: Client, redis: Redis
) -> None:
    value = await put_secret(client)
    assert value.startswith("{cipher}")
    assert PASSWORD not in value
    stored = await redis.hget(doc_key("billing"), "content")
    assert stored is not None
    assert orjson.loads(stored)["billing"]["db"]["password"] == value
    assert PASSWORD not in orjson.dumps(await dump(redis)).decode()  # history included

    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        resp = await client.get("/v1/config/billing/prod", headers=headers)
        body = await problem(resp, 401)
        assert "encrypted values" in body["detail"]
        assert "CONFIGSVC_TOKEN" in body["detail"]
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert PASSWORD not in await resp.text()

    resp = await client.get("/v1/config/billing/prod", headers=AUTH)
    assert resp.status == 200
    config = (await resp.json())["config"]
    assert config["billing"]["db"] == {"user": "billing", "password": PASSWORD}
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["Vary"] == "Authorization"


async def test_an_etag_never_answers_a_request_without_the_token(client: Client) -> None:
    await put_secret(client)
    resp = await client.get("/v1/config/billing/prod", headers=AUTH)
    etag = resp.headers["ETag"]
    await problem(await client.get("/v1/config/billing/prod", headers={"If-None-Match": etag}), 401)
    resp = await client.get("/v1/config/billing/prod", headers={"If-None-Match": etag, **AUTH})
    assert resp.status == 304
    assert resp.headers["Vary"] == "Authorization"


async def test_configs_without_secrets_stay_open(client: Client) -> None:
    await put_secret(client)
    resp = await client.get("/v1/config/inventory/prod")
    assert resp.status == 200
    assert (await resp.json())["config"]["inventory"] == {"low": 5}
    assert "Vary" not in resp.headers
    assert (await client.get("/v1/documents/inventory")).status == 200


async def test_a_secret_in_application_makes_every_config_need_the_token(client: Client) -> None:
    value = await encrypt(client, PASSWORD)
    resp = await put_json(client, "application", {"smtp": {"password": value}})
    assert resp.status == 200
    await problem(await client.get("/v1/config/inventory/default"), 401)
    resp = await client.get("/v1/config/inventory/default", headers=AUTH)
    assert (await resp.json())["config"]["smtp"]["password"] == PASSWORD


async def test_a_document_with_secrets_needs_the_token_and_is_served_as_stored(
    client: Client,
) -> None:
    value = await put_secret(client)
    await problem(await client.get("/v1/documents/billing"), 401)
    await problem(await client.get("/v1/documents/billing?version=2"), 401)
    await problem(await client.get("/v1/documents/billing?decrypt=true"), 401)

    resp = await client.get("/v1/documents/billing", headers=AUTH)
    assert (await resp.json())["billing"]["db"]["password"] == value
    stored_etag = resp.headers["ETag"]
    assert resp.headers["Cache-Control"] == "no-store"

    resp = await client.get("/v1/documents/billing?decrypt=true", headers=AUTH)
    assert (await resp.json())["billing"]["db"]["password"] == PASSWORD
    assert resp.headers["ETag"] != stored_etag

    # What is read can be written back as is: the secret stays encrypted.
    resp = await client.get("/v1/documents/billing?format=toml", headers=AUTH)
    toml = await resp.read()
    resp = await client.put(
        "/v1/documents/billing", data=toml, headers={"Content-Type": "application/toml", **AUTH}
    )
    assert (await resp.json())["changed"] is False

    # History shows hashes, never contents: it stays open and holds no secret.
    resp = await client.get("/v1/documents/billing/history")
    text = await resp.text()
    assert resp.status == 200
    assert PASSWORD not in text
    assert value.removeprefix("{cipher}") not in text


async def test_older_versions_without_secrets_stay_open(client: Client) -> None:
    await put_secret(client)
    resp = await client.get("/v1/documents/billing?version=1")
    assert resp.status == 200
    assert "password" not in (await resp.json())["billing"]["db"]


# ----------------------------------------------------------------------------- POST /v1/encrypt


async def test_encrypt_takes_text_or_a_json_string_and_each_value_serves_the_plaintext(
    client: Client,
) -> None:
    from_text = await encrypt(client, "pässwörd\n")
    resp = await client.post(
        "/v1/encrypt", data=orjson.dumps("pässwörd\n"), headers={"Content-Type": "application/json", **AUTH}
    )  # fmt: skip
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "no-store"
    from_json = await resp.json()
    assert from_text.startswith("{cipher}")
    assert from_json.startswith("{cipher}")
    assert from_text != from_json  # random IV: the same plaintext never gives the same value
    resp = await put_json(client, "orders", {"a": from_text, "b": [from_json]})
    assert resp.status == 201
    config = (await (await client.get("/v1/config/orders/default", headers=AUTH)).json())["config"]
    assert (config["a"], config["b"]) == ("pässwörd\n", ["pässwörd\n"])


BAD_ENCRYPTS = [
    pytest.param(b"", "text/plain", 422, id="empty"),
    pytest.param(b'""', "application/json", 422, id="empty-json-string"),
    pytest.param(b"42", "application/json", 422, id="json-number"),
    pytest.param(b'{"value": "x"}', "application/json", 422, id="json-object"),
    pytest.param(b'"unterminated', "application/json", 400, id="malformed-json"),
    pytest.param(b"\xff\xfe", "text/plain", 400, id="not-utf8"),
    pytest.param(b"x" * (64 * 1024 + 1), "text/plain", 413, id="too-large"),
    pytest.param(b"password=x", "application/x-www-form-urlencoded", 415, id="form"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "content_type", "status"), BAD_ENCRYPTS)
async def test_bad_encrypt_requests_are_problems(
    client: Client, body: bytes, content_type: str, status: int
) -> None:
    resp = await client.post(
        "/v1/encrypt", data=body, headers={"Content-Type": content_type, **AUTH}
    )
    await problem(resp, status)


async def test_encrypt_without_a_key_is_unavailable(
    make_client: Callable[..., Awaitable[Client]],
) -> None:
    client = await make_client(encrypt_key=Secret(""))
    resp = await client.post(
        "/v1/encrypt", data=b"x", headers={"Content-Type": "text/plain", **AUTH}
    )
    body = await problem(resp, 503)
    assert "CONFIGSVC_ENCRYPT_KEY" in body["detail"]


# ----------------------------------------------------------------------------- refused writes


def foreign_value() -> str:
    return "{cipher}" + Fernet(OTHER_KEY.encode()).encrypt(PASSWORD.encode()).decode()


def tampered_value() -> str:
    token = Fernet(KEY.encode()).encrypt(PASSWORD.encode()).decode()
    middle = len(token) // 2
    return (
        "{cipher}" + token[:middle] + ("A" if token[middle] != "A" else "B") + token[middle + 1 :]
    )


UNDECRYPTABLE = [
    pytest.param(lambda: "{cipher}" + PASSWORD, id="plaintext-after-the-prefix"),
    pytest.param(lambda: "{cipher}", id="nothing-after-the-prefix"),
    pytest.param(foreign_value, id="another-key"),
    pytest.param(tampered_value, id="tampered"),
]


@pytest.mark.parametrize("make_value", UNDECRYPTABLE)
async def test_a_cipher_value_that_does_not_decrypt_is_refused_and_nothing_is_stored(
    client: Client, redis: Redis, make_value: Callable[[], str]
) -> None:
    await put_secret(client)
    before = await dump(redis)
    value = make_value()
    doc = {"billing": {"db": {"password": value}, "keys": ["plain", value]}}
    resp = await put_json(client, "billing", doc)
    body = await problem(resp, 422)
    assert [e["field"] for e in body["errors"]] == ["billing.db.password", "billing.keys[1]"]
    text = await resp.text()
    assert PASSWORD not in text
    assert value.removeprefix("{cipher}") not in text or value == "{cipher}"
    assert await dump(redis) == before


async def test_without_a_key_cipher_values_are_refused(
    make_client: Callable[..., Awaitable[Client]], redis: Redis
) -> None:
    client = await make_client(encrypt_key=Secret(""))
    before = await dump(redis)
    resp = await put_json(client, "billing", {"db": {"password": foreign_value()}})
    body = await problem(resp, 422)
    assert "CONFIGSVC_ENCRYPT_KEY" in body["detail"]
    assert await dump(redis) == before


async def test_configsvc_refuses_writes_without_its_token(client: Client, redis: Redis) -> None:
    await put_secret(client)
    before = await dump(redis)
    writes = [
        ("put", "/v1/documents/orders", "application/json", b'{"a": 1}'),
        ("delete", "/v1/documents/billing", "application/json", b""),
        ("post", "/v1/documents/billing/rollback?version=1", "application/json", b""),
        ("post", "/v1/reload", "application/json", b""),
        ("post", "/v1/encrypt", "text/plain", PASSWORD.encode()),
    ]
    for method, path, content_type, data in writes:
        for auth in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
            resp = await client.request(
                method, path, data=data, headers={"Content-Type": content_type, **auth}
            )
            body = await problem(resp, 401)
            assert "CONFIGSVC_TOKEN" in body["detail"], path
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert await dump(redis) == before


# ----------------------------------------------------------------------------- key changes


async def test_a_rotated_key_still_decrypts_and_a_lost_key_is_a_clear_error(
    make_client: Callable[..., Awaitable[Client]],
) -> None:
    first = await make_client()
    await put_secret(first)

    # Rotation: the new key first (it encrypts), the old one still decrypts.
    rotated = await make_client(encrypt_key=Secret(f"{OTHER_KEY},{KEY}"))
    resp = await rotated.get("/v1/config/billing/prod", headers=AUTH)
    assert (await resp.json())["config"]["billing"]["db"]["password"] == PASSWORD
    new_value = await encrypt(rotated, PASSWORD)
    assert Fernet(OTHER_KEY.encode()).decrypt(new_value.removeprefix("{cipher}").encode())

    # The old key dropped: what it encrypted can't be served, nor rolled back to.
    lost = await make_client(encrypt_key=Secret(OTHER_KEY))
    resp = await lost.get("/v1/config/billing/prod", headers=AUTH)
    body = await problem(resp, 500)
    assert "billing.db.password" in body["detail"]
    assert "CONFIGSVC_ENCRYPT_KEY" in body["detail"]
    await put_json(lost, "billing", {"billing": {"currency": "EUR"}})
    resp = await lost.post("/v1/documents/billing/rollback?version=2", headers=AUTH)
    body = await problem(resp, 422)
    assert "billing.db.password" in body["detail"]


# ----------------------------------------------------------------------------- the config directory


async def test_the_directory_may_hold_cipher_values_that_decrypt(
    make_client: Callable[..., Awaitable[Client]], config_dir: Path, redis: Redis
) -> None:
    value = "{cipher}" + Fernet(KEY.encode()).encrypt(PASSWORD.encode()).decode()
    (config_dir / "billing-prod.toml").write_text(f'[billing.db]\npassword = "{value}"\n')
    client = await make_client()
    resp = await client.get("/v1/config/billing/prod", headers=AUTH)
    assert (await resp.json())["config"]["billing"]["db"]["password"] == PASSWORD
    assert PASSWORD not in orjson.dumps(await dump(redis)).decode()


async def test_a_directory_with_an_undecryptable_value_is_not_imported(
    client: Client, config_dir: Path, redis: Redis
) -> None:
    before = await dump(redis)
    (config_dir / "billing.toml").write_text(f'[billing.db]\npassword = "{foreign_value()}"\n')
    resp = await client.post("/v1/reload", headers=AUTH)
    body = await problem(resp, 422)
    assert body["errors"][0]["file"] == "billing.toml"
    assert "billing.db.password" in body["errors"][0]["reason"]
    assert PASSWORD not in await resp.text()
    assert await dump(redis) == before


# ----------------------------------------------------------------------------- the ConfigClient


@pytest.fixture
async def service(
    aiohttp_server: Callable[..., Awaitable[TestServer]], redis_url: str, config_dir: Path
) -> TestServer:
    return await aiohttp_server(configsvc.build_app(settings(redis_url, config_dir)))


@pytest.fixture
async def clients() -> AsyncIterator[Callable[..., Awaitable[ConfigClient]]]:
    made: list[ConfigClient] = []

    async def make(url: str, **kw: Any) -> ConfigClient:
        client = ConfigClient(url, "billing", "prod", retries=3, resync_interval=0.5, **kw)
        made.append(client)
        await client.start()
        return client

    yield make
    for client in made:
        await client.stop()


async def put_secret_over_http(url: str) -> None:
    async with aiohttp.ClientSession(headers=AUTH) as session:
        async with session.post(
            f"{url}/v1/encrypt", data=PASSWORD, headers={"Content-Type": "text/plain"}
        ) as resp:
            value = await resp.text()
        doc = {"billing": {"currency": "EUR", "db": {"user": "billing", "password": value}}}
        async with session.put(f"{url}/v1/documents/billing", json=doc) as resp:
            assert resp.status == 200, await resp.text()


async def test_a_client_with_the_token_gets_the_plaintext_and_keeps_it_owner_only(
    service: TestServer,
    clients: Callable[..., Awaitable[ConfigClient]],
    tmp_path: Path,
) -> None:
    url = str(service.make_url("")).rstrip("/")
    await put_secret_over_http(url)
    client = await clients(url, token=Secret(TOKEN), cache_dir=tmp_path / "cache")
    assert client.source == "server"
    assert client.get("billing.db.password") == PASSWORD
    copy = tmp_path / "cache" / "config-billing-prod.json"
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600


async def test_a_client_without_the_token_keeps_its_last_known_config_and_says_why_once(
    service: TestServer,
    clients: Callable[..., Awaitable[ConfigClient]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = str(service.make_url("")).rstrip("/")
    cache = tmp_path / "cache"
    first = await clients(url, cache_dir=cache)  # no secret yet: open
    known = first.version
    await first.stop()
    await put_secret_over_http(url)

    caplog.set_level(logging.INFO, logger="essaim.config")
    client = await clients(url, cache_dir=cache)
    assert (client.source, client.version) == ("disk", known)
    assert client.get("billing.db.password") is None
    assert "401" in (client.describe()["last_error"] or "")
    # The background keeps asking (every resync), without a line per attempt.
    fetches = client.fetches
    await wait_until(lambda: client.fetches >= fetches + 2, 10.0, message="retries")
    refusals = [r for r in caplog.records if "refused the read" in r.getMessage()]
    assert len(refusals) == 1
    assert "token" in refusals[0].getMessage()
    assert PASSWORD not in caplog.text


async def test_a_running_client_without_the_token_keeps_its_config_when_a_secret_appears(
    service: TestServer,
    clients: Callable[..., Awaitable[ConfigClient]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = str(service.make_url("")).rstrip("/")
    client = await clients(url)
    known = client.version
    caplog.set_level(logging.INFO, logger="essaim.config")
    await put_secret_over_http(url)
    await wait_until(lambda: client.describe()["server"] == "DOWN", 10.0, message="refused")
    fetches = client.fetches
    await wait_until(lambda: client.fetches >= fetches + 2, 10.0, message="retries")
    assert (client.version, client.get("billing.db.user")) == (known, "billing")
    refusals = [r for r in caplog.records if "refused the read" in r.getMessage()]
    assert len(refusals) == 1


async def test_config_watch_with_the_token_prints_the_plaintext(service: TestServer) -> None:
    url = str(service.make_url("")).rstrip("/")
    await put_secret_over_http(url)
    args = ["--profile", "prod", "--print-config", "true", "--token", TOKEN]
    watchers = WatcherProcesses(url, "billing", args=args)
    try:
        await watchers.start(timeout=30.0)
        start = orjson.loads(watchers.output[0][0])
        assert start["source"] == "server"
        assert start["config"]["billing"]["db"]["password"] == PASSWORD
    finally:
        assert await watchers.stop() == [0]


# ----------------------------------------------------------------------------- the process


async def test_the_process_log_holds_neither_plaintext_nor_ciphertext(
    components: ComponentFactory, redis_url: str, config_dir: Path
) -> None:
    comp = await components.start(
        "configsvc",
        "--config-dir", str(config_dir), "--log-level", "debug",
        "--data-dir", str(config_dir.parent / "data"),
        env={"REDIS_URL": redis_url, "CONFIGSVC_TOKEN": TOKEN, "CONFIGSVC_ENCRYPT_KEY": KEY},
    )  # fmt: skip
    await put_secret_over_http(comp.url)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{comp.url}/v1/config/billing/prod", headers=AUTH) as resp:
            assert (await resp.json())["config"]["billing"]["db"]["password"] == PASSWORD
        async with session.get(f"{comp.url}/v1/documents/billing", headers=AUTH) as resp:
            value = (await resp.json())["billing"]["db"]["password"]
        async with session.get(f"{comp.url}/v1/config/billing/prod") as resp:
            assert resp.status == 401
        bad = {"billing": {"db": {"password": "{cipher}" + PASSWORD}}}
        async with session.put(f"{comp.url}/v1/documents/billing", json=bad, headers=AUTH) as resp:
            assert resp.status == 422
    assert comp.terminate() == 0
    log = comp.log
    assert "document billing: version 2" in log  # the log is there, and says what changed
    assert PASSWORD not in log
    assert value.removeprefix("{cipher}") not in log
    assert KEY not in log


@pytest.mark.parametrize(
    ("env", "message"),
    [
        pytest.param({"CONFIGSVC_ENCRYPT_KEY": KEY}, "CONFIGSVC_TOKEN: required with CONFIGSVC_ENCRYPT_KEY", id="key-without-token"),
        pytest.param({"CONFIGSVC_ENCRYPT_KEY": "not-a-key", "CONFIGSVC_TOKEN": TOKEN}, "CONFIGSVC_ENCRYPT_KEY: key 1 of 1 is not a Fernet key", id="malformed-key"),
    ],
)  # fmt: skip
async def test_bad_encryption_settings_fail_at_start_with_one_line(
    components: ComponentFactory, redis_url: str, env: dict[str, str], message: str
) -> None:
    comp = await components.start("configsvc", env={"REDIS_URL": redis_url, **env}, health=None)
    assert await asyncio.to_thread(comp.process.wait, 15) == 2
    assert message in comp.log
    assert "not-a-key" not in comp.log
