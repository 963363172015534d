from __future__ import annotations

import signal
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from core import redis as core_redis
from core.db import Database
from core.events.bus import Event, EventBus, Keys
from core.events.consumer import Consumer
from core.events.outbox import OutboxRelay, add_to_outbox
from core.redis import Redis
from core.testing import RedisServer, wait_until
from tests.core.event_worker import MIGRATIONS, add_items, count_handler, spawn

STREAM = Keys().stream("item.created")


@pytest_asyncio.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await Database.open(tmp_path / "data", "inventory", MIGRATIONS)
    yield database
    await database.close()


async def _published(redis: Redis) -> list[Event]:
    return [Event.from_fields(fields) for _, fields in await redis.xrange(STREAM)]


async def test_a_commit_wakes_the_relay_at_once(redis: Redis, db: Database) -> None:
    # Polling once a minute: only the wake-up can publish within the deadline.
    relay = OutboxRelay(db, EventBus(redis), poll_interval=60)
    await relay.start()
    try:
        await wait_until(relay.connected.is_set, 5)
        events = await db.transaction(lambda conn: add_items(conn, 1))
        assert await wait_until(lambda: _published(redis), 2) == events
        # Counted once marked in the outbox, just after the publish itself.
        assert await wait_until(lambda: relay.published == 1, 2)
        assert await relay.pending() == 0
    finally:
        await relay.stop()


async def test_events_committed_before_the_relay_started_are_published(
    redis: Redis, db: Database
) -> None:
    events = await db.transaction(lambda conn: add_items(conn, 3))
    relay = OutboxRelay(db, EventBus(redis), poll_interval=60)
    await relay.start()
    try:
        assert await wait_until(lambda: _published(redis), 2) == events
    finally:
        await relay.stop()


async def test_a_rolled_back_change_publishes_nothing(redis: Redis, db: Database) -> None:
    relay = OutboxRelay(db, EventBus(redis), poll_interval=60)
    await relay.start()

    def refused(conn: sqlite3.Connection) -> None:
        add_items(conn, 1)
        raise PermissionError("not allowed after all")

    try:
        with pytest.raises(PermissionError):
            await db.transaction(refused)
        kept = await db.transaction(lambda conn: add_items(conn, 1))
        assert await wait_until(lambda: _published(redis), 2) == kept
        assert await db.run(lambda c: c.execute("SELECT count(*) FROM items").fetchone()[0]) == 1
    finally:
        await relay.stop()


async def test_events_are_published_in_commit_order(redis: Redis, db: Database) -> None:
    relay = OutboxRelay(db, EventBus(redis), batch=7, poll_interval=60)
    await relay.start()
    try:
        committed: list[Event] = []
        for _ in range(30):
            committed += await db.transaction(lambda conn: add_items(conn, 2))
        await wait_until(lambda: relay.published == 60, 5)
        assert await _published(redis) == committed
    finally:
        await relay.stop()


async def test_add_to_outbox_outside_a_transaction_is_refused(db: Database) -> None:
    with pytest.raises(RuntimeError, match="inside a transaction"):
        await db.run(lambda conn: add_to_outbox(conn, Event("item.created", "inventory")))


async def test_published_rows_are_deleted_after_the_retention(redis: Redis, db: Database) -> None:
    relay = OutboxRelay(db, EventBus(redis), poll_interval=0.05, retention=0)
    await relay.start()
    try:
        await db.transaction(lambda conn: add_items(conn, 2))
        await wait_until(lambda: relay.published == 2, 5)
        await wait_until(
            lambda: db.run(
                lambda c: c.execute("SELECT count(*) = 0 FROM essaim_outbox").fetchone()[0]
            ),
            5,
        )
    finally:
        await relay.stop()


