"""ConfigClient against a real config service (real HTTP, real Redis): start, reload, fallbacks."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer

import configsvc
from core.config.client import ConfigClient
from core.config.document import content_hash
from core.config.store import CHANNEL, REV_KEY, doc_key
from core.errors import StartupError
from core.redis import Redis, connect
from core.testing import RedisServer, free_port, subscribed, wait_until

APPLICATION = '[http]\ntimeout = 10.0\nretries = 2\n\n[log]\nlevel = "info"\n'
BILLING = '[billing]\ncurrency = "EUR"\ntax_rate = 0.2\n\n[http]\ntimeout = 5.0\n'
INVENTORY = "[inventory]\nlow = 5\n"

ServerFactory = Callable[..., Awaitable[TestServer]]
ClientFactory = Callable[..., Awaitable[ConfigClient]]


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    path = tmp_path / "config"
    path.mkdir()
    (path / "application.toml").write_text(APPLICATION)
    (path / "billing.toml").write_text(BILLING)
    (path / "inventory.toml").write_text(INVENTORY)
    return path


@pytest.fixture
def start_service(
    aiohttp_server: Callable[..., Awaitable[TestServer]], redis_url: str, config_dir: Path
) -> ServerFactory:
    """Runs the config service in this process on a real loopback port."""

    async def start(redis: str = redis_url, port: int | None = None) -> TestServer:
        settings = configsvc.Settings(
            redis_url=redis,
            config_dir=str(config_dir),
            data_dir=str(config_dir.parent / f"data-{redis.rsplit(':', 1)[-1]}"),
            import_check_interval=0.1,
        )
        return await aiohttp_server(configsvc.build_app(settings), port=port)

    return start


@pytest.fixture
async def service(start_service: ServerFactory) -> TestServer:
    return await start_service()


def url_of(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


@pytest.fixture
async def make_client(redis: Redis) -> AsyncIterator[ClientFactory]:
    """Starts ConfigClients (with Redis and a short resync unless told) and stops them all."""
    made: list[ConfigClient] = []

    async def make(url: str | None, app: str = "billing", **kw: Any) -> ConfigClient:
        kw.setdefault("redis", redis)
        kw.setdefault("resync_interval", 0.5)
        kw.setdefault("retries", 2)
        client = ConfigClient(url, app, **kw)
        made.append(client)
        await client.start()
        return client

    yield make
    for client in made:
        await client.stop()


async def put(url: str, name: str, doc: Mapping[str, Any]) -> str:
    """PUT a document, then return the merged version of billing/default now served."""
    async with aiohttp.ClientSession() as session:
        async with session.put(f"{url}/v1/documents/{name}", json=doc) as resp:
            assert resp.status in (200, 201), await resp.text()
        async with session.get(f"{url}/v1/config/billing/default") as resp:
            return str((await resp.json())["version"])


async def served_version(url: str, app: str = "billing") -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{url}/v1/config/{app}/default") as resp,
    ):
        return str((await resp.json())["version"])


# ----------------------------------------------------------------------------- start and reload


async def test_start_fetches_the_merged_config(service: TestServer, make_client: ClientFactory) -> None:  # fmt: skip
    client = await make_client(url_of(service))
    assert client.source == "server"
    assert client.version == await served_version(url_of(service))
    assert client.config["http"]["timeout"] == 5.0
    assert client.config["http"]["retries"] == 2
    assert client.get("billing.currency") == "EUR"
    assert client.get("billing.nothing", 7) == 7
    info = client.describe()
    assert (info["source"], info["server"], info["last_rejection"]) == ("server", "UP", None)
    await wait_until(lambda: client.describe()["connected"], 5.0, message="subscribed")


async def test_the_config_handed_out_is_read_only(service: TestServer, make_client: ClientFactory) -> None:  # fmt: skip
    client = await make_client(url_of(service))
    with pytest.raises(TypeError):
        client.config["http"]["timeout"] = 1  # type: ignore[index]


async def test_a_change_is_applied_within_a_deadline_with_changed_keys(
    service: TestServer, make_client: ClientFactory
) -> None:
    client = await make_client(url_of(service))
    seen: list[tuple[str, set[str]]] = []

    async def record(config: Mapping[str, Any], changed: set[str]) -> None:
        seen.append((config["billing"]["currency"], changed))

    client.on_change(record)
    version = await put(
        url_of(service), "billing", {"billing": {"currency": "CHF", "tax_rate": 0.2}}
    )
    await client.wait_for(lambda c: c.version == version, timeout=2.0)
    assert client.config["billing"]["currency"] == "CHF"
    assert client.config["http"]["timeout"] == 10.0  # billing no longer overrides it
    await wait_until(lambda: seen, 2.0, message="callback ran")
    assert seen == [("CHF", {"billing.currency", "http.timeout"})]


async def test_a_change_to_application_reaches_every_app(
    service: TestServer, make_client: ClientFactory
) -> None:
    billing = await make_client(url_of(service), "billing")
    inventory = await make_client(url_of(service), "inventory")
    await put(url_of(service), "application", {"log": {"level": "debug"}})
    for client in (billing, inventory):
        await client.wait_for(lambda c: c.get("log.level") == "debug", timeout=2.0)


async def test_a_change_to_another_app_is_not_fetched(
    service: TestServer, make_client: ClientFactory, redis: Redis
) -> None:
    client = await make_client(url_of(service), resync_interval=60.0)
    # Connected, and the fetch its connection asks for begun (counted) if not done.
    await wait_until(
        lambda: client.connected and client.rev is not None and not client._wanted.is_set(), 5.0
    )
    fetches, version = client.fetches, client.version
    await put(url_of(service), "inventory", {"inventory": {"low": 1}})
    rev = int(await redis.get(REV_KEY) or 0)
    await wait_until(lambda: client.rev == rev, 2.0, message="revision followed")
    assert (client.fetches, client.version) == (fetches, version)


async def test_a_lost_message_is_detected_by_the_revision_gap(
    service: TestServer, make_client: ClientFactory, redis: Redis
) -> None:
    client = await make_client(url_of(service), resync_interval=60.0)
    await wait_until(lambda: client.connected and client.rev is not None, 5.0)
    # Change billing behind the service's back, as if its message were lost.
    doc = {"billing": {"currency": "SEK"}}
    await redis.hset(doc_key("billing"), mapping={"version": 99, "hash": content_hash(doc),
                                                   "content": orjson.dumps(doc)})  # fmt: skip
    await redis.incr(REV_KEY)
    await put(url_of(service), "inventory", {"inventory": {"low": 2}})
    await client.wait_for(lambda c: c.get("billing.currency") == "SEK", timeout=2.0)
    assert client.gaps == 1


# ----------------------------------------------------------------------------- validation


async def test_a_rejected_version_keeps_the_last_good_config_and_is_reported(
    service: TestServer, make_client: ClientFactory
) -> None:
    client = await make_client(url_of(service))
    good = client.version
    called: list[set[str]] = []

    def no_xxx(config: Mapping[str, Any]) -> None:
        if config["billing"]["currency"] == "XXX":
            raise ValueError("currency XXX is not allowed")

    client.add_validator(no_xxx)
    client.on_change(lambda config, changed: called.append(changed))
    bad = await put(url_of(service), "billing", {"billing": {"currency": "XXX"}})
    await wait_until(lambda: client.describe()["last_rejection"], 2.0, message="rejection")
    assert client.describe()["last_rejection"]["version"] == bad
    assert client.describe()["last_rejection"]["reason"] == "currency XXX is not allowed"
    assert client.version == good
    assert client.config["billing"]["currency"] == "EUR"
    assert called == []
    fixed = await put(url_of(service), "billing", {"billing": {"currency": "NOK"}})
    await client.wait_for(lambda c: c.version == fixed, timeout=2.0)
    assert client.describe()["last_rejection"] is None


@dataclasses.dataclass(frozen=True)
class Billing:
    currency: str
    tax_rate: float = 0.0
    late_fee: bool = False


async def test_typed_view_gives_a_frozen_object_per_version(
    service: TestServer, make_client: ClientFactory
) -> None:
    client = await make_client(url_of(service))
    view = client.typed(Billing, "billing")
    first = view.current
    assert first == Billing("EUR", 0.2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.currency = "X"  # type: ignore[misc]
    version = await put(
        url_of(service), "billing", {"billing": {"currency": "DKK", "late_fee": True}}
    )
    await client.wait_for(lambda c: c.version == version, timeout=2.0)
    assert view.current == Billing("DKK", 0.0, True)
    assert view.version == version
    assert first.currency == "EUR"


async def test_typed_view_rejects_a_version_that_does_not_fit(
    service: TestServer, make_client: ClientFactory
) -> None:
    client = await make_client(url_of(service))
    view = client.typed(Billing, "billing")
    await put(url_of(service), "billing", {"billing": {"currency": "EUR", "tax_rate": "high"}})
    await wait_until(lambda: client.describe()["last_rejection"], 2.0, message="rejection")
    assert "billing.tax_rate: expected a number" in client.describe()["last_rejection"]["reason"]
    assert view.current == Billing("EUR", 0.2)


async def test_typed_view_that_does_not_fit_the_config_in_force_raises(
    service: TestServer, make_client: ClientFactory
) -> None:
    @dataclasses.dataclass(frozen=True)
    class Needs:
        missing: int

    client = await make_client(url_of(service))
    with pytest.raises(ValueError, match="missing: required"):
        client.typed(Needs, "billing")


# ----------------------------------------------------------------------------- service away


async def test_fail_fast_start_fails_when_the_service_is_down(make_client: ClientFactory) -> None:
    with pytest.raises(StartupError, match="config for billing/default"):
        await make_client(f"http://127.0.0.1:{free_port()}", fail_fast=True, retries=1)


async def test_without_fail_fast_it_starts_on_the_last_known_copy_then_heals(
    start_service: ServerFactory, make_client: ClientFactory, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    port = free_port()
    service = await start_service(port=port)
    url = url_of(service)
    first = await make_client(url, cache_dir=cache)
    known = first.version
    await first.stop()
    await service.close()
    client = await make_client(url, cache_dir=cache, retries=1)
    assert (client.source, client.version) == ("disk", known)
    assert client.get("billing.currency") == "EUR"
    assert client.describe()["server"] == "DOWN"
    await start_service(port=port)
    await wait_until(lambda: client.source == "server", 10.0, message="back on the server")
    assert client.version == known


async def test_without_a_copy_it_starts_on_the_defaults(make_client: ClientFactory, tmp_path: Path) -> None:  # fmt: skip
    client = await make_client(
        f"http://127.0.0.1:{free_port()}",
        cache_dir=tmp_path / "empty",
        defaults={"billing": {"currency": "EUR", "tax_rate": 0.0}},
        retries=0,
    )
    assert (client.source, client.version) == ("defaults", None)
    assert client.config["billing"]["tax_rate"] == 0.0
    assert client.describe()["last_error"]


async def test_defaults_fill_what_the_service_does_not_set(
    service: TestServer, make_client: ClientFactory
) -> None:
    client = await make_client(
        url_of(service), defaults={"billing": {"currency": "USD", "rounding": "half-even"}}
    )
    assert client.get("billing.currency") == "EUR"
    assert client.get("billing.rounding") == "half-even"


async def test_without_a_url_it_serves_the_defaults(make_client: ClientFactory) -> None:
    client = await make_client(None, defaults={"a": {"b": 1}}, redis=None)
    assert client.config == {"a": {"b": 1}}
    assert client.describe()["source"] == "defaults"


async def test_without_redis_it_polls(service: TestServer, make_client: ClientFactory) -> None:
    client = await make_client(url_of(service), redis=None, resync_interval=0.1)
    version = await put(url_of(service), "billing", {"billing": {"currency": "PLN"}})
    await client.wait_for(lambda c: c.version == version, timeout=3.0)


async def test_redis_restarted_between_two_changes_the_client_converges(
    start_service: ServerFactory,
    make_client: ClientFactory,
    redis_factory: Callable[..., RedisServer],
) -> None:
    server = redis_factory()
    service = await start_service(redis=server.url)
    own = connect(server.url)
    try:
        client = await make_client(url_of(service), redis=own)
        first = await put(url_of(service), "billing", {"billing": {"currency": "ISK"}})
        await client.wait_for(lambda c: c.version == first, timeout=2.0)
        server.kill()
        await wait_until(lambda: not client.connected, 5.0, message="client saw Redis go")
        server.start()  # empty: the service imports its directory again

        async def second_change() -> str | None:
            try:
                return await put(url_of(service), "billing", {"billing": {"currency": "HUF"}})
            except AssertionError:
                return None  # 503 while the service reconnects

        second = await wait_until(second_change, 10.0, message="service back")
        await client.wait_for(
            lambda c: c.get("billing.currency") == "HUF" and c.version == second, timeout=10.0
        )
    finally:
        await own.aclose()


async def test_a_change_message_is_published_for_every_write(
    service: TestServer, redis: Redis
) -> None:
    async with subscribed(redis, CHANNEL) as received:
        await put(url_of(service), "billing", {"x": 1})
        await wait_until(lambda: received, 2.0)
    event = orjson.loads(received[0][1])
    assert event["document"] == "billing"
    assert event["version"] == 2


async def test_a_config_rejected_at_start_falls_back_and_is_reported(
    service: TestServer, redis: Redis
) -> None:
    client = ConfigClient(
        url_of(service), "billing", redis=redis, defaults={"billing": {"currency": "USD"}}
    )

    def never_eur(config: Mapping[str, Any]) -> None:
        if config["billing"]["currency"] == "EUR":
            raise ValueError("EUR is refused here")

    client.add_validator(never_eur)
    try:
        await client.start()
        assert (client.source, client.get("billing.currency")) == ("defaults", "USD")
        assert client.describe()["last_rejection"]["reason"] == "EUR is refused here"
    finally:
        await client.stop()
    strict = ConfigClient(url_of(service), "billing", redis=redis, fail_fast=True)
    strict.add_validator(never_eur)
    with pytest.raises(StartupError, match="EUR is refused here"):
        await strict.start()
