from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio

from core import redis as core_redis
from core.events.bus import Event, EventBus, Keys
from core.redis import Redis
from core.testing import RedisServer


@pytest_asyncio.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = core_redis.connect(redis_url)
    yield client
    await client.aclose()


def test_an_event_gets_a_unique_id_and_a_utc_time() -> None:
    a = Event("customer.created", "customers", {"id": 1})
    b = Event("customer.created", "customers", {"id": 1})
    assert a.id != b.id
    assert a.time.endswith("Z")
    assert "T" in a.time


def test_the_envelope_uses_cloudevents_names_and_round_trips() -> None:
    event = Event("order.placed", "billing", {"total": 12.5, "lines": [1, 2]})
    fields = event.to_fields()
    assert fields["specversion"] == "1.0"
    assert fields["datacontenttype"] == "application/json"
    assert {"id", "type", "source", "time", "data"} <= set(fields)
    assert Event.from_fields(fields) == event
    assert event.to_dict()["data"] == {"total": 12.5, "lines": [1, 2]}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"id": "1", "type": "a", "source": "s", "time": "t"}, "missing attribute 'data'"),
        ({"id": "1", "type": "a", "source": "s", "time": "t", "data": "{"}, "data is not JSON"),
        ({"id": "1", "type": "a:b", "source": "s", "time": "t", "data": "1"}, "event type"),
        (
            {"specversion": "0.3", "id": "1", "type": "a", "source": "s", "time": "t", "data": "1"},
            "specversion",
        ),
    ],
)
def test_a_malformed_envelope_is_a_value_error(fields: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Event.from_fields(fields)


@pytest.mark.parametrize("name", ["", "a:b", "a b", "-a", "x" * 201])
def test_types_that_could_collide_with_other_keys_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="invalid event type"):
        Event(name, "s")


def test_key_layout() -> None:
    keys = Keys()
    assert keys.stream("customer.created") == "essaim:events:{customer.created}"
    assert keys.retry("billing") == "essaim:events:{group:billing}:retry"
    assert keys.dead("billing") == "essaim:events:{group:billing}:dead"


async def test_publish_appends_to_the_stream_of_the_type(redis: Redis) -> None:
    bus = EventBus(redis)
    event = Event("customer.created", "customers", {"id": 7})
    entry_id = await bus.publish(event)
    entries = await redis.xrange(Keys().stream("customer.created"))
    assert [(i, Event.from_fields(f)) for i, f in entries] == [(entry_id, event)]


async def test_publish_many_keeps_the_order(redis: Redis) -> None:
    bus = EventBus(redis)
    events = [Event("item.created", "inventory", {"n": n}) for n in range(20)]
    ids = await bus.publish_many(events)
    entries = await redis.xrange(Keys().stream("item.created"))
    assert [i for i, _ in entries] == ids
    assert [Event.from_fields(f).data["n"] for _, f in entries] == list(range(20))
    assert await bus.publish_many([]) == []


async def test_streams_are_trimmed_to_about_maxlen(redis: Redis) -> None:
    bus = EventBus(redis, maxlen=10)
    await bus.publish_many([Event("tick", "clock", n) for n in range(1000)])
    assert await redis.xlen(Keys().stream("tick")) < 1000
    assert await redis.xlen(Keys().stream("tick")) >= 10


async def test_publish_raises_when_redis_is_away(
    redis_factory: Callable[..., RedisServer],
) -> None:
    server = redis_factory()
    client = core_redis.connect(server.url, timeout=0.5)
    try:
        server.kill()
        with pytest.raises(core_redis.REDIS_ERRORS):
            await EventBus(client).publish(Event("tick", "clock"))
    finally:
        await client.aclose()
