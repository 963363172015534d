"""configsvc's Spring Cloud Config API over real HTTP and a real Redis: shapes, formats, secrets."""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient
from cryptography.fernet import Fernet

import configsvc
from core.config.spring import flatten, to_properties, to_yaml
from core.settings import Secret

Client = TestClient[Any, Any]
TOKEN = "s3cret-token"
KEY = Fernet.generate_key().decode()
BASIC = {"Authorization": "Basic " + base64.b64encode(f"spring:{TOKEN}".encode()).decode()}


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    path = tmp_path / "config"
    path.mkdir()
    (path / "application.toml").write_text('[log]\nlevel = "info"\n')
    (path / "billing.toml").write_text(
        '[billing]\ncurrency = "EUR"\ntax_rate = 0.2\nregions = ["eu", "us"]\n'
        '[[billing.replicas]]\nhost = "a"\n'
    )
    (path / "billing-prod.toml").write_text('[billing]\ncurrency = "USD"\n[log]\nlevel = "warn"\n')
    (path / "billing-eu.toml").write_text("[billing]\neu = true\n")
    return path


@pytest.fixture
async def make_client(
    aiohttp_client: Callable[..., Awaitable[Client]], redis_url: str, config_dir: Path
) -> Callable[..., Awaitable[Client]]:
    async def make(**overrides: Any) -> Client:
        settings = configsvc.Settings(
            redis_url=redis_url, config_dir=str(config_dir), import_check_interval=0.1,
            data_dir=str(config_dir.parent / "data"),
            token=Secret(TOKEN), encrypt_key=Secret(KEY), **overrides,
        )  # fmt: skip
        return await aiohttp_client(configsvc.build_app(settings))

    return make


@pytest.fixture
async def client(make_client: Callable[..., Awaitable[Client]]) -> Client:
    return await make_client()


async def test_environment_lists_sources_highest_priority_first_flattened(client: Client) -> None:
    resp = await client.get("/billing/prod")
    assert resp.status == 200
    env = await resp.json()
    assert (env["name"], env["profiles"], env["label"], env["state"]) == (
        "billing",
        ["prod"],
        None,
        None,
    )
    names = [s["name"] for s in env["propertySources"]]
    assert names == ["essaim:billing-prod", "essaim:billing", "essaim:application"]
    billing = env["propertySources"][1]["source"]
    assert billing == {
        "billing.currency": "EUR",
        "billing.tax_rate": 0.2,
        "billing.regions[0]": "eu",
        "billing.regions[1]": "us",
        "billing.replicas[0].host": "a",
    }
    assert env["propertySources"][0]["source"] == {
        "billing.currency": "USD",
        "log.level": "warn",
    }


async def test_several_profiles_the_last_one_first_and_a_label_echoed(client: Client) -> None:
    env = await (await client.get("/billing/eu,prod/main")).json()
    assert env["profiles"] == ["eu", "prod"]
    assert env["label"] == "main"
    names = [s["name"] for s in env["propertySources"]]
    assert names == [
        "essaim:billing-prod",
        "essaim:billing-eu",
        "essaim:billing",
        "essaim:application",
    ]


