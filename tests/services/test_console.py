"""The console's API (services/console), on a real registry, configsvc and gateway.

The console runs in the test's process on a loopback port, verifying tokens
signed by the test's key; the registry, configsvc and the gateway are real
processes on the test's Redis. What a browser shows is in tests/browser.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient

from core.registry.credentials import status_token
from core.service.scaffold import build_app
from core.settings import Secret
from core.testing import ComponentFactory, free_port, wait_until
from services.console.service import SERVICE, ConsoleSettings
from services.console.sse import read_events
from services.console.traffic import parse_metrics, quantile
from tests.minting import AUDIENCE, ISSUER, Signer, jwks

Client = TestClient[Any, Any]
OPERATOR = "operator-token"
CONFIG = "config-token"


@pytest_asyncio.fixture
async def signer() -> AsyncIterator[tuple[str, Signer]]:
    """A JWKS endpoint for one key; the console verifies tokens with it."""
    key = Signer("k1")

    async def serve(request: web.Request) -> web.Response:
        return web.json_response(jwks(key))

    app = web.Application()
    app.router.add_get("/jwks.json", serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}/jwks.json", key
    await runner.cleanup()


class Parts:
    """Where the registry, configsvc and (when started) the gateway answer."""

    def __init__(self, registry: str, configsvc: str) -> None:
        self.registry, self.configsvc = registry, configsvc
        self.admin = self.gateway = ""


@pytest_asyncio.fixture
async def parts(components: ComponentFactory, redis_url: str, tmp_path: Path) -> Parts:
    config = tmp_path / "config"
    config.mkdir()
    (config / "billing.toml").write_text('[billing]\ncurrency = "EUR"\ntax_rate = 0.2\n')
    env = {"REDIS_URL": redis_url}
    registry, configsvc = await asyncio.gather(
        components.start("registry", env={**env, "REGISTRY_TOKEN": OPERATOR}),
        components.start("configsvc", "--config-dir", str(config),
                         env={**env, "CONFIGSVC_TOKEN": CONFIG}),
    )  # fmt: skip
    return Parts(registry.url, configsvc.url)


@pytest_asyncio.fixture
async def gateway(parts: Parts, components: ComponentFactory, redis_url: str) -> Parts:
    """The parts with a gateway (one worker) too."""
    admin = free_port()
    started = await components.start("gateway", "--admin-port", str(admin), "--workers", "1",
                                     env={"REDIS_URL": redis_url}, health_port=admin)  # fmt: skip
    parts.admin, parts.gateway = f"http://127.0.0.1:{admin}", started.url
    return parts


Make = Callable[..., Awaitable[Client]]


@pytest.fixture
def console(
    aiohttp_client: Callable[..., Awaitable[Client]],
    redis_url: str,
    tmp_path: Path,
    signer: tuple[str, Signer],
) -> Make:
    async def make(parts: Parts | None = None, *, verify: bool = True) -> Client:
        urls = {} if parts is None else {
            "registry_url": parts.registry,
            "status_token": Secret(status_token(Secret(OPERATOR))),
            "config_url": parts.configsvc, "config_token": Secret(CONFIG),
            "gateway_admin_url": parts.admin,
        }  # fmt: skip
        if not urls.get("gateway_admin_url"):
            urls.pop("gateway_admin_url", None)
        keys = {"jwks_url": signer[0], "jwt_issuer": ISSUER, "jwt_audience": AUDIENCE}
        settings = ConsoleSettings(
            redis_url=redis_url, data_dir=str(tmp_path / "console"), instance_id="console-test",
            poll_interval=0.2, **urls, **(keys if verify else {}),
        )  # fmt: skip
        return await aiohttp_client(build_app(SERVICE, settings))

    return make


def bearer(signer: tuple[str, Signer], user: str, *roles: str) -> dict[str, str]:
    token = signer[1].token(sub=f"id-{user}", preferred_username=user, roles=list(roles))
    return {"Authorization": f"Bearer {token}"}


async def register(parts: Parts, service: str, instance: str, port: int) -> None:
    async with aiohttp.ClientSession() as http:
        url = f"{parts.registry}/v1/services/{service}/instances/{instance}"
        body = {"host": "127.0.0.1", "port": port, "metadata": {"version": "1.2.3"}}
        async with http.put(url, json=body, headers={"Authorization": f"Bearer {OPERATOR}"}) as r:
            assert r.status in (200, 201), await r.text()


async def state(client: Client, headers: dict[str, str]) -> dict[str, Any]:
    resp = await client.get("/api/state", headers=headers)
    assert resp.status == 200, await resp.text()
    doc: dict[str, Any] = await resp.json()
    return doc


def instances(doc: dict[str, Any], service: str) -> dict[str, dict[str, Any]]:
    found = [s for s in doc["services"]["services"] if s["name"] == service]
    return {i["id"]: i for i in found[0]["instances"]} if found else {}


# ----------------------------------------------------------------------------- reading


async def test_a_login_sees_every_part_and_the_stream_brings_a_new_instance_at_once(
    console: Make, gateway: Parts, signer: tuple[str, Signer]
) -> None:
    parts = gateway
    client = await console(parts)
    alice = bearer(signer, "alice", "user")
    assert (await client.get("/api/state")).status == 401
    await register(parts, "probe", "p1", 9001)
    doc = await wait_until(lambda: _with(client, alice, "probe", "p1"), 10, message="p1 listed")
    assert instances(doc, "probe")["p1"]["metadata"] == {"version": "1.2.3"}
    assert instances(doc, "probe")["p1"]["status"] == "UP"
    assert [d["name"] for d in doc["config"]["documents"]] == ["billing"]
    assert doc["gateway"]["reachable"] is True
    assert doc["gateway"]["routes"]["source"]
    assert doc["events"]["reachable"] is True

    async with client.get("/api/stream", headers=alice) as stream:
        assert stream.headers["Content-Type"] == "text/event-stream"
        events = read_events(stream.content)
        first = await anext(events)
        assert (first.event, orjson.loads(first.data)["doc"]["user"]) == ("hello", "alice")
        await register(parts, "probe", "p2", 9002)

        async def p2_streamed() -> bool:
            async for event in events:
                if event.event == "services":
                    doc = {"services": orjson.loads(event.data)["doc"]}
                    if "p2" in instances(doc, "probe"):
                        return True
            return False

        assert await asyncio.wait_for(p2_streamed(), 10)


async def _with(client: Client, headers: dict[str, str], service: str, instance: str) -> Any:
    doc = await state(client, headers)
    return doc if instance in instances(doc, service) else None


async def test_the_gateway_part_shows_each_service_s_rate_errors_and_latency(
    console: Make, gateway: Parts, signer: tuple[str, Signer]
) -> None:
    parts = gateway
    calls = 0

    async def flaky(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        return web.Response(status=500 if calls % 4 == 0 else 200, text="x")

    app = web.Application()
    app.router.add_get("/{tail:.*}", flaky)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        await register(parts, "flaky", "f1", port)
        client = await console(parts)
        alice = bearer(signer, "alice", "user")
        await state(client, alice)  # the first read of the counters
        async with aiohttp.ClientSession() as http:

            async def routed() -> bool:
                async with http.get(f"{parts.gateway}/flaky/x") as r:
                    return r.status != 404

            await wait_until(routed, 10, message="the gateway routes to flaky")
            calls = 0
            for _ in range(40):
                async with http.get(f"{parts.gateway}/flaky/x", headers={"X-Try": "1"}) as r:
                    await r.read()

        async def figures() -> dict[str, Any] | None:
            rows = {s["name"]: s for s in (await state(client, alice))["gateway"]["services"]}
            row = rows.get("flaky")
            return row if row and row["requests"] >= 40 else None

        row = await wait_until(figures, 10, message="the gateway's counters read twice")
        assert row["rate"] > 0
        assert 0 < row["error_rate"] < 1  # 5xx answered (retried ones too) over all answers
        assert 0 < row["p50"] <= row["p99"]  # milliseconds
        assert row["breaker"] in ("CLOSED", "OPEN", "HALF_OPEN")
        assert row["endpoints"] == 1
    finally:
        await runner.cleanup()


# ----------------------------------------------------------------------------- acting


async def test_only_an_admin_acts_and_each_action_is_audited_with_the_token_s_user(
    console: Make, parts: Parts, signer: tuple[str, Signer], caplog: pytest.LogCaptureFixture
) -> None:
    client = await console(parts)
    await register(parts, "probe", "p1", 9001)
    await wait_until(lambda: _with(client, bearer(signer, "x"), "probe", "p1"), 10, message="p1")
    url = "/api/services/probe/instances/p1/status"
    refused = await client.post(url, json={"status": "OUT_OF_SERVICE"},
                                headers=bearer(signer, "alice", "user"))  # fmt: skip
    assert refused.status == 403
    assert refused.content_type == "application/problem+json"
    assert instances(await state(client, bearer(signer, "x")), "probe")["p1"]["status"] == "UP"

    caplog.set_level(logging.INFO, logger="essaim.audit")
    admin = bearer(signer, "ada", "admin")
    done = await client.post(url, json={"status": "OUT_OF_SERVICE"}, headers=admin)
    assert done.status == 200, await done.text()
    assert (await done.json())["instance"]["status"] == "OUT_OF_SERVICE"
    async with (  # the registry itself says so
        aiohttp.ClientSession() as http,
        http.get(f"{parts.registry}/v1/services/probe?all=1") as r,
    ):
        assert [i["status"] for i in (await r.json())["instances"]] == ["OUT_OF_SERVICE"]
    audit = (await state(client, admin))["audit"]["entries"]
    assert [(e["user"], e["action"], e["target"], e["detail"], e["outcome"]) for e in audit] == [
        ("ada", "instance.status", "probe/p1", "UP -> OUT_OF_SERVICE", "done")
    ]
    assert any(
        "ada (roles admin) instance.status probe/p1: UP -> OUT_OF_SERVICE: done" in r.getMessage()
        for r in caplog.records
    )
    # The console never takes itself out of service.
    own = await client.post("/api/services/console/instances/console-test/status",
                            json={"status": "OUT_OF_SERVICE"}, headers=admin)  # fmt: skip
    assert own.status == 409


async def test_a_rollback_is_a_new_version_with_the_old_content_and_the_diff_shows_it(
    console: Make, parts: Parts, signer: tuple[str, Signer]
) -> None:
    client = await console(parts)
    async with (
        aiohttp.ClientSession() as http,
        http.put(f"{parts.configsvc}/v1/documents/billing",
                 json={"billing": {"currency": "EUR", "tax_rate": 0.25}},
                 headers={"Authorization": f"Bearer {CONFIG}"}) as r,
    ):  # fmt: skip
        assert r.status == 200
    alice = bearer(signer, "alice", "user")

    async def at_version_2() -> bool:
        docs = (await state(client, alice))["config"]["documents"]
        return bool(docs) and docs[0]["version"] == 2

    await wait_until(at_version_2, 10, message="configsvc's change followed")
    diff = await (await client.get("/api/config/billing/diff?from=1&to=2", headers=alice)).json()
    assert "-tax_rate = 0.2" in diff["diff"]
    assert "+tax_rate = 0.25" in diff["diff"]
    assert (await client.post("/api/config/billing/rollback", json={"version": 1},
                              headers=alice)).status == 403  # fmt: skip
    admin = bearer(signer, "ada", "admin")
    done = await client.post("/api/config/billing/rollback", json={"version": 1}, headers=admin)
    assert (await done.json())["version"] == 3
    shown = await (await client.get("/api/config/billing/versions/3", headers=alice)).json()
    assert "tax_rate = 0.2\n" in shown["toml"]
    missing = await client.post("/api/config/billing/rollback", json={"version": 9},
                                headers=admin)  # fmt: skip
    assert missing.status == 404
    outcomes = [e["outcome"] for e in (await state(client, admin))["audit"]["entries"]]
    assert outcomes[0].startswith("refused: 404")
    assert outcomes[1] == "done"


async def test_bad_input_is_a_problem_and_changes_nothing(
    console: Make, parts: Parts, signer: tuple[str, Signer]
) -> None:
    client = await console(parts)
    admin = bearer(signer, "ada", "admin")
    await register(parts, "probe", "p1", 9001)
    # The console learns of it from the registry's stream: wait, then refuse the bad input.
    await wait_until(lambda: _with(client, admin, "probe", "p1"), 10, message="p1 listed")
    url = "/api/services/probe/instances/p1/status"
    for body, status in (({"status": "DOWN"}, 422), ({"status": 1}, 400), ({"x": 1}, 422)):
        resp = await client.post(url, json=body, headers=admin)
        assert (resp.status, resp.content_type) == (status, "application/problem+json"), body
    resp = await client.post(url, data=b"{", headers={**admin, "Content-Type": "application/json"})
    assert resp.status == 400
    for path in ("/api/config/billing/diff?from=0&to=2", "/api/config/billing/diff?from=1"):
        assert (await client.get(path, headers=admin)).status == 400
    bad_ids = await client.post("/api/events/inventory/dead/replay",
                                json={"ids": ["nope"]}, headers=admin)  # fmt: skip
    assert bad_ids.status == 422
    doc = await state(client, admin)
    assert instances(doc, "probe")["p1"]["status"] == "UP"
    assert doc["audit"]["entries"] == []


async def test_a_replay_for_a_group_whose_service_is_away_is_refused_and_audited(
    console: Make, parts: Parts, signer: tuple[str, Signer]
) -> None:
    client = await console(parts)
    admin = bearer(signer, "ada", "admin")
    resp = await client.post("/api/events/nobody/dead/replay", json={"ids": ["1-0"]},
                             headers=admin)  # fmt: skip
    assert resp.status == 503
    entry = (await state(client, admin))["audit"]["entries"][0]
    assert (entry["action"], entry["target"]) == ("dead_letters.replay", "nobody")
    assert entry["outcome"].startswith("refused: 503")


async def test_without_a_jwks_url_it_shows_everything_and_refuses_every_action(
    console: Make, parts: Parts
) -> None:
    client = await console(parts, verify=False)
    await register(parts, "probe", "p1", 9001)
    assert (await client.get("/api/state")).status == 200
    resp = await client.post("/api/services/probe/instances/p1/status",
                             json={"status": "OUT_OF_SERVICE"})  # fmt: skip
    assert resp.status == 403
    assert "without --jwks-url" in (await resp.json())["detail"]
    assert (await client.get("/api/me")).status == 200


async def test_the_page_is_served_under_the_gateway_s_prefix_with_a_strict_policy(
    console: Make, signer: tuple[str, Signer]
) -> None:
    client = await console()
    page = await client.get("/", headers={"X-Forwarded-Prefix": "/console"})
    assert page.status == 200
    text = await page.text()
    assert '<base href="/console/">' in text
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    odd = await client.get("/", headers={"X-Forwarded-Prefix": '/x"><script>'})
    assert '<base href="/">' in await odd.text()
    script = await client.get("/assets/console.js")
    assert script.content_type == "text/javascript"
    again = await client.get(
        "/assets/console.js", headers={"If-None-Match": script.headers["ETag"]}
    )
    assert again.status == 304
    assert (await client.get("/assets/nope.js")).status == 404
    # Unconfigured parts say so, rather than failing.
    doc = await state(client, bearer(signer, "alice", "user"))
    assert doc["gateway"] == {"reachable": False, "configured": False,
                              "error": doc["gateway"]["error"]}  # fmt: skip
    assert "--gateway-admin-url" in doc["gateway"]["error"]


# ----------------------------------------------------------------------------- pieces


def test_percentiles_interpolate_inside_the_histogram_s_buckets() -> None:
    buckets = {0.001: 50.0, 0.01: 90.0, 0.1: 100.0, float("inf"): 100.0}
    assert quantile(0.5, buckets) == pytest.approx(0.001)
    assert quantile(0.7, buckets) == pytest.approx(0.001 + 0.009 * 20 / 40)
    assert quantile(0.99, buckets) == pytest.approx(0.01 + 0.09 * 9 / 10)
    assert quantile(0.5, {0.1: 0.0, float("inf"): 0.0}) is None
    assert quantile(0.99, {0.1: 1.0, float("inf"): 10.0}) == 0.1  # beyond the last bound


def test_the_gateway_s_metrics_are_summed_per_service_over_its_routes() -> None:
    text = "\n".join((
        'gateway_requests_total{route="a",service="s",status="200"} 3.0',
        'gateway_requests_total{route="b",service="s",status="503"} 1.0',
        'gateway_requests_total{route="a",service="unmatched",status="404"} 7.0',
        'gateway_request_duration_seconds_bucket{le="0.01",route="a",service="s"} 2.0',
        'gateway_request_duration_seconds_bucket{le="+Inf",route="a",service="s"} 3.0',
        'gateway_request_duration_seconds_bucket{le="0.01",route="b",service="s"} 1.0',
        'gateway_request_duration_seconds_bucket{le="+Inf",route="b",service="s"} 1.0',
    )) + "\n"  # fmt: skip
    counters = parse_metrics(text)
    assert set(counters) == {"s"}
    assert (counters["s"].requests, counters["s"].errors) == (4.0, 1.0)
    assert counters["s"].buckets == {0.01: 3.0, float("inf"): 4.0}


async def test_an_event_stream_is_read_event_by_event() -> None:
    reader = aiohttp.StreamReader(_Protocol(), 2**16, loop=asyncio.get_running_loop())
    reader.feed_data(b": comment\nretry: 1000\n\nid: 7\nevent: change\ndata: {\"a\":\ndata: 1}\n\n"
                     b"data: plain\r\n\r\n")  # fmt: skip
    reader.feed_eof()
    got = [(e.event, e.data, e.id) async for e in read_events(reader)]
    assert got == [("change", '{"a":\n1}', "7"), ("message", "plain", "7")]


class _Protocol:
    """What aiohttp's StreamReader asks of its protocol (flow control), for a reader fed by hand."""

    _reading_paused = False

    def pause_reading(self) -> None: ...

    def resume_reading(self, resume_parser: bool = True) -> None: ...
