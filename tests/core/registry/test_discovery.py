"""Registration and Watcher against a real Redis, including Redis killed and restarted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from core.redis import REDIS_ERRORS, Redis, connect, publish_command
from core.registry.discovery import Registration, Watcher
from core.registry.store import (
    CHANNEL,
    DEADLINES_KEY,
    REV_KEY,
    Instance,
    RegistryStore,
    index_key,
)
from core.testing import RedisServer, wait_until


def instance(
    iid: str = "c1", *, ttl: int = 3, port: int = 9001, service: str = "customers"
) -> Instance:
    return Instance(service=service, id=iid, host="127.0.0.1", port=port, ttl=ttl)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = connect(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def watcher(redis: Redis) -> AsyncIterator[Watcher]:
    w = Watcher(redis, resync_interval=60)
    await w.start(wait=5)
    assert w.connected
    yield w
    await w.stop()


def ids(w: Watcher, service: str = "customers") -> list[str]:
    return [i.id for i in w.instances(service)]


async def test_registration_registers_and_deregisters_on_stop(
    redis: Redis, watcher: Watcher
) -> None:
    reg = Registration(redis, instance("c1"))
    await reg.start(wait=5)
    await watcher.wait_for(lambda w: ids(w) == ["c1"])
    await reg.stop()
    await watcher.wait_for(lambda w: ids(w) == [])
    assert await RegistryStore(redis).instances("customers") == []


async def test_registration_keeps_the_instance_alive_past_its_ttl(redis: Redis) -> None:
    reg = Registration(redis, instance("c1", ttl=1))
    await reg.start(wait=5)
    store = RegistryStore(redis)
    loop = asyncio.get_running_loop()
    started = loop.time()
    heartbeats: set[str | None] = set()

    async def alive_for_two_ttls() -> bool:
        current = await store.instances("customers")
        assert current, "the instance expired although it was heartbeating"
        heartbeats.add(current[0].last_heartbeat)
        return loop.time() - started > 2 * reg.instance.ttl

    await wait_until(alive_for_two_ttls, timeout=5, interval=0.05)
    assert len(heartbeats) >= 3  # renewed every TTL/3
    assert reg.registrations == 1  # never had to register again
    await reg.stop()


async def test_registration_registers_again_after_the_instance_expired(redis: Redis) -> None:
    reg = Registration(redis, instance("c1", ttl=1))
    await reg.start(wait=5)
    store = RegistryStore(redis)
    # The deadline passes as if the TTL ran out while the process was paused.
    await redis.zadd(DEADLINES_KEY, {"customers/c1": 0})
    assert not await store.heartbeat("customers", "c1")
    await wait_until(lambda: reg.registrations >= 2, timeout=3, message="re-registration")
    assert [i.id for i in await store.instances("customers")] == ["c1"]
    await reg.stop()


async def test_watcher_follows_register_update_deregister_and_expiry(
    redis: Redis, watcher: Watcher
) -> None:
    store = RegistryStore(redis)
    changes: list[set[str]] = []
    watcher.on_change(changes.append)
    await store.register(instance("a", ttl=1))
    await store.register(instance("b", ttl=30))
    await watcher.wait_for(lambda w: ids(w) == ["a", "b"])
    await store.update("customers", "b", {"status": "OUT_OF_SERVICE"})
    await watcher.wait_for(lambda w: ids(w) == ["a"])
    assert [i.status for i in watcher.all_instances("customers") if i.id == "b"] == [
        "OUT_OF_SERVICE"
    ]
    await store.deregister("customers", "b")
    await watcher.wait_for(lambda w: watcher.all_instances("customers")[0].id == "a")

    # Expiry: nothing heartbeats "a"; the sweep publishes down.
    async def expired() -> int:
        return (await store.sweep())[0]

    await wait_until(expired, timeout=3, message="a expired")
    await watcher.wait_for(lambda w: w.all_instances("customers") == [])
    assert {"customers"} in changes
    assert watcher.gaps == 0


async def test_a_revision_gap_makes_the_watcher_relist(redis: Redis, watcher: Watcher) -> None:
    store = RegistryStore(redis)
    await store.register(instance("a"))
    await watcher.wait_for(lambda w: ids(w) == ["a"])
    relists = watcher.relists
    # Three changes whose messages were lost: the registry bumped the revision
    # but the watcher never heard of them. The next event shows the gap.
    await redis.incrby(REV_KEY, 3)
    await store.register(instance("b"))
    await watcher.wait_for(lambda w: ids(w) == ["a", "b"] and w.relists > relists)
    assert watcher.gaps == 1
    assert watcher.rev == await store.rev()


async def test_watcher_keeps_its_snapshot_while_redis_is_down_and_converges_after(
    redis_factory: Callable[..., RedisServer],
) -> None:
    server = redis_factory()
    client = connect(server.url)
    watcher = Watcher(client, resync_interval=60)
    reg = Registration(client, instance("c1", ttl=1))
    try:
        await watcher.start(wait=5)
        await reg.start(wait=5)
        await watcher.wait_for(lambda w: ids(w) == ["c1"])

        server.kill()
        await wait_until(
            lambda: not watcher.connected, timeout=5, message="watcher sees Redis gone"
        )
        assert ids(watcher) == ["c1"]  # last-known snapshot, still served

        server.start()  # empty: every registration is lost
        # Back within one heartbeat interval (TTL/3) plus the reconnect backoff
        # (kept meanwhile as preserved, no longer once registered again).
        await wait_until(
            lambda: watcher.connected and not watcher.preserved and reg.registrations >= 2,
            timeout=reg.interval + 2.5,
            message="registered again",
        )
        assert ids(watcher) == ["c1"]
        assert reg.registrations >= 2
        assert [i.id for i in await RegistryStore(client).instances("customers")] == ["c1"]
    finally:
        await reg.stop()
        await watcher.stop()
        await client.aclose()


async def test_a_quick_redis_restart_is_noticed_and_the_watcher_relists(
    redis_factory: Callable[..., RedisServer],
) -> None:
    """Restarted faster than any client notices: revisions start over below the watcher's."""
    server = redis_factory()
    client = connect(server.url)
    watcher = Watcher(client, resync_interval=60, grace=0.5)
    try:
        await watcher.start(wait=5)
        store = RegistryStore(client)
        for iid in ("a", "b", "c"):
            await store.register(instance(iid))
        await watcher.wait_for(lambda w: ids(w) == ["a", "b", "c"])
        server.kill()
        server.start()

        async def register_new() -> bool:
            await store.register(instance("new"))  # rev 1 in the new, empty Redis
            return True

        await wait_until(register_new, timeout=5)
        # The new one at once; the lost ones kept for their grace, then dropped.
        await watcher.wait_for(lambda w: "new" in ids(w), timeout=5)
        await watcher.wait_for(lambda w: ids(w) == ["new"], timeout=5)
        assert watcher.rev == await store.rev()
        assert watcher.preserved_total == 3
    finally:
        await watcher.stop()
        await client.aclose()


