"""The config journal on disk with a real Redis: recording, restoring, catching up."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from core.config.journal import Journal
from core.config.store import ConfigStore, Write
from core.redis import Redis


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[Journal]:
    opened = await Journal.open(tmp_path / "one", keep=3)
    yield opened
    await opened.close()


async def test_a_restore_gives_back_documents_history_numbers_and_file_records(
    redis: Redis, journal: Journal
) -> None:
    store = ConfigStore(redis, keep=3, journal=journal)
    await store.write_many([Write("billing", {"rate": 1}, "file", file="f1")], mark_imported=True)
    for rate in (2, 3, 4):
        await store.write("billing", {"rate": rate})
    await store.write("orders", {"n": 1})
    await store.delete("orders")
    before = (await store.get("billing"), await store.history("billing"), await store.files())
    await redis.flushall()

    assert await store.restore() == ["billing", "orders"]
    assert (await store.get("billing"), await store.history("billing"), await store.files()) == (
        before
    )
    assert [v.version for v in await store.history("billing")] == [4, 3, 2]  # 3 kept
    assert await store.get("orders") is None
    assert await store.names() == ["billing"]
    assert (await store.write("orders", {"n": 2})).version == 3  # numbers go on


@pytest.mark.parametrize("stale_first", [True, False])
async def test_a_stale_journal_never_takes_a_document_back(
    redis: Redis, journal: Journal, tmp_path: Path, stale_first: bool
) -> None:
    """Two processes restoring at once, one journal behind the other: the newest wins."""
    stale = await Journal.open(tmp_path / "stale", keep=3)
    try:
        await ConfigStore(redis, journal=stale).write("billing", {"rate": 1})
        await ConfigStore(redis, journal=journal).write("billing", {"rate": 2})
        assert await stale.summary() == {"billing": (1, 1)}
        await redis.flushall()
        order = [stale, journal] if stale_first else [journal, stale]
        for one in order:
            await ConfigStore(redis, journal=one).restore()
        got = await ConfigStore(redis).get("billing")
        assert got is not None
        assert (got.version, dict(got.content or {})) == (2, {"rate": 2})
    finally:
        await stale.close()


async def test_sync_records_what_redis_holds_and_the_journal_lacks(
    redis: Redis, journal: Journal, tmp_path: Path
) -> None:
    await ConfigStore(redis).write("billing", {"rate": 1})  # written without a journal
    await ConfigStore(redis).write("billing", {"rate": 2})
    store = ConfigStore(redis, keep=3, journal=journal)
    assert await store.sync_journal() == 2
    assert await store.sync_journal() == 0  # nothing new
    assert await journal.summary() == {"billing": (2, 2)}
