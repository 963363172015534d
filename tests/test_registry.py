"""The registry over real HTTP and a real Redis: API, expiry, SSE, bad input, tokens."""

from __future__ import annotations

import asyncio
import re
import signal
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

import registry
from core.redis import Redis
from core.registry.store import DEADLINES_KEY, EVENTS_KEY, heartbeat_key
from core.settings import Secret
from core.testing import ComponentFactory, RedisServer, wait_until

Client = TestClient[Any, Any]


@pytest.fixture
async def make_client(
    aiohttp_client: Callable[..., Awaitable[Client]], redis_url: str
) -> Callable[..., Awaitable[Client]]:
    async def make(**overrides: Any) -> Client:
        overrides.setdefault("sweep_interval", 0.1)
        settings = registry.Settings(redis_url=redis_url, **overrides)
        return await aiohttp_client(registry.build_app(settings))

    return make


@pytest.fixture
async def client(make_client: Callable[..., Awaitable[Client]]) -> Client:
    return await make_client()


async def put(client: Client, service: str, iid: str, **body: Any) -> ClientResponse:
    body.setdefault("host", "127.0.0.1")
    body.setdefault("port", 9000)
    return await client.put(f"/v1/services/{service}/instances/{iid}", json=body)


async def dump(r: Redis) -> dict[str, Any]:
    """Every key with its type and value: to prove a bad request changed nothing."""
    out: dict[str, Any] = {}
    for key in sorted(await r.keys("*")):
        kind = await r.type(key)
        if kind == "string":
            out[key] = await r.get(key)
        elif kind == "hash":
            out[key] = await r.hgetall(key)
        elif kind == "set":
            out[key] = sorted(await r.smembers(key))
        elif kind == "zset":
            out[key] = await r.zrange(key, 0, -1, withscores=True)
        elif kind == "stream":
            out[key] = await r.xrange(key)
    return out


async def _true(value: bool) -> bool:
    return value


async def down_event(r: Redis) -> dict[str, Any] | None:
    """The first ``down`` event retained in the registry's stream, if any."""
    for _, fields in await r.xrange(EVENTS_KEY):
        event = orjson.loads(fields["e"])
        if event["type"] == "down":
            return dict(event)
    return None


async def test_register_then_list_shows_the_instance(client: Client) -> None:
    resp = await put(client, "customers", "c1", port=9001, metadata={"zone": "a"})
    assert resp.status == 201
    body = await resp.json()
    assert body["instance"]["host"] == "127.0.0.1"
    assert body["instance"]["port"] == 9001
    assert body["instance"]["status"] == "UP"
    assert body["instance"]["ttl"] == 10
    assert "last_heartbeat" in body["instance"]

    listing = await (await client.get("/v1/services/customers")).json()
    assert [i["id"] for i in listing["instances"]] == ["c1"]
    assert listing["instances"][0]["metadata"] == {"zone": "a"}

    services = await (await client.get("/v1/services")).json()
    assert services["services"] == {"customers": {"instances": 1, "up": 1}}


async def test_registering_again_replaces_and_answers_200(client: Client) -> None:
    assert (await put(client, "customers", "c1", port=9001)).status == 201
    resp = await put(client, "customers", "c1", port=9002)
    assert resp.status == 200
    listing = await (await client.get("/v1/services/customers")).json()
    assert [i["port"] for i in listing["instances"]] == [9002]


async def test_heartbeat_of_a_registered_instance_answers_204(client: Client) -> None:
    await put(client, "customers", "c1")
    resp = await client.put("/v1/services/customers/instances/c1/heartbeat")
    assert resp.status == 204


async def test_heartbeat_of_an_unknown_instance_is_404(client: Client) -> None:
    resp = await client.put("/v1/services/customers/instances/nope/heartbeat")
    assert resp.status == 404
    assert resp.content_type == "application/problem+json"
    assert (await resp.json())["status"] == 404