async def test_instances_lost_by_an_emptied_redis_stay_routable_until_they_register_again(
    redis_factory: Callable[..., RedisServer],
) -> None:
    server = redis_factory()
    client = connect(server.url)
    watcher = Watcher(client, resync_interval=60, grace=5.0)
    reg = Registration(client, instance("c1", ttl=3))
    seen: list[list[str]] = []
    try:
        await watcher.start(wait=5)
        await reg.start(wait=5)
        await watcher.wait_for(lambda w: ids(w) == ["c1"])
        first = watcher.instances("customers")[0]
        watcher.on_change(lambda _: seen.append(ids(watcher)))
        server.kill()
        server.start()  # empty
        await wait_until(lambda: watcher.connected and watcher.relists >= 2, timeout=5)
        assert reg.registrations >= 1
        # Back by its own registration, within a heartbeat interval plus backoff,
        # as the same process (same registration time): never out of the snapshot.
        await wait_until(
            lambda: watcher.connected and not watcher.preserved and reg.registrations >= 2,
            timeout=reg.interval + 3,
            message="registered again",
        )
        assert ids(watcher) == ["c1"]
        assert [] not in seen
        assert watcher.instances("customers")[0].registered_at == first.registered_at
    finally:
        await reg.stop()
        await watcher.stop()
        await client.aclose()


