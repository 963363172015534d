from __future__ import annotations

import signal
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from core import redis as core_redis
from core.db import Database
from core.events.bus import Event, EventBus, Keys
from core.events.consumer import Consumer
from core.events.dead_letters import dead_letters
from core.redis import Redis
from core.testing import RedisServer, wait_until
from tests.core.event_worker import MIGRATIONS, count_handler, counter, spawn

STREAM = Keys().stream("item.created")


@pytest_asyncio.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = core_redis.connect(redis_url)
    yield client
    await client.aclose()


@pytest_asyncio.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await Database.open(tmp_path / "data", "billing", MIGRATIONS)
    yield database
    await database.close()


@pytest_asyncio.fixture
async def make_consumer(redis: Redis, db: Database) -> AsyncIterator[Callable[..., Consumer]]:
    made: list[Consumer] = []

    def make(**overrides: Any) -> Consumer:
        options: dict[str, Any] = {
            "group": "billing",
            "consumer": f"c{len(made)}",
            "types": ["item.created"],
            "visibility_timeout": 0.3,
            "block_ms": 50,
        }
        options.update(overrides)
        if "async_handler" not in options:
            options.setdefault("handler", count_handler)
        consumer = Consumer(options.pop("redis", redis), options.pop("db", db), **options)
        made.append(consumer)
        return consumer

    yield make
    for consumer in made:
        await consumer.stop()


async def _count(db: Database, name: str = "item.created") -> int:
    row = await db.run(
        lambda c: c.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
    )
    return int(row[0]) if row else 0


async def _pending(redis: Redis, stream: str = STREAM, group: str = "billing") -> int:
    info: Any = await redis.xpending(stream, group)
    return int(info["pending"])


async def test_each_event_is_delivered_and_acknowledged(
    redis: Redis, db: Database, make_consumer: Callable[..., Consumer]
) -> None:
    consumer = make_consumer()
    await consumer.start(wait=5)
    await EventBus(redis).publish_many([Event("item.created", "inventory", n) for n in range(25)])
    await wait_until(lambda: _count(db), 5, message="first event handled")
    await wait_until(lambda: consumer.handled == 25, 5, message="25 events handled")
    assert await _count(db) == 25
    assert await _pending(redis) == 0


async def test_events_published_before_the_group_existed_are_delivered(
    redis: Redis, db: Database, make_consumer: Callable[..., Consumer]
) -> None:
    await EventBus(redis).publish(Event("item.created", "inventory", 1))
    await make_consumer().start()
    await wait_until(lambda: _count(db), 5, message="event published earlier handled")


async def test_start_from_dollar_skips_the_history(
    redis: Redis, db: Database, make_consumer: Callable[..., Consumer]
) -> None:
    bus = EventBus(redis)
    await bus.publish(Event("item.created", "inventory", "old"))
    consumer = make_consumer(start_from="$")
    await consumer.start(wait=5)
    await bus.publish(Event("item.created", "inventory", "new"))
    await wait_until(lambda: consumer.handled == 1, 5)
    assert await _count(db) == 1


async def test_only_the_consumer_types_are_delivered(
    redis: Redis, db: Database, make_consumer: Callable[..., Consumer]
) -> None:
    consumer = make_consumer(types=["item.created", "item.deleted"])
    await consumer.start(wait=5)
    bus = EventBus(redis)
    await bus.publish(Event("item.renamed", "inventory"))
    await bus.publish(Event("item.deleted", "inventory"))
    await bus.publish(Event("item.created", "inventory"))
    await wait_until(lambda: consumer.handled == 2, 5)
    assert await _count(db, "item.deleted") == 1
    assert await _count(db, "item.renamed") == 0