async def test_patch_status_hides_instance_from_default_listing(client: Client) -> None:
    await put(client, "customers", "c1")
    await put(client, "customers", "c2")
    resp = await client.patch(
        "/v1/services/customers/instances/c1", json={"status": "OUT_OF_SERVICE"}
    )
    assert resp.status == 200
    assert (await resp.json())["instance"]["status"] == "OUT_OF_SERVICE"
    up = await (await client.get("/v1/services/customers")).json()
    assert [i["id"] for i in up["instances"]] == ["c2"]
    everything = await (await client.get("/v1/services/customers?all=1")).json()
    assert {i["id"]: i["status"] for i in everything["instances"]} == {
        "c1": "OUT_OF_SERVICE",
        "c2": "UP",
    }


async def test_patch_metadata_replaces_it(client: Client) -> None:
    await put(client, "customers", "c1", metadata={"a": "1"})
    resp = await client.patch("/v1/services/customers/instances/c1", json={"metadata": {"b": "2"}})
    assert (await resp.json())["instance"]["metadata"] == {"b": "2"}


async def test_deregister_removes_the_instance(client: Client) -> None:
    await put(client, "customers", "c1")
    assert (await client.delete("/v1/services/customers/instances/c1")).status == 204
    listing = await (await client.get("/v1/services/customers")).json()
    assert listing["instances"] == []
    assert (await client.delete("/v1/services/customers/instances/c1")).status == 404


async def test_unknown_service_listing_is_404(client: Client) -> None:
    resp = await client.get("/v1/services/nobody")
    assert resp.status == 404
    assert (await resp.json())["title"] == "Not Found"


async def test_expired_instance_is_published_down_within_a_second_of_its_ttl(
    client: Client, redis: Redis
) -> None:
    await put(client, "customers", "c1", ttl=1)
    # The deadline is the contract: TTL (1 s) + 1 s.
    event = await wait_until(lambda: down_event(redis), timeout=2.0, message="down event")
    assert event["instance"]["id"] == "c1"
    listing = await (await client.get("/v1/services/customers")).json()
    assert listing["instances"] == []


async def test_heartbeat_after_expiry_returns_404_and_does_not_revive(
    client: Client, redis: Redis
) -> None:
    await put(client, "customers", "c1", ttl=1)

    async def gone() -> bool:
        listing = await (await client.get("/v1/services/customers")).json()
        return listing["instances"] == []

    await wait_until(gone, timeout=3.0)
    resp = await client.put("/v1/services/customers/instances/c1/heartbeat")
    assert resp.status == 404
    listing = await (await client.get("/v1/services/customers?all=1")).json()
    assert listing["instances"] == []


async def test_expiry_is_published_at_the_deadline_with_a_slow_sweep_and_no_keyspace_events(
    make_client: Callable[..., Awaitable[Client]], redis: Redis
) -> None:
    """With a 30 s sweep only the expirer's wake-up at the next deadline can be this quick.

    The registry no longer asks for keyspace notifications (they are per node
    on Cluster and often refused by managed Redis): the deadline is enough.
    """
    client = await make_client(sweep_interval=30)
    await put(client, "customers", "c1", ttl=1)
    started = asyncio.get_running_loop().time()
    await wait_until(lambda: down_event(redis), timeout=2.0, message="down at the deadline")
    assert asyncio.get_running_loop().time() - started < 1.5


async def test_a_stopping_registry_expires_nothing_while_it_cannot_take_heartbeats(
    client: Client, redis: Redis
) -> None:
    # Stopping, the registry answers no heartbeat: an instance whose deadline
    # passes meanwhile is not taken out of routing by it.
    await put(client, "customers", "c1", ttl=1)
    await client.app.shutdown()  # on_shutdown: what a SIGTERM runs first
    expiry = client.app[registry.EXPIRY_TASK]
    await wait_until(lambda: _true(expiry.done()), 5, message="the expirer stopped")

    async def deadline_passed() -> bool:
        seconds, micros = await redis.time()
        deadline = await redis.zscore(DEADLINES_KEY, "customers/c1")
        return deadline is not None and seconds * 1000 + micros // 1000 > deadline

    await wait_until(deadline_passed, 5, message="c1's deadline passed")
    assert await down_event(redis) is None
    assert await redis.zscore(DEADLINES_KEY, "customers/c1") is not None