async def test_the_version_changes_with_a_source(client: Client) -> None:
    before = (await (await client.get("/billing/prod")).json())["version"]
    again = (await (await client.get("/billing/prod")).json())["version"]
    assert before == again
    resp = await client.put(
        "/v1/documents/billing-prod",
        json={"billing": {"currency": "CHF"}},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert resp.status == 200
    env = await (await client.get("/billing/prod")).json()
    assert env["version"] != before
    assert env["propertySources"][0]["source"] == {"billing.currency": "CHF"}


async def test_files_in_yaml_properties_and_json(client: Client) -> None:
    want = {
        "log": {"level": "warn"},
        "billing": {
            "currency": "USD",
            "tax_rate": 0.2,
            "regions": ["eu", "us"],
            "replicas": [{"host": "a"}],
        },
    }
    for path in ("/billing-prod.yml", "/master/billing-prod.yaml"):
        resp = await client.get(path)
        assert resp.status == 200, path
        assert yaml.safe_load(await resp.text()) == want
    resp = await client.get("/billing-prod.json")
    assert await resp.json() == want
    resp = await client.get("/main/billing-prod.properties")
    lines = (await resp.text()).splitlines()
    assert "billing.currency: USD" in lines
    assert "billing.regions[1]: us" in lines
    assert "log.level: warn" in lines
    assert "billing.tax_rate: 0.2" in lines


async def test_cipher_values_are_decrypted_for_the_token_holder_only(client: Client) -> None:
    resp = await client.post(
        "/encrypt", data="hunter2", headers={**BASIC, "Content-Type": "text/plain"}
    )
    assert resp.status == 200
    value = await resp.text()
    assert not value.startswith("{cipher}")
    resp = await client.post(
        "/decrypt", data=value, headers={**BASIC, "Content-Type": "text/plain"}
    )
    assert await resp.text() == "hunter2"
    resp = await client.put(
        "/v1/documents/billing-prod",
        json={"billing": {"db": {"password": "{cipher}" + value}}},
        headers=BASIC,
    )
    assert resp.status == 200, await resp.text()
    resp = await client.get("/billing/prod")
    assert resp.status == 401
    assert "Basic" in resp.headers["WWW-Authenticate"]
    assert (await client.get("/billing-prod.yml")).status == 401
    resp = await client.get("/billing/prod", headers=BASIC)
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "no-store"
    env = await resp.json()
    assert env["propertySources"][0]["source"] == {"billing.db.password": "hunter2"}
    resp = await client.get("/billing-prod.yml", headers=BASIC)
    assert yaml.safe_load(await resp.text())["billing"]["db"]["password"] == "hunter2"
    resp = await client.get("/billing-prod.properties", headers=BASIC)
    assert "billing.db.password: hunter2" in (await resp.text()).splitlines()


async def test_encrypt_and_decrypt_refusals(client: Client) -> None:
    assert (await client.post("/encrypt", data="x")).status == 401
    assert (await client.post("/decrypt", data="x")).status == 401
    resp = await client.post("/encrypt", data="", headers=BASIC)
    assert resp.status == 400
    assert resp.content_type == "application/problem+json"
    resp = await client.post("/decrypt", data="not-a-token", headers=BASIC)
    assert resp.status == 400
    resp = await client.post(
        "/encrypt",
        data="pw=",
        headers={**BASIC, "Content-Type": "application/x-www-form-urlencoded"},
    )
    value = await resp.text()
    resp = await client.post("/decrypt", data="{cipher}" + value, headers=BASIC)
    assert await resp.text() == "pw"


async def test_bad_names_and_the_reserved_v1(client: Client) -> None:
    resp = await client.get("/bad_name/prod")
    assert resp.status == 422
    assert resp.content_type == "application/problem+json"
    resp = await client.get("/v1/prod")
    assert resp.status == 404
    assert "reserved" in (await resp.json())["detail"]
    resp = await client.get("/billing.yml")  # no profile
    assert resp.status == 404
    # The native API is untouched.
    assert (await client.get("/v1/documents")).status == 200
    assert (await client.get("/v1/config/billing/prod")).status == 200
    assert (await client.get("/health")).status == 200


def test_flatten_and_render_edge_values() -> None:
    doc = {"a": {"b": [1, {"c": True}], "empty": {}, "none": []}, "t": "x: y\n#z"}
    assert flatten(doc) == {"a.b[0]": 1, "a.b[1].c": True, "t": "x: y\n#z"}
    tricky = {
        "yes": "no",
        "key with space": "  lead",
        "n": [[1, 2], []],
        "f": float("inf"),
        "u": "é\u2028\"'",
    }
    assert yaml.safe_load(to_yaml(tricky)) == tricky
    assert to_properties({"a b": " x\n", "k": False}) == "a\\ b: \\ x\\n\nk: false\n"
