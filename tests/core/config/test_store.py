"""ConfigStore: atomic batches, revisions, the import guard."""

from __future__ import annotations

import orjson
import pytest

from core.config.store import CHANNEL, ConfigStore, NotImported, Write
from core.redis import Redis
from core.testing import subscribed, wait_until


async def test_a_batch_is_one_step_with_one_revision_per_changed_document(redis: Redis) -> None:
    store = ConfigStore(redis)
    async with subscribed(redis, CHANNEL) as received:
        await store.write("application", {"a": 1})
        results = await store.write_many(
            [Write("application", {"a": 1}), Write("billing", {"b": 1}), Write("orders", None)]
        )
        assert [(r.changed, r.found, r.rev) for r in results] == [
            (False, True, 0),
            (True, True, 2),
            (False, False, 0),
        ]
        await wait_until(lambda: len(received) == 2, 2.0)
    assert [orjson.loads(data) for _, data in received] == [
        {"rev": 1, "document": "application", "version": 1},
        {"rev": 2, "document": "billing", "version": 1},
    ]


async def test_a_guarded_write_refuses_a_redis_without_the_import(redis: Redis) -> None:
    store = ConfigStore(redis)
    with pytest.raises(NotImported):
        await store.write("billing", {"b": 1}, if_imported=True)
    assert await store.get("billing") is None
    await store.write_many([], mark_imported=True)
    assert (await store.write("billing", {"b": 1}, if_imported=True)).version == 1


async def test_history_is_trimmed_to_what_the_store_keeps(redis: Redis) -> None:
    store = ConfigStore(redis, keep=3)
    for n in range(5):
        await store.write("billing", {"n": n})
    assert [v.version for v in await store.history("billing")] == [5, 4, 3]
    assert (await store.version("billing", 3)) is not None
    assert (await store.version("billing", 2)) is None
