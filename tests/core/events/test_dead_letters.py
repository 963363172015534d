from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from core import redis as core_redis
from core.db import Database
from core.events.bus import Event, EventBus, Keys, redis_fields
from core.events.consumer import Consumer
from core.events.dead_letters import dead_fields, dead_letters, discard, replay
from core.redis import Redis
from core.testing import wait_until
from tests.core.event_worker import MIGRATIONS, count_handler

STREAM = Keys().stream("item.created")


@pytest_asyncio.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = core_redis.connect(redis_url)
    yield client
    await client.aclose()


@pytest_asyncio.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await Database.open(tmp_path, "billing", MIGRATIONS)
    yield database
    await database.close()


class Refuser:
    """A handler that refuses events whose data says ``fail`` until it is fixed."""

    def __init__(self) -> None:
        self.fixed = False
        self.calls = 0

    def __call__(self, conn: sqlite3.Connection, event: Event) -> None:
        self.calls += 1
        if isinstance(event.data, dict) and event.data.get("fail") and not self.fixed:
            raise ValueError(f"cannot bill item {event.data['item']}")
        count_handler(conn, event)


def _consumer(redis: Redis, db: Database, handler: Any, **options: Any) -> Consumer:
    options.setdefault("group", "billing")
    return Consumer(
        redis,
        db,
        consumer="c",
        types=["item.created"],
        handler=handler,
        visibility_timeout=0.1,
        max_deliveries=3,
        block_ms=50,
        **options,
    )


async def _count(db: Database) -> int:
    row = await db.run(lambda c: c.execute("SELECT value FROM counters").fetchone())
    return int(row[0]) if row else 0


async def test_after_n_failed_deliveries_the_event_is_a_dead_letter_and_replay_heals_it(
    redis: Redis, db: Database, tmp_path: Path
) -> None:
    refuser = Refuser()
    billing = _consumer(redis, db, refuser)
    audit_db = await Database.open(tmp_path / "audit", "audit", MIGRATIONS)
    audit = _consumer(redis, audit_db, count_handler, group="audit")
    try:
        await billing.start(wait=5)
        await audit.start(wait=5)
        bad = Event("item.created", "inventory", {"item": 1, "fail": True})
        good = Event("item.created", "inventory", {"item": 2})
        await EventBus(redis).publish_many([bad, good])

        letters = await wait_until(lambda: dead_letters(redis, "billing"), 5)
        assert len(letters) == 1
        letter = letters[0]
        assert letter.event == bad
        assert letter.deliveries == 3
        assert "cannot bill item 1" in letter.error
        assert letter.group == "billing"
        assert letter.stream == STREAM
        assert letter.to_dict()["event"]["id"] == bad.id
        assert refuser.calls == 4  # 3 for the bad event, 1 for the good one
        assert await _count(db) == 1  # the good event was not held up
        assert (await redis.xpending(STREAM, "billing"))["pending"] == 0
        await wait_until(lambda: audit.handled == 2, 5)

        refuser.fixed = True
        assert await replay(redis, "billing", [letter.id]) == 1
        await wait_until(lambda: billing.handled == 2, 5, message="replayed event handled")
        assert await _count(db) == 2
        assert await dead_letters(redis, "billing") == []
        # The replay went to billing only: audit saw nothing more.
        assert await redis.xlen(STREAM) == 2
        assert (audit.handled, audit.duplicates) == (2, 0)
    finally:
        await billing.stop()
        await audit.stop()
        await audit_db.close()


