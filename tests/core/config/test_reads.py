"""SharedReads: a burst of identical reads shares Redis reads, never serving a stale one."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from core.config.reads import SharedReads
from core.config.store import ConfigStore
from core.redis import REDIS_ERRORS, Redis, connect
from core.testing import RedisServer


async def test_a_burst_of_reads_shares_a_few_redis_reads(redis: Redis) -> None:
    store = ConfigStore(redis)
    await store.write("billing", {"currency": "EUR"})
    reads = SharedReads(store)
    results = await asyncio.gather(*(reads.merged("billing", "default") for _ in range(100)))
    assert {r.version for r in results} == {results[0].version}
    assert results[0].config == {"currency": "EUR"}
    assert reads.requests == 100
    assert reads.reads <= 2


async def test_a_read_asked_after_a_write_sees_the_write(redis: Redis, redis_url: str) -> None:
    store = ConfigStore(redis)
    writer = ConfigStore(connect(redis_url))
    await store.write("billing", {"n": 0})
    reads = SharedReads(store)
    for n in range(1, 30):
        first = asyncio.create_task(reads.merged("billing", "default"))
        await asyncio.sleep(0)  # the first read is under way
        await writer.write("billing", {"n": n})
        after = await reads.merged("billing", "default")
        assert after.config == {"n": n}
        assert (await first).config in ({"n": n - 1}, {"n": n})
    await writer.redis.aclose()


async def test_an_error_reaches_every_waiter_and_the_next_read_recovers(
    redis_factory: Callable[..., RedisServer],
) -> None:
    server = redis_factory()
    client = connect(server.url, timeout=0.5)
    try:
        store = ConfigStore(client)
        await store.write("billing", {"n": 1})
        reads = SharedReads(store)
        server.kill()
        results = await asyncio.gather(
            *(reads.merged("billing", "default") for _ in range(10)), return_exceptions=True
        )
        assert all(isinstance(r, REDIS_ERRORS) for r in results)
        server.start()
        merged = await reads.merged("billing", "default")
        assert merged.sources == ()  # a restarted Redis is empty
        assert not merged.imported
    finally:
        await client.aclose()


async def test_close_cancels_waiting_reads(redis: Redis) -> None:
    reads = SharedReads(ConfigStore(redis))
    waiting = [asyncio.create_task(reads.merged("billing", "default")) for _ in range(5)]
    await asyncio.sleep(0)
    await reads.close()
    for task in waiting:
        with pytest.raises(asyncio.CancelledError):
            await task