async def test_an_event_stream_opened_while_the_registry_stops_ends_at_once(
    client: Client,
) -> None:
    # Its request was read just as the stop began: the drain must not wait for it.
    assert (await client.get("/v1/services")).status == 200  # Redis's client is set up
    await client.app.shutdown()
    resp = await client.get("/v1/events?since=0")
    assert resp.status == 200
    body = await asyncio.wait_for(resp.read(), 5)
    assert body.startswith(b": essaim registry events after rev 0\nretry: 1000\n\n")


async def test_an_event_stream_as_the_first_request_of_a_new_registry_opens(
    make_client: Callable[..., Awaitable[Client]],
) -> None:
    # Its reads are the process's first Redis calls, racing the registry's own
    # (on Cluster: while the client discovers the topology).
    for _ in range(3):
        client = await make_client()
        resp = await client.get("/v1/events?since=0")
        assert resp.status == 200, await resp.text()
        line = await asyncio.wait_for(resp.content.readline(), 5)
        assert line == b": essaim registry events after rev 0\n"
        resp.close()
        await client.close()


async def test_events_stream_replays_in_revision_order_then_follows(client: Client) -> None:
    for iid in ("a", "b", "c"):
        await put(client, "customers", iid)
    resp = await client.get("/v1/events?since=0")
    assert resp.headers["Content-Type"].startswith("text/event-stream")

    async def next_event() -> tuple[str, dict[str, Any]]:
        kind = ""
        while True:
            line = (await asyncio.wait_for(resp.content.readline(), 5)).decode().rstrip("\n")
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                return kind, orjson.loads(line[6:])

    seen = [await next_event() for _ in range(3)]
    assert [e["rev"] for _, e in seen] == [1, 2, 3]
    assert [e["instance"]["id"] for _, e in seen] == ["a", "b", "c"]
    await client.delete("/v1/services/customers/instances/b")
    kind, live = await next_event()
    assert (kind, live["rev"], live["type"]) == ("change", 4, "deregister")
    resp.close()


async def test_events_since_beyond_retention_sends_resync(client: Client, redis: Redis) -> None:
    for iid in ("a", "b", "c"):
        await put(client, "customers", iid)
    await redis.xtrim(
        EVENTS_KEY, maxlen=1, approximate=False
    )  # revisions 1 and 2 are no longer retained
    resp = await client.get("/v1/events?since=0")
    lines = []
    while not any(line.startswith("data: ") for line in lines):
        lines.append((await asyncio.wait_for(resp.content.readline(), 5)).decode().strip())
    assert "event: resync" in lines
    assert 'data: {"rev":3}' in lines
    resp.close()


async def test_events_of_another_epoch_past_a_position_are_a_resync_not_a_backlog(
    client: Client, redis: Redis
) -> None:
    """Redis emptied, then written past the position a stream holds: the events after
    it belong to another epoch, so reading them (as a stream opened before the restart
    does when its first catch-up runs after it) must say resync, in the same read."""
    from core.registry.store import RegistryStore

    store = RegistryStore(redis)
    for iid in ("a", "b", "c"):
        await put(client, "customers", iid)
    old = await store.epoch()
    assert await store.events_since(3, epoch=old) == ([], False)
    await redis.flushdb()
    for n in range(5):
        await put(client, "customers", f"d{n}")
    backlog, resync = await store.events_since(3)  # revisions alone can't tell
    assert (len(backlog), resync) == (2, False)
    assert await store.events_since(3, epoch=old) == ([], True)
    new = await store.epoch()
    assert new != old
    assert await store.events_since(5, epoch=new) == ([], False)