async def test_each_group_gets_every_event_and_shares_it_among_its_consumers(
    redis: Redis, tmp_path: Path, db: Database, make_consumer: Callable[..., Consumer]
) -> None:
    audit_db = await Database.open(tmp_path / "audit", "audit", MIGRATIONS)
    try:
        billing = [make_consumer(consumer=f"b{i}") for i in range(2)]
        audit = make_consumer(group="audit", consumer="a0", db=audit_db)
        for consumer in [*billing, audit]:
            await consumer.start(wait=5)
        await EventBus(redis).publish_many([Event("item.created", "inv", n) for n in range(40)])
        await wait_until(lambda: sum(c.handled for c in billing) == 40, 5)
        await wait_until(lambda: audit.handled == 40, 5)
        assert await _count(db) == 40
        assert await _count(audit_db) == 40
    finally:
        await audit.stop()
        await audit_db.close()


async def test_a_duplicate_event_has_its_effect_once(
    redis: Redis, db: Database, make_consumer: Callable[..., Consumer]
) -> None:
    consumer = make_consumer()
    await consumer.start(wait=5)
    bus = EventBus(redis)
    event = Event("item.created", "inventory", {"item": 1})
    # A relay that crashed between publishing and marking publishes the same event again.
    await bus.publish(event)
    await bus.publish(event)
    await wait_until(lambda: consumer.handled + consumer.duplicates == 2, 5)
    assert (consumer.handled, consumer.duplicates) == (1, 1)
    assert await _count(db) == 1
    assert await _pending(redis) == 0


async def test_redelivery_of_handled_messages_has_no_second_effect(
    redis: Redis, db: Database, make_consumer: Callable[..., Consumer]
) -> None:
    first = make_consumer()
    await first.start(wait=5)
    await EventBus(redis).publish_many([Event("item.created", "inv", n) for n in range(10)])
    await wait_until(lambda: first.handled == 10, 5)
    await first.stop()
    # Every message is delivered again, as after a restore of an older Redis snapshot.
    await redis.xgroup_setid(STREAM, "billing", "0")
    second = make_consumer()
    await second.start(wait=5)
    await wait_until(lambda: second.duplicates == 10, 5)
    assert second.handled == 0
    assert await _count(db) == 10
    assert await _pending(redis) == 0


async def test_a_failed_handler_is_retried_after_the_visibility_timeout(
    redis: Redis, db: Database, make_consumer: Callable[..., Consumer]
) -> None:
    attempts: list[int] = []

    def flaky(conn: sqlite3.Connection, event: Event) -> None:
        count_handler(conn, event)  # rolled back with the failure
        attempts.append(1)
        if len(attempts) < 3:
            raise RuntimeError("downstream not ready")

    consumer = make_consumer(handler=flaky, visibility_timeout=0.1)
    await consumer.start(wait=5)
    await EventBus(redis).publish(Event("item.created", "inventory"))
    await wait_until(lambda: consumer.handled == 1, 5)
    assert len(attempts) == 3
    assert consumer.failures == 2
    assert await _count(db) == 1
    assert await dead_letters(redis, "billing") == []


async def test_one_failing_event_does_not_undo_the_others_of_its_batch(
    redis: Redis, db: Database, make_consumer: Callable[..., Consumer]
) -> None:
    def picky(conn: sqlite3.Connection, event: Event) -> None:
        count_handler(conn, event)
        if event.data == 3:
            raise ValueError("three is refused")

    consumer = make_consumer(handler=picky, max_deliveries=1)
    await EventBus(redis).publish_many([Event("item.created", "inv", n) for n in range(6)])
    await consumer.start(wait=5)
    await wait_until(lambda: consumer.handled == 5 and consumer.dead_lettered == 1, 5)
    assert await _count(db) == 5


async def test_async_handlers_are_deduplicated_too(
    redis: Redis, make_consumer: Callable[..., Consumer]
) -> None:
    seen: list[Any] = []

    async def notify(event: Event) -> None:
        seen.append(event.data)

    consumer = make_consumer(async_handler=notify)
    await consumer.start(wait=5)
    event = Event("item.created", "inventory", "x")
    await EventBus(redis).publish_many([event, event, Event("item.created", "inventory", "y")])
    await wait_until(lambda: consumer.handled + consumer.duplicates == 3, 5)
    assert seen == ["x", "y"]


