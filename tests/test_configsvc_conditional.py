"""configsvc's conditional requests, against a real process (issue 10).

Two editors can't overwrite each other (``If-Match`` answers 412 once the
document changed, checked atomically with the write), ``If-None-Match: *``
creates only, ``If-Modified-Since`` answers 304, and JSON and TOML
representations each have their own ETag under ``Vary: Accept``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from email.utils import formatdate
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from core.testing import Component, ComponentFactory

TOKEN = "cfg-s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def configsvc(components: ComponentFactory, redis_url: str, tmp_path: Path) -> Component:
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "billing.toml").write_text('[billing]\ncurrency = "EUR"\ntax_rate = 0.2\n')
    return await components.start(
        "configsvc", "--config-dir", str(config_dir), "--redis-url", redis_url,
        env={"CONFIGSVC_TOKEN": TOKEN},
    )  # fmt: skip


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def put(
    http: aiohttp.ClientSession, url: str, doc: Any, **headers: str
) -> tuple[int, dict[str, Any], str | None]:
    async with http.put(
        url, data=orjson.dumps(doc),
        headers={"Content-Type": "application/json", **AUTH, **headers},
    ) as r:  # fmt: skip
        return r.status, await r.json(content_type=None), r.headers.get("ETag")


async def get(http: aiohttp.ClientSession, url: str, **headers: str) -> aiohttp.ClientResponse:
    async with http.get(url, headers=headers) as r:
        await r.read()
        return r


async def json_at(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url) as r:
        assert r.status == 200
        return await r.json()


async def test_a_put_with_the_etag_of_an_older_version_is_412_and_changes_nothing(
    configsvc: Component, http: aiohttp.ClientSession
) -> None:
    url = f"{configsvc.url}/v1/documents/billing"
    read = await get(http, url)
    etag = read.headers["ETag"]
    # The safe edit: GET, change, PUT with If-Match. The first editor wins...
    status, body, new_etag = await put(
        http, url, {"billing": {"tax_rate": 0.25}}, **{"If-Match": etag}
    )
    assert (status, body["version"]) == (200, 2)
    assert new_etag is not None
    assert new_etag != etag
    # ...the second, who read the same version, is told it changed.
    status, problem, current = await put(
        http, url, {"billing": {"tax_rate": 0.3}}, **{"If-Match": etag}
    )
    assert status == 412
    assert problem["title"] == "Precondition Failed"
    assert "document 'billing' changed: it is at version 2" in problem["detail"]
    assert current == new_etag
    async with http.delete(url, headers={**AUTH, "If-Match": etag}) as r:
        assert r.status == 412
    assert (await get(http, url)).headers["X-Config-Version"] == "2"
    assert (await json_at(http, url))["billing"]["tax_rate"] == 0.25

    # The TOML representation's ETag names the same version: it works for If-Match too.
    toml_etag = (await get(http, url, Accept="application/toml")).headers["ETag"]
    assert (await put(http, url, {"billing": {"tax_rate": 0.3}}, **{"If-Match": toml_etag}))[
        0
    ] == 200
    # A weak tag never satisfies If-Match (strong comparison), * does while it exists.
    latest = (await get(http, url)).headers["ETag"]
    assert (await put(http, url, {"a": 1}, **{"If-Match": f"W/{latest}"}))[0] == 412
    assert (await put(http, url, {"a": 1}, **{"If-Match": "*"}))[0] == 200
    latest = (await get(http, url)).headers["ETag"]
    async with http.delete(url, headers={**AUTH, "If-Match": latest}) as r:
        assert r.status == 200
    assert (await put(http, url, {"a": 2}, **{"If-Match": "*"}))[0] == 412  # gone


async def test_concurrent_editors_of_one_version_one_wins_the_others_get_412(
    configsvc: Component, http: aiohttp.ClientSession
) -> None:
    url = f"{configsvc.url}/v1/documents/billing"
    etag = (await get(http, url)).headers["ETag"]
    results = await asyncio.gather(
        *(put(http, url, {"billing": {"editor": n}}, **{"If-Match": etag}) for n in range(8))
    )
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [200] + [412] * 7
    history = await json_at(http, f"{url}/history")
    assert len(history["versions"]) == 2  # the import and one edit


async def test_if_none_match_star_creates_only(
    configsvc: Component, http: aiohttp.ClientSession
) -> None:
    url = f"{configsvc.url}/v1/documents/orders"
    status, body, _ = await put(http, url, {"orders": {"max": 5}}, **{"If-None-Match": "*"})
    assert (status, body["created"]) == (201, True)
    status, problem, _ = await put(http, url, {"orders": {"max": 9}}, **{"If-None-Match": "*"})
    assert status == 412
    assert "already exists" in problem["detail"]
    assert await json_at(http, url) == {"orders": {"max": 5}}


async def test_if_modified_since_answers_304_until_the_document_changes(
    configsvc: Component, http: aiohttp.ClientSession
) -> None:
    url = f"{configsvc.url}/v1/documents/billing"
    read = await get(http, url)
    last_modified = read.headers["Last-Modified"]
    assert (await get(http, url, **{"If-Modified-Since": last_modified})).status == 304
    earlier = formatdate(0, usegmt=True)
    assert (await get(http, url, **{"If-Modified-Since": earlier})).status == 200
    assert (await get(http, url, **{"If-Modified-Since": "not a date"})).status == 200
    # If-None-Match takes precedence (RFC 9110 13.1.3).
    assert (
        await get(http, url, **{"If-Modified-Since": last_modified, "If-None-Match": '"0.0"'})
    ).status == 200


async def test_json_and_toml_each_have_their_etag_and_vary_on_accept(
    configsvc: Component, http: aiohttp.ClientSession
) -> None:
    url = f"{configsvc.url}/v1/documents/billing"
    as_json = await get(http, url)
    as_toml = await get(http, url, Accept="application/toml")
    assert as_toml.content_type == "application/toml"
    assert as_json.headers["ETag"] != as_toml.headers["ETag"]
    for response in (as_json, as_toml):
        assert "Accept" in [v.strip() for v in response.headers["Vary"].split(",")]
    # The JSON tag does not validate a TOML request (the cache would serve JSON for TOML).
    toml_with_json_tag = await get(
        http, url, Accept="application/toml", **{"If-None-Match": as_json.headers["ETag"]}
    )
    assert toml_with_json_tag.status == 200
    assert toml_with_json_tag.content_type == "application/toml"
    toml_again = await get(
        http, url, Accept="application/toml", **{"If-None-Match": as_toml.headers["ETag"]}
    )
    assert toml_again.status == 304


async def test_without_a_token_configsvc_warns_that_anyone_can_write(
    components: ComponentFactory, redis_url: str, tmp_path: Path
) -> None:
    (tmp_path / "config").mkdir()
    comp = await components.start(
        "configsvc", "--config-dir", str(tmp_path / "config"), "--redis-url", redis_url
    )
    warnings = [line for line in comp.log.splitlines() if "no CONFIGSVC_TOKEN" in line]
    assert len(warnings) == 1
    assert "anyone who can reach 127.0.0.1:" in warnings[0]
