"""The saga helper on a real database: steps, replies, timeouts, resends, compensation, waits.

No bus here: what a saga sends is what its transactions put in the outbox
(the relay and the consumer are tested on their own, and the whole saga
between real services in ``tests/services/test_bill_saga.py``).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_asyncio

from core.db import Database, after_commit
from core.events.bus import Event
from core.events.saga import (
    Compensation,
    Saga,
    SagaConflict,
    SagaNotFound,
    SagaRunner,
    SagaState,
    Step,
)
from core.testing import wait_until


def _order(saga: SagaState) -> Event:
    return Event("order.placed", "shop", saga.data)


def _undo(saga: SagaState, cause: str) -> Event:
    return Event("order.withdrawn", "shop", {"order_id": saga.data["order_id"], "cause": cause})


ORDERS = Saga(
    "order",
    key="order_id",
    initial="pending",
    steps=[
        Step(
            "pending",
            _order,
            {"stock.reserved": "confirmed", "stock.rejected": "rejected"},
            on_timeout="rejected",
        )
    ],
    compensation=Compensation(_undo, done="stock.released"),
)


@pytest_asyncio.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await Database.open(tmp_path, "shop")
    yield database
    await database.close()


async def start(db: Database, order_id: int, timeout: float = 30.0, retry: float = 5.0) -> None:
    data = {"order_id": order_id, "lines": [1, 2]}
    await db.transaction(
        lambda c: ORDERS.start(c, str(order_id), data, timeout=timeout, retry=retry)
    )


async def outbox(db: Database) -> list[tuple[str, Any]]:
    rows = await db.run(
        lambda c: c.execute("SELECT fields FROM essaim_outbox ORDER BY seq").fetchall()
    )
    events = [Event.from_fields(orjson.loads(fields)) for (fields,) in rows]
    return [(e.type, e.data) for e in events]


async def reply(db: Database, type: str, data: dict[str, Any]) -> str:
    event = Event(type, "stock", data)
    return await db.transaction(lambda c: ORDERS.handle(c, event))


async def state(db: Database, order_id: int) -> SagaState:
    found = await db.run(lambda c: ORDERS.get(c, str(order_id)))
    assert found is not None
    return found


async def test_a_saga_sends_its_command_and_moves_once_on_the_first_reply(db: Database) -> None:
    before = time.time()
    await start(db, 1)
    pending = await state(db, 1)
    assert (pending.state, pending.sends, pending.data) == (
        "pending",
        1,
        {"order_id": 1, "lines": [1, 2]},
    )
    assert pending.deadline is not None
    assert before + 30 <= pending.deadline <= time.time() + 30
    assert await outbox(db) == [("order.placed", {"order_id": 1, "lines": [1, 2]})]

    reason = {"code": "out_of_stock", "lines": [1]}
    assert await reply(db, "stock.rejected", {"order_id": 1, "reason": reason}) == "moved"
    assert await reply(db, "stock.reserved", {"order_id": 1}) == "stale"  # too late: no effect
    assert await reply(db, "stock.reserved", {"order_id": 2}) == "unknown"
    rejected = await state(db, 1)
    assert (rejected.state, rejected.reason, rejected.deadline, rejected.next_send) == (
        "rejected", reason, None, None,
    )  # fmt: skip
    assert rejected.compensation is None  # the participant did nothing: nothing to undo
    with pytest.raises(ValueError, match="data has no 'order_id'"):
        await reply(db, "stock.reserved", {"id": 1})
    with pytest.raises(sqlite3.IntegrityError):
        await start(db, 1)


async def test_a_step_without_an_answer_times_out_and_compensates_until_the_undo_is_confirmed(
    db: Database,
) -> None:
    await start(db, 1, timeout=10, retry=2)
    now = time.time()
    assert await db.transaction(lambda c: ORDERS.expire(c, now + 5)) == 0
    assert await db.transaction(lambda c: ORDERS.resend(c, now + 3)) == 1  # the command again
    assert await db.transaction(lambda c: ORDERS.expire(c, now + 11)) == 1
    timed_out = await state(db, 1)
    assert (timed_out.state, timed_out.compensation, timed_out.compensated_at) == (
        "rejected",
        "timeout",
        None,
    )
    assert timed_out.reason == {
        "code": "timeout",
        "detail": "no answer to order.placed within 10 s",
    }
    assert [t for t, _ in await outbox(db)] == ["order.placed", "order.placed", "order.withdrawn"]

    assert await db.transaction(lambda c: ORDERS.resend(c, now + 14)) == 1  # the undo again
    assert await reply(db, "stock.reserved", {"order_id": 1}) == "stale"  # the late answer
    assert await reply(db, "stock.released", {"order_id": 1}) == "compensated"
    assert await reply(db, "stock.released", {"order_id": 1}) == "stale"
    assert await db.transaction(lambda c: ORDERS.resend(c, now + 100)) == 0
    assert await db.run(ORDERS.next_due) is None
    events = await outbox(db)
    assert [t for t, _ in events] == ["order.placed"] * 2 + ["order.withdrawn"] * 2
    assert events[-1][1] == {"order_id": 1, "cause": "timeout"}
    assert (await state(db, 1)).compensated_at is not None


async def test_a_move_starts_only_from_the_allowed_states_and_happens_once(db: Database) -> None:
    await start(db, 1)
    await reply(db, "stock.reserved", {"order_id": 1})

    def in_tx(order_id: int) -> Awaitable[SagaState]:
        return db.transaction(
            lambda c: ORDERS.move(
                c, str(order_id), "cancelled", allowed=("pending", "confirmed"),
                reason={"code": "cancelled"}, compensate="cancelled",
            )
        )  # fmt: skip

    assert (await in_tx(1)).state == "cancelled"
    assert (await in_tx(1)).state == "cancelled"  # again: unchanged, no second undo
    assert [t for t, _ in await outbox(db)] == ["order.placed", "order.withdrawn"]
    with pytest.raises(SagaNotFound):
        await in_tx(2)
    await start(db, 3)
    await reply(db, "stock.rejected", {"order_id": 3})
    with pytest.raises(SagaConflict) as refused:
        await in_tx(3)
    assert refused.value.status == 409
    assert (
        str(refused.value)
        == "order 3 is rejected: only a confirmed or pending order can become cancelled"
    )


async def test_the_runner_times_out_on_its_own_and_wakes_whoever_waits(db: Database) -> None:
    runner = SagaRunner(ORDERS, db, poll_interval=0.2)
    await runner.start()
    try:
        await start(db, 1, timeout=0.3, retry=5)
        await start(db, 2, timeout=30, retry=5)
        waited = await runner.wait("1", "pending", 5)
        assert waited is not None
        assert waited.state == "rejected"
        await wait_until(lambda: runner.timeouts == 1, 2, message="the timeout counted")

        async def answer_soon() -> None:
            await asyncio.sleep(0.1)
            await db.transaction(
                lambda c: runner.handle(c, Event("stock.reserved", "s", {"order_id": 2}))
            )

        began = time.monotonic()
        answering = asyncio.ensure_future(answer_soon())
        waited = await runner.wait("2", "pending", 5, recheck=10)  # woken by the commit, not a poll
        await answering
        assert waited is not None
        assert waited.state == "confirmed"
        assert time.monotonic() - began < 2
        assert runner.describe()["moved"] == 1

        await start(db, 3, timeout=30)
        still = await runner.wait("3", "pending", 0.2)
        assert still is not None
        assert still.state == "pending"
        assert await runner.wait("4", "pending", 1) is None
    finally:
        await runner.stop()


async def test_after_commit_callbacks_run_after_a_commit_and_never_after_a_rollback(
    db: Database,
) -> None:
    called: list[str] = []

    def write(conn: sqlite3.Connection, fail: bool) -> None:
        after_commit(conn, lambda: called.append("fail" if fail else "ok"))
        if fail:
            raise RuntimeError("no")

    await db.transaction(lambda c: write(c, False))
    with pytest.raises(RuntimeError):
        await db.transaction(lambda c: write(c, True))
    await asyncio.sleep(0)
    assert called == ["ok"]
    with pytest.raises(RuntimeError, match=r"inside a Database\.transaction"):
        await db.run(lambda c: after_commit(c, lambda: None))