async def test_last_event_id_resumes_after_it(client: Client) -> None:
    for iid in ("a", "b"):
        await put(client, "customers", iid)
    resp = await client.get("/v1/events", headers={"Last-Event-ID": "1"})
    while True:
        line = (await asyncio.wait_for(resp.content.readline(), 5)).decode()
        if line.startswith("data: "):
            assert orjson.loads(line[6:])["rev"] == 2
            break
    resp.close()


async def test_last_event_id_wins_over_since_and_the_stream_says_when_to_reconnect(
    client: Client,
) -> None:
    # An EventSource opened on ?since=0 reconnects to that URL with Last-Event-ID:
    # it must resume there, not replay everything.
    for iid in ("a", "b", "c"):
        await put(client, "customers", iid)
    resp = await client.get("/v1/events?since=0", headers={"Last-Event-ID": "2"})
    lines = []
    while not any(line.startswith("data: ") for line in lines):
        lines.append((await asyncio.wait_for(resp.content.readline(), 5)).decode().rstrip("\n"))
    assert "retry: 1000" in lines
    assert [orjson.loads(line[6:])["rev"] for line in lines if line.startswith("data: ")] == [3]
    resp.close()


async def test_prometheus_http_sd_lists_every_up_instance_with_its_service(client: Client) -> None:
    await put(client, "billing", "b1", port=9001, metadata={"version": "1.2", "zone-a": "x"})
    await put(client, "billing", "b2", host="::1", port=9002, scheme="https")
    await put(client, "customers", "c1", port=9003, status="OUT_OF_SERVICE")
    resp = await client.get("/v1/prometheus/targets")
    assert resp.status == 200
    assert resp.content_type == "application/json"
    groups = await resp.json()
    # Prometheus's documented shape: a list of {"targets": [host:port], "labels": {name: str}}.
    label_name = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
    for group in groups:
        assert set(group) == {"targets", "labels"}
        assert all(isinstance(t, str) and re.match(r"^(\[[0-9a-f:]+\]|[^:]+):\d+$", t)
                   for t in group["targets"])  # fmt: skip
        assert all(label_name.match(k) and isinstance(v, str) for k, v in group["labels"].items())
    assert groups == [
        {
            "targets": ["127.0.0.1:9001"],
            "labels": {
                "service": "billing", "instance_id": "b1", "__scheme__": "http",
                "__meta_essaim_metadata_version": "1.2", "__meta_essaim_metadata_zone_a": "x",
            },
        },
        {
            "targets": ["[::1]:9002"],
            "labels": {"service": "billing", "instance_id": "b2", "__scheme__": "https"},
        },
    ]  # fmt: skip