async def test_redis_restarted_empty_between_heartbeats_gets_the_instance_back_at_once(
    redis_factory: Callable[..., RedisServer],
) -> None:
    """Watching Redis, a registration does not wait for its next heartbeat (TTL/3 = 10 s here)."""
    server = redis_factory()
    client = connect(server.url)
    reg = Registration(client, instance("c1", ttl=30), redis=client)
    store = RegistryStore(client)
    try:
        await reg.start(wait=5)
        await wait_until(lambda: reg.presence is not None and reg.presence.connected.is_set())
        server.kill()
        server.start()  # empty, within a heartbeat interval
        loop = asyncio.get_running_loop()
        back = loop.time()

        async def listed() -> bool:
            try:
                return [i.id for i in await store.instances("customers")] == ["c1"]
            except REDIS_ERRORS:
                return False

        await wait_until(listed, timeout=reg.interval / 2, message="registered again")
        assert loop.time() - back < reg.interval / 2
        # Counted once Redis's answer is read, which can come after the listing above.
        await wait_until(lambda: reg.registrations == 2, message="the registration counted")
    finally:
        await reg.stop()
        await client.aclose()


async def test_a_relist_on_an_unbroken_connection_drops_what_is_missing(
    redis: Redis, watcher: Watcher
) -> None:
    store = RegistryStore(redis)
    await store.register(instance("a"))
    await watcher.wait_for(lambda w: ids(w) == ["a"])
    # Gone without an event reaching the watcher (as if the message were lost).
    await redis.hdel(index_key("customers"), "a")
    await redis.zrem(DEADLINES_KEY, "customers/a")
    await watcher.relist()
    assert ids(watcher) == []
    assert not watcher.preserved


async def test_a_malformed_message_costs_a_relist_not_the_subscription(
    redis: Redis, watcher: Watcher
) -> None:
    relists = watcher.relists
    await redis.execute_command(publish_command(redis), CHANNEL, "not json")
    await wait_until(lambda: watcher.relists > relists, timeout=5, message="relist")
    await RegistryStore(redis).register(instance("a"))
    await watcher.wait_for(lambda w: ids(w) == ["a"])


async def test_watcher_started_while_redis_is_down_catches_up_when_it_comes(
    redis_factory: Callable[..., RedisServer],
) -> None:
    server = redis_factory()
    client = connect(server.url)
    server.kill()
    watcher = Watcher(client, resync_interval=60)
    await watcher.start(wait=0.2)
    try:
        assert not watcher.connected
        assert watcher.instances("customers") == ()
        server.start()
        await RegistryStore(client).register(instance("c1"))
        await watcher.wait_for(lambda w: ids(w) == ["c1"], timeout=10)
    finally:
        await watcher.stop()
        await client.aclose()


async def test_periodic_resync_rereads_everything(redis: Redis) -> None:
    watcher = Watcher(redis, resync_interval=0.2)
    await watcher.start(wait=5)
    try:
        first = watcher.relists
        await wait_until(lambda: watcher.relists >= first + 2, timeout=3, message="resyncs")
    finally:
        await watcher.stop()


async def test_watcher_wait_for_times_out(watcher: Watcher) -> None:
    with pytest.raises(TimeoutError):
        await watcher.wait_for(lambda w: w.known("never"), timeout=0.1)


def test_instance_url_brackets_ipv6() -> None:
    inst = Instance(service="s", id="i", host="::1", port=80)
    assert inst.url == "http://[::1]:80"
    assert instance().url == "http://127.0.0.1:9001"


async def test_describe_reports_the_watchers_state(watcher: Watcher, redis: Redis) -> None:
    await RegistryStore(redis).register(instance("a"))
    await watcher.wait_for(lambda w: ids(w) == ["a"])
    state: dict[str, Any] = watcher.describe()
    assert state["connected"] is True
    assert state["services"] == 1
    assert state["instances"] == 1
    assert state["rev"] == 1