async def test_a_producer_killed_between_commit_and_publish_publishes_after_restart(
    redis_url: str, redis: Redis, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    args = ("producer", "--redis", redis_url, "--data", str(data))
    first_log = tmp_path / "first.log"
    first = spawn(*args, "--count", "5", "--no-relay", log=first_log)
    try:
        await wait_until(lambda: "ready" in first_log.read_text(), 15, message="committed")
        assert "committed 5" in first_log.read_text()
        first.send_signal(signal.SIGKILL)
        first.wait(5)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert await redis.exists(STREAM) == 0  # committed, never published

    restart_log = tmp_path / "restart.log"
    restarted = spawn(*args, log=restart_log)
    try:
        await wait_until(lambda: _xlen_is(redis, 5), 15, message="5 events published")
        published = await _published(redis)
        assert sorted(e.data["item"] for e in published) == [1, 2, 3, 4, 5]
    finally:
        restarted.send_signal(signal.SIGTERM)
        assert restarted.wait(10) == 0, restart_log.read_text()
    # The restarted relay marked them: a further restart publishes nothing again.
    again = spawn(*args, log=tmp_path / "again.log")
    try:
        await wait_until(lambda: "ready" in (tmp_path / "again.log").read_text(), 15)
        conn = sqlite3.connect(data / "inventory.db")
        try:
            unpublished = conn.execute(
                "SELECT count(*) FROM essaim_outbox WHERE published_at IS NULL"
            ).fetchone()[0]
        finally:
            conn.close()
        assert unpublished == 0
        assert await redis.xlen(STREAM) == 5
    finally:
        again.send_signal(signal.SIGTERM)
        again.wait(10)


async def _xlen_is(redis: Redis, n: int) -> bool:
    return int(await redis.xlen(STREAM)) == n


async def test_nothing_is_lost_while_redis_is_down(
    redis_factory: Callable[..., RedisServer], tmp_path: Path, db: Database
) -> None:
    server = redis_factory()
    client = core_redis.connect(server.url, timeout=0.5)
    consumer_db = await Database.open(tmp_path / "billing", "billing", MIGRATIONS)
    relay = OutboxRelay(db, EventBus(client), poll_interval=0.1)
    consumer = Consumer(
        client,
        consumer_db,
        group="billing",
        consumer="c",
        types=["item.created"],
        handler=count_handler,
        visibility_timeout=0.3,
        block_ms=50,
    )

    async def handled() -> int:
        row = await consumer_db.run(lambda c: c.execute("SELECT value FROM counters").fetchone())
        return int(row[0]) if row else 0

    try:
        await relay.start()
        await consumer.start(wait=5)
        for _ in range(10):
            await db.transaction(lambda conn: add_items(conn, 1))
        await wait_until(lambda: consumer.handled == 10, 5, message="before the outage")

        server.kill()
        # The service keeps accepting changes; their events wait in the outbox.
        for _ in range(10):
            await db.transaction(lambda conn: add_items(conn, 1))
        await wait_until(lambda: not relay.connected.is_set(), 10, message="relay saw outage")
        assert await relay.pending() == 10

        server.start()  # an empty Redis: no stream, no group
        await wait_until(lambda: consumer.handled == 20, 15, message="after the outage")
        assert await handled() == 20
        assert consumer.duplicates == 0
        assert await relay.pending() == 0
    finally:
        await consumer.stop()
        await relay.stop()
        await client.aclose()
        await consumer_db.close()


async def test_a_handler_can_emit_the_next_event_with_its_change(
    redis: Redis, tmp_path: Path, db: Database
) -> None:
    """A saga step: billing handles item.created and, in the same transaction, emits invoice.created."""
    billing_db = await Database.open(tmp_path / "billing", "billing", MIGRATIONS)

    def bill(conn: sqlite3.Connection, event: Event) -> None:
        count_handler(conn, event)
        add_to_outbox(conn, Event("invoice.created", "billing", {"item": event.data["item"]}))

    bus = EventBus(redis)
    relays = [
        OutboxRelay(db, bus, poll_interval=60),
        OutboxRelay(billing_db, bus, poll_interval=60),
    ]
    consumer = Consumer(
        redis, billing_db, group="billing", consumer="b", types=["item.created"], handler=bill,
        visibility_timeout=0.3, block_ms=50,
    )  # fmt: skip
    try:
        for relay in relays:
            await relay.start()
        await consumer.start(wait=5)
        await db.transaction(lambda conn: add_items(conn, 3))
        await wait_until(lambda: relays[1].published == 3, 5, message="invoices published")
        invoices = await redis.xrange(Keys().stream("invoice.created"))
        assert sorted(Event.from_fields(f).data["item"] for _, f in invoices) == [1, 2, 3]
    finally:
        await consumer.stop()
        for relay in relays:
            await relay.stop()
        await billing_db.close()