async def test_a_message_its_consumers_kept_dying_on_is_dead_lettered_without_running(
    redis: Redis, db: Database
) -> None:
    bus = EventBus(redis)
    await redis.xgroup_create(STREAM, "billing", id="0", mkstream=True)
    event = Event("item.created", "inventory", {"item": 1})
    entry_id = await bus.publish(event)
    # Three consumers read it and died before acknowledging it.
    await redis.xreadgroup("billing", "dead-1", {STREAM: ">"})
    await redis.xclaim(STREAM, "billing", "dead-2", 0, [entry_id])
    await redis.xclaim(STREAM, "billing", "dead-3", 0, [entry_id])

    refuser = Refuser()
    consumer = _consumer(redis, db, refuser)
    try:
        await consumer.start(wait=5)
        letters = await wait_until(lambda: dead_letters(redis, "billing"), 5)
    finally:
        await consumer.stop()
    assert [letter.event for letter in letters] == [event]
    assert letters[0].deliveries == 3
    assert "without an acknowledgement" in letters[0].error
    assert refuser.calls == 0


async def test_a_malformed_message_is_dead_lettered_at_once(redis: Redis, db: Database) -> None:
    await redis.xadd(STREAM, {"type": "item.created", "data": "{}"})
    refuser = Refuser()
    consumer = _consumer(redis, db, refuser)
    try:
        await consumer.start(wait=5)
        letters = await wait_until(lambda: dead_letters(redis, "billing"), 5)
    finally:
        await consumer.stop()
    assert letters[0].event is None
    assert letters[0].fields == {"type": "item.created", "data": "{}"}
    assert "malformed event" in letters[0].error
    assert letters[0].deliveries == 1
    assert refuser.calls == 0


async def _dead_letter_some(redis: Redis, n: int) -> list[str]:
    """Dead letters made directly, as a consumer writes them."""
    ids = []
    for i in range(n):
        fields = Event("item.created", "inventory", {"item": i}).to_fields()
        entry = dead_fields("billing", STREAM, f"{i + 1}-0", 3, "boom", fields)
        ids.append(str(await redis.xadd(Keys().dead("billing"), redis_fields(entry))))
    return ids


async def test_dead_letters_are_listed_in_pages(redis: Redis) -> None:
    ids = await _dead_letter_some(redis, 5)
    first = await dead_letters(redis, "billing", count=2)
    rest = await dead_letters(redis, "billing", after=first[-1].id)
    assert [d.id for d in first + rest] == ids
    assert [d.event.data["item"] for d in first + rest if d.event] == [0, 1, 2, 3, 4]


async def test_replay_without_ids_moves_every_dead_letter(redis: Redis) -> None:
    await _dead_letter_some(redis, 3)
    assert await replay(redis, "billing") == 3
    assert await dead_letters(redis, "billing") == []
    retried = await redis.xrange(Keys().retry("billing"))
    assert [Event.from_fields(f).data["item"] for _, f in retried] == [0, 1, 2]


async def test_replay_of_an_unknown_or_already_replayed_id_moves_nothing(redis: Redis) -> None:
    (entry_id,) = await _dead_letter_some(redis, 1)
    assert await replay(redis, "billing", [entry_id]) == 1
    assert await replay(redis, "billing", [entry_id, "1-1"]) == 0
    assert await redis.xlen(Keys().retry("billing")) == 1


async def test_discard_deletes_dead_letters(redis: Redis) -> None:
    ids = await _dead_letter_some(redis, 3)
    assert await discard(redis, "billing", ids[:2]) == 2
    assert [d.id for d in await dead_letters(redis, "billing")] == ids[2:]


# The last two fit the pattern but not Redis's 64-bit parts (which answered an error).
@pytest.mark.parametrize(
    "bad", ["x", "1-", "1-0; FLUSHALL", "", "1-18446744073709551616", "18446744073709551616-0"]
)
async def test_invalid_ids_are_refused(redis: Redis, bad: str) -> None:
    with pytest.raises(ValueError, match="invalid dead letter id"):
        await replay(redis, "billing", [bad])
    with pytest.raises(ValueError, match="invalid dead letter id"):
        await discard(redis, "billing", [bad])
    if bad:
        with pytest.raises(ValueError, match="invalid dead letter id"):
            await dead_letters(redis, "billing", after=bad)