BAD_INPUTS: list[tuple[str, str, Any, int]] = [
    ("PUT", "/v1/services/customers/instances/c1", b"{not json", 400),
    ("PUT", "/v1/services/customers/instances/c1", {"host": "h", "port": "80"}, 400),
    ("PUT", "/v1/services/customers/instances/c1", {"host": 12, "port": 80}, 400),
    ("PUT", "/v1/services/customers/instances/c1", [1, 2], 400),
    ("PUT", "/v1/services/customers/instances/c1", {"host": "h", "port": 80, "ttl": "5"}, 400),
    (
        "PUT",
        "/v1/services/customers/instances/c1",
        {"host": "h", "port": 80, "metadata": {"a": 1}},
        400,
    ),
    ("PUT", "/v1/services/Customers/instances/c1", {"host": "h", "port": 80}, 422),
    ("PUT", "/v1/services/-x/instances/c1", {"host": "h", "port": 80}, 422),
    ("PUT", "/v1/services/" + "a" * 64 + "/instances/c1", {"host": "h", "port": 80}, 422),
    ("PUT", "/v1/services/customers/instances/" + "i" * 129, {"host": "h", "port": 80}, 422),
    ("PUT", "/v1/services/customers%0A/instances/c2", {"host": "h", "port": 80}, 422),
    ("PUT", "/v1/services/customers/instances/c2%0A", {"host": "h", "port": 80}, 422),
    ("PUT", "/v1/services/customers/instances/c2", {"host": "h\n", "port": 80}, 422),
    ("PUT", "/v1/services/customers/instances/c1", {"host": "h", "port": 0}, 422),
    ("PUT", "/v1/services/customers/instances/c1", {"host": "h", "port": 65536}, 422),
    (
        "PUT",
        "/v1/services/customers/instances/c1",
        {"host": "h", "port": 80, "status": "GONE"},
        422,
    ),
    (
        "PUT",
        "/v1/services/customers/instances/c1",
        {"host": "h", "port": 80, "metadata": {"k": "v" * 4100}},
        422,
    ),
    ("PUT", "/v1/services/customers/instances/c1", {"host": "h", "port": 80, "ttl": 0}, 422),
    ("PUT", "/v1/services/customers/instances/c1", {"host": "h", "port": 80, "ttl": 301}, 422),
    ("PUT", "/v1/services/customers/instances/c1", {"host": "bad host!", "port": 80}, 422),
    ("PUT", "/v1/services/customers/instances/c1", {"port": 80}, 422),
    ("PUT", "/v1/services/customers/instances/c1", b"x" * (65 * 1024), 413),
    ("PATCH", "/v1/services/customers/instances/c1", {"status": "GONE"}, 422),
    ("PATCH", "/v1/services/customers/instances/c1", {"port": 1}, 422),
    ("PATCH", "/v1/services/customers/instances/nope", {"status": "UP"}, 404),
    ("DELETE", "/v1/services/customers/instances/nope", None, 404),
    ("PUT", "/v1/services/customers/instances/nope/heartbeat", None, 404),
    ("GET", "/v1/events?since=abc", None, 400),
]


@pytest.mark.parametrize(("method", "path", "body", "status"), BAD_INPUTS)
async def test_bad_input_gets_problem_details_and_changes_nothing(
    client: Client, redis: Redis, method: str, path: str, body: Any, status: int
) -> None:
    await put(client, "customers", "c1", port=9001)
    before = await dump(redis)
    kwargs: dict[str, Any] = {}
    if isinstance(body, bytes):
        kwargs["data"] = body
    elif body is not None:
        kwargs["json"] = body
    resp = await client.request(method, path, **kwargs)
    assert resp.status == status
    assert resp.content_type == "application/problem+json"
    problem = await resp.json()
    assert problem["status"] == status
    assert problem["title"]
    assert problem.get("detail")
    after = await dump(redis)
    for heartbeat_state in (heartbeat_key("customers"), DEADLINES_KEY):
        after.pop(heartbeat_state, None)
        before.pop(heartbeat_state, None)
    assert after == before


async def test_writes_require_the_token_when_one_is_set(
    make_client: Callable[..., Awaitable[Client]], redis: Redis
) -> None:
    client = await make_client(token=Secret("s3cret"))
    body = {"host": "127.0.0.1", "port": 9000}
    path = "/v1/services/customers/instances/c1"
    resp = await client.put(path, json=body)
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    resp = await client.put(path, json=body, headers={"Authorization": "Bearer wrong"})
    assert resp.status == 401
    assert await redis.keys("*") == []
    ok = {"Authorization": "Bearer s3cret"}
    assert (await client.put(path, json=body, headers=ok)).status == 201
    assert (await client.put(path + "/heartbeat")).status == 401
    assert (await client.patch(path, json={"status": "DOWN"})).status == 401
    assert (await client.delete(path)).status == 401
    # Reads stay open.
    assert (await client.get("/v1/services/customers")).status == 200
    assert (await client.delete(path, headers=ok)).status == 204