async def test_a_consumer_killed_mid_handling_is_replaced_after_the_visibility_timeout(
    redis_url: str, redis: Redis, tmp_path: Path, make_consumer: Callable[..., Consumer]
) -> None:
    data = tmp_path / "data"
    marker = tmp_path / "handling"
    log = tmp_path / "worker.log"
    worker = spawn(
        "consumer", "--redis", redis_url, "--data", str(data), "--consumer", "doomed",
        "--visibility", "0.5", "--hang-marker", str(marker), log=log,
    )  # fmt: skip
    try:
        await wait_until(lambda: "ready" in log.read_text(), 15, message=f"worker ready: {log}")
        event = Event("item.created", "inventory", {"hang": True})
        await EventBus(redis).publish(event)
        await wait_until(marker.exists, 5, message="worker handling the event")
        worker.send_signal(signal.SIGKILL)
        worker.wait(5)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert counter(data / "billing.db") == 0  # its transaction died with it

    survivor_db = await Database.open(data, "billing", MIGRATIONS)
    try:
        survivor = make_consumer(consumer="survivor", db=survivor_db, visibility_timeout=0.5)
        await survivor.start(wait=5)
        await wait_until(lambda: survivor.handled == 1, 5, message="event claimed and handled")
        assert counter(data / "billing.db") == 1
        assert await _pending(redis) == 0
        await survivor.stop()
    finally:
        await survivor_db.close()


@pytest.mark.parametrize("start_from", ["0", "$"])
async def test_a_consumer_keeps_running_while_redis_is_away_and_heals(
    redis_factory: Callable[..., RedisServer], db: Database, start_from: str
) -> None:
    server = redis_factory()
    client = core_redis.connect(server.url, timeout=0.5)
    consumer = Consumer(
        client,
        db,
        group="billing",
        consumer="c",
        types=["item.created"],
        handler=count_handler,
        visibility_timeout=0.3,
        block_ms=50,
        start_from=start_from,
    )
    try:
        await consumer.start(wait=5)
        bus = EventBus(client)
        await bus.publish(Event("item.created", "inventory", 1))
        await wait_until(lambda: consumer.handled == 1, 5)
        server.kill()
        await wait_until(lambda: not consumer.connected.is_set(), 10, message="outage seen")
        server.start()  # empty: the streams and the group are gone
        # Published as soon as Redis is back, maybe before the consumer is: the
        # group it creates again must start before this event, whatever start_from.
        # (The test's connection from before the outage is stale: publish until accepted.)
        event = Event("item.created", "inventory", 2)
        await wait_until(lambda: bus.publish(event), 5, message="publish after outage")
        await wait_until(lambda: consumer.handled == 2, 10, message="event after outage")
        assert consumer.connected.is_set()
        assert await _count(db) == 2
    finally:
        await consumer.stop()
        await client.aclose()


async def test_stopping_mid_stream_loses_nothing_and_repeats_nothing(
    redis: Redis, db: Database, make_consumer: Callable[..., Consumer]
) -> None:
    def slow(conn: sqlite3.Connection, event: Event) -> None:
        time.sleep(0.002)
        count_handler(conn, event)

    first = make_consumer(handler=slow, batch=10)
    await first.start(wait=5)
    await EventBus(redis).publish_many([Event("item.created", "inv", n) for n in range(100)])
    await wait_until(lambda: first.handled >= 20, 5)
    await first.stop()
    assert 20 <= first.handled < 100
    assert await _count(db) == first.handled  # what was handled was committed
    second = make_consumer(handler=slow, batch=10)
    await second.start(wait=5)
    await wait_until(lambda: first.handled + second.handled == 100, 5)
    assert await _count(db) == 100
    assert await _pending(redis) == 0


def test_exactly_one_handler_is_required(db: Database, redis: Redis) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        Consumer(redis, db, group="g", consumer="c", types=["t"])
