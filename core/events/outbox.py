"""The transactional outbox: an event commits with its data change, a relay publishes it.

A producer calls :func:`add_to_outbox` inside the
:meth:`~core.db.Database.transaction` that changes its data: the event row
(table ``essaim_outbox``) and the change commit together or not at all, so an
event is never published for a change that was rolled back, and never lost
once the change is committed. :class:`OutboxRelay` publishes the rows in
commit order and marks them published. It is woken by the database right
after each commit that added a row, polls every ``poll_interval`` as a safety
net (rows committed by another process on the same file), and keeps the rows
while Redis is away, publishing them when it returns. A crash between
publishing and marking publishes those events again on restart: delivery is
at least once, and consumers deduplicate on the event id.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable

import orjson

from core import log
from core.db import Connection, Database, after_commit
from core.events.bus import Event, EventBus, producer_fields, record_producer
from core.redis import REDIS_ERRORS, Backoff
from core.telemetry import spans

logger = log.get("outbox")

__all__ = ["OutboxRelay", "add_to_outbox"]


def add_to_outbox(conn: sqlite3.Connection, event: Event) -> None:
    """Add ``event`` to the outbox in the transaction open on ``conn``.

    Call it from a function given to :meth:`core.db.Database.transaction`
    (or a consumer's transactional handler); outside a transaction it raises
    ``RuntimeError``. Adding the same event id twice raises
    ``sqlite3.IntegrityError``. An event made in the work in progress is
    written as its own span, a child of that work
    (:func:`~core.events.bus.producer_fields`), recorded as a ``create``
    PRODUCER span, ending at the commit, when spans are exported.
    """
    if not conn.in_transaction:
        raise RuntimeError("add_to_outbox must run inside a transaction")
    fields, producer = producer_fields(event)
    started = time.time_ns()
    conn.execute(
        "INSERT INTO essaim_outbox (event_id, type, fields, created_at) VALUES (?, ?, ?, ?)",
        (event.id, event.type, orjson.dumps(fields).decode(), started / 1e9),
    )
    if isinstance(conn, Connection):
        conn.outbox_written = True
        if producer is not None and spans.active() is not None:
            # The span ends when the event is committed (and is dropped with a rollback).
            after_commit(conn, lambda: record_producer(producer, event, "create", started))
    else:
        record_producer(producer, event, "create", started)


class OutboxRelay:
    """Publishes the outbox of ``db`` through ``bus``; start with :meth:`start`.

    ``published`` counts the events it published; ``connected`` is cleared
    when publishing fails and set again when a round (publishing whatever
    the outbox held, maybe nothing) succeeds. Published rows are deleted
    after ``retention`` seconds.
    """

    def __init__(
        self,
        db: Database,
        bus: EventBus,
        *,
        batch: int = 100,
        poll_interval: float = 1.0,
        retention: float = 86400.0,
    ) -> None:
        self.db = db
        self.bus = bus
        self.batch = batch
        self.poll_interval = poll_interval
        self.retention = retention
        self.published = 0
        self.connected = asyncio.Event()
        self._wake = asyncio.Event()
        self._remove_listener: Callable[[], None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._busy = False

    def wake(self) -> None:
        """Publish now rather than at the next poll (the database calls it after a commit)."""
        self._wake.set()

    async def start(self) -> None:
        """Start publishing: first whatever the outbox holds, then each new commit."""
        self._stopping = False
        self._remove_listener = self.db.on_outbox(self.wake)
        self._task = asyncio.create_task(self._run(), name=f"outbox:{self.db.path.name}")

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop; a batch being published may finish (and be marked) within ``timeout``."""
        self._stopping = True
        if self._remove_listener is not None:
            self._remove_listener()
            self._remove_listener = None
        task, self._task = self._task, None
        if task is None:
            return
        if not self._busy:
            task.cancel()
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def pending(self) -> int:
        """How many events wait in the outbox."""
        row = await self.db.run(
            lambda c: c.execute(
                "SELECT count(*) FROM essaim_outbox WHERE published_at IS NULL"
            ).fetchone()
        )
        return int(row[0])

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = Backoff()
        next_prune = 0.0
        while not self._stopping:
            try:
                self._wake.clear()
                while not self._stopping and await self._publish_batch() == self.batch:
                    pass
                if not self.connected.is_set():
                    self.connected.set()
                    if backoff.attempt:
                        logger.info("outbox %s: Redis is back; publishing", self.db.path.name)
                backoff.reset()
                if loop.time() >= next_prune:
                    await self._prune()
                    next_prune = loop.time() + min(3600.0, self.retention / 2)
            except REDIS_ERRORS as exc:
                if self.connected.is_set() or not backoff.attempt:
                    logger.warning(
                        "outbox %s: cannot publish (%s); keeping events, retrying",
                        self.db.path.name,
                        exc,
                    )
                self.connected.clear()
                await backoff.sleep()
                continue
            except sqlite3.Error as exc:
                logger.error("outbox %s: database error: %s; retrying", self.db.path.name, exc)
                await backoff.sleep()
                continue
            except Exception:
                logger.exception("outbox %s: unexpected error; retrying", self.db.path.name)
                await backoff.sleep()
                continue
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)

    async def _publish_batch(self) -> int:
        """Publish the oldest unpublished rows, at most ``batch``; how many."""
        rows: list[tuple[int, str, str]] = await self.db.run(
            lambda c: c.execute(
                "SELECT seq, type, fields FROM essaim_outbox WHERE published_at IS NULL"
                " ORDER BY seq LIMIT ?",
                (self.batch,),
            ).fetchall()
        )
        if not rows:
            return 0
        self._busy = True
        try:
            await self.bus.publish_fields(
                [(type, orjson.loads(fields)) for _, type, fields in rows]
            )
            seqs = [seq for seq, _, _ in rows]
            await self.db.run(
                lambda c: c.execute(
                    "UPDATE essaim_outbox SET published_at = ?"
                    f" WHERE seq IN ({','.join('?' * len(seqs))})",
                    (time.time(), *seqs),
                )
            )
        finally:
            self._busy = False
        self.published += len(rows)
        return len(rows)

    async def _prune(self) -> None:
        cutoff = time.time() - self.retention
        await self.db.run(
            lambda c: c.execute(
                "DELETE FROM essaim_outbox WHERE published_at IS NOT NULL AND published_at < ?",
                (cutoff,),
            )
        )