async def test_redis_down_answers_503_and_heals(
    aiohttp_client: Callable[..., Awaitable[Client]],
    redis_factory: Callable[..., RedisServer],
) -> None:
    server = redis_factory()
    client = await aiohttp_client(
        registry.build_app(registry.Settings(redis_url=server.url, sweep_interval=0.1))
    )
    assert (await put(client, "customers", "c1")).status == 201
    server.kill()
    resp = await put(client, "customers", "c2")
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "1"
    assert (await resp.json())["title"] == "Service Unavailable"
    assert (await client.get("/health")).status == 503
    # Alive (a liveness probe must not restart it for Redis's outage), not ready.
    assert (await client.get("/health/live")).status == 200
    resp = await client.get("/health/ready")
    assert resp.status == 503
    ready = await resp.json()
    assert ready["failing"] == ["redis"]
    assert ready["checks"]["redis"] == {"status": "DOWN", "detail": "unreachable"}
    server.start()

    async def healed() -> bool:
        return (await put(client, "customers", "c2")).status == 201

    await wait_until(healed, timeout=10.0, message="registry healed")
    assert (await client.get("/health")).status == 200
    assert (await client.get("/health/ready")).status == 200


def test_a_start_setting_outside_the_live_bounds_fails_at_start(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert registry.main(["--sweep-interval", "120"]) == 2
    assert capsys.readouterr().err.strip() == (
        "registry: REGISTRY_SWEEP_INTERVAL: expected (0, 60] seconds, got 120.0"
    )
    assert registry.main(["--sweep-interval", "nan"]) == 2
    assert "expected a finite number" in capsys.readouterr().err


async def test_an_sse_stream_spanning_a_quick_redis_restart_gets_a_resync(
    aiohttp_client: Callable[..., Awaitable[Client]],
    redis_factory: Callable[..., RedisServer],
) -> None:
    server = redis_factory()
    client = await aiohttp_client(
        registry.build_app(registry.Settings(redis_url=server.url, sweep_interval=0.1))
    )
    for iid in ("a", "b", "c"):
        await put(client, "customers", iid)
    resp = await client.get("/v1/events?since=3")
    assert (await asyncio.wait_for(resp.content.readline(), 5)).startswith(b": essaim")
    server.kill()
    server.start()  # empty: revisions start over below the stream's position

    async def resync_seen() -> bool:
        await put(client, "customers", "d")  # fails with 503 until the registry is back
        line = await asyncio.wait_for(resp.content.readline(), 1)
        return line.strip() == b"event: resync"

    await wait_until(resync_seen, timeout=10, message="resync after the restart")
    resp.close()


async def test_a_stream_gets_a_resync_when_new_revisions_pass_its_position_before_it_reconnects(
    aiohttp_client: Callable[..., Awaitable[Client]],
    redis_factory: Callable[..., RedisServer],
) -> None:
    """Redis emptied, then 5 writes at once: revisions 1 to 5 of a new epoch are
    past the stream's 3 before its subscription is back. It must still say resync:
    a, b and c are gone, whatever the numbers say."""
    server = redis_factory()
    client = await aiohttp_client(
        registry.build_app(registry.Settings(redis_url=server.url, sweep_interval=0.1))
    )
    for iid in ("a", "b", "c"):
        await put(client, "customers", iid)
    resp = await client.get("/v1/events?since=3")
    assert (await asyncio.wait_for(resp.content.readline(), 5)).startswith(b": essaim")
    server.kill()
    server.start()

    async def written() -> bool:
        return (await put(client, "customers", "d0")).status < 300

    await wait_until(written, timeout=10, message="the registry writes again")
    for i in range(1, 5):
        assert (await put(client, "customers", f"d{i}")).status < 300
    lines: list[bytes] = []

    async def resync_seen() -> bool:
        lines.append(await asyncio.wait_for(resp.content.readline(), 10))
        return lines[-1].strip() == b"event: resync"

    await wait_until(resync_seen, timeout=10, message="resync after the restart")
    assert not any(b'"id":"d' in line for line in lines), lines  # nothing of the new epoch first
    resp.close()


def test_refuses_to_listen_off_loopback_without_a_token(capsys: pytest.CaptureFixture[str]) -> None:
    assert registry.main(["--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "REGISTRY_TOKEN" in err
    assert len(err.strip().splitlines()) == 1


def test_a_malformed_setting_fails_with_one_line_naming_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REGISTRY_DEFAULT_TTL", "ten")
    assert registry.main([]) == 2
    assert capsys.readouterr().err.strip() == (
        "registry: REGISTRY_DEFAULT_TTL: expected an integer, got 'ten'"
    )


def test_help_lists_every_flag() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "registry", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for flag in ("--host", "--port", "--redis-url", "--log-format", "--token", "--default-ttl"):
        assert flag in out
    assert "REGISTRY_PORT" in out
    assert "REDIS_URL" in out


async def test_sigterm_stops_the_process_with_exit_0(
    components: ComponentFactory, redis_url: str
) -> None:
    comp = await components.start("registry", "--redis-url", redis_url, "--log-format", "json")
    comp.process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(comp.process.wait, 15) == 0
    lines = [orjson.loads(line) for line in comp.log.splitlines() if line.startswith("{")]
    assert any(rec["msg"] == "stopped" for rec in lines)
    assert all({"ts", "level", "logger", "msg"} <= rec.keys() for rec in lines)


async def test_a_port_in_use_fails_start_with_exit_3(
    components: ComponentFactory, redis_url: str
) -> None:
    first = await components.start("registry", "--redis-url", redis_url)
    second = await components.start(
        "registry", "--redis-url", redis_url, port=first.port, health=None
    )
    assert await asyncio.to_thread(second.process.wait, 15) == 3
    assert "cannot listen on" in second.log


async def test_dynamic_settings_follow_configsvc_without_restart(
    make_client: Callable[..., Awaitable[Client]],
    components: ComponentFactory,
    redis_url: str,
    tmp_path: Path,
) -> None:
    (tmp_path / "config").mkdir()
    configsvc = await components.start(
        "configsvc", "--redis-url", redis_url, "--config-dir", str(tmp_path / "config"),
        "--data-dir", str(tmp_path / "data"),
    )  # fmt: skip
    client = await make_client(config_url=configsvc.url)

    async def ttl_given_by_default() -> int:
        body = await (await put(client, "customers", "c1")).json()
        return int(body["instance"]["ttl"])

    assert await ttl_given_by_default() == 10
    document = configsvc.url + "/v1/documents/registry"
    async with aiohttp.ClientSession() as http:
        async with http.put(document, json={"default_ttl": 42}) as resp:
            assert resp.status in (200, 201)
        await wait_until(lambda: _equals(ttl_given_by_default(), 42), timeout=5)

        # A version the registry can't use is rejected; the last good one stays.
        async with http.put(document, json={"default_ttl": 0}) as resp:
            assert resp.status in (200, 201)

        async def rejection_reported() -> bool:
            health = await (await client.get("/health")).json()
            rejected = health["config"]["last_rejection"]
            return rejected is not None and "default_ttl" in rejected["reason"]

        await wait_until(rejection_reported, timeout=5)
        assert await ttl_given_by_default() == 42
        # The rejection makes it unready (still alive), until a good version comes.
        resp = await client.get("/health/ready")
        ready = await resp.json()
        assert (resp.status, ready["failing"]) == (503, ["config"])
        assert "default_ttl" in ready["checks"]["config"]["detail"]["rejected"]["reason"]
        assert (await client.get("/health/live")).status == 200
        async with http.put(document, json={"default_ttl": 12}) as resp:
            assert resp.status in (200, 201)
        await wait_until(lambda: _equals(ttl_given_by_default(), 12), timeout=5)
        assert (await client.get("/health/ready")).status == 200


async def _equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected
