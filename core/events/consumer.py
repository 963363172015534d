"""Consuming events: one consumer of a service's consumer group.

Each event reaches one consumer of each group, at least once. It is
acknowledged only after its handler succeeded, and its id is recorded as
handled in the service's database (table ``essaim_handled``) in the same
transaction as the handler's writes, so a redelivered event has no second
effect. Messages left pending by a consumer that died are claimed again after
``visibility_timeout`` (``XAUTOCLAIM``); after ``max_deliveries`` failed
deliveries a message moves to the group's dead-letter stream
(:mod:`core.events.dead_letters`).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Mapping, Sequence
from typing import Any

from redis.exceptions import ResponseError

from core import log, trace
from core.db import Database
from core.events.bus import PREFIX, AsyncHandler, Event, Keys, TxHandler, check_name, redis_fields
from core.events.dead_letters import dead_fields
from core.redis import REDIS_ERRORS, Backoff, Redis, is_cluster
from core.telemetry import spans
from core.telemetry.spans import Attributes, Span

logger = log.get("events")

__all__ = ["Consumer"]

_DUPLICATE = object()


class Consumer:
    """One consumer (``consumer``, unique per process) of a service's group, for ``types``.

    Give exactly one handler:

    - ``handler(conn, event)`` runs on the database's thread inside the
      transaction that records the event id as handled: the effect on the
      service's own tables (and any outbox row it adds) happens exactly once.
    - ``async_handler(event)`` is for effects outside the database (an HTTP
      call). An event recorded as handled is never handed to it again, but a
      crash between its success and that record runs it again: its effect
      must be idempotent by itself (use ``event.id`` as the idempotency key).

    A handler that raises leaves the message pending; it is delivered again
    after ``visibility_timeout`` (which must exceed the longest handling), and
    after ``max_deliveries`` failed deliveries it becomes a dead letter. A
    message already delivered more than ``max_deliveries`` times (its
    consumers kept dying on it) is dead-lettered without running again.

    A group that does not exist yet is created at ``start_from`` (``"0"``:
    every event still in the stream; ``"$"``: only new ones); one that
    vanished meanwhile (Redis came back empty) is created again at ``"0"``, so
    that nothing published since is skipped. While Redis is away the consumer waits and retries; ``connected``
    is set while it can read. Counters: ``handled``, ``duplicates``,
    ``failures``, ``dead_lettered``.
    """

    def __init__(
        self,
        redis: Redis,
        db: Database,
        *,
        group: str,
        consumer: str,
        types: Sequence[str],
        handler: TxHandler | None = None,
        async_handler: AsyncHandler | None = None,
        visibility_timeout: float = 30.0,
        max_deliveries: int = 5,
        batch: int = 100,
        block_ms: int = 2000,
        claim_interval: float | None = None,
        start_from: str = "0",
        handled_retention: float = 7 * 86400.0,
        prefix: str = PREFIX,
    ) -> None:
        if (handler is None) == (async_handler is None):
            raise ValueError("give exactly one of handler and async_handler")
        if not types:
            raise ValueError("a consumer needs at least one event type")
        if max_deliveries < 1 or visibility_timeout <= 0 or batch < 1 or block_ms < 1:
            raise ValueError("max_deliveries, visibility_timeout, batch and block_ms must be > 0")
        self.redis = redis
        self.db = db
        self.keys = Keys(prefix)
        self.group = check_name("group", group)
        self.consumer = consumer
        self.streams = [self.keys.stream(t) for t in dict.fromkeys(types)]
        self.streams.append(self.keys.retry(group))
        self.handler = handler
        self.async_handler = async_handler
        self.visibility_timeout = visibility_timeout
        self.max_deliveries = max_deliveries
        self.batch = batch
        self.block_ms = block_ms
        self.claim_interval = claim_interval or min(visibility_timeout / 2, 5.0)
        self.start_from = start_from
        self.handled_retention = handled_retention
        self.connected = asyncio.Event()
        self.handled = self.duplicates = self.failures = self.dead_lettered = 0
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._busy = False
        self._reads: dict[str, asyncio.Future[Any]] = {}

    async def start(self, *, wait: float | None = None) -> None:
        """Start consuming; with ``wait``, wait that long for the groups to exist.

        It does not fail when Redis is away: the loop keeps trying.
        """
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name=f"consumer:{self.group}:{self.consumer}")
        if wait:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.connected.wait(), wait)

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop; a batch being handled may finish (and be acknowledged) within ``timeout``."""
        self._stopping = True
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
        self._drop_reads()
        self.connected.clear()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = Backoff()
        ready = False
        first = True  # a group missing later was lost with Redis: recreate it from "0"
        next_claim = next_prune = 0.0
        while not self._stopping:
            try:
                if not ready:
                    await self._create_groups(self.start_from if first else "0")
                    ready, first = True, False
                    self.connected.set()
                    backoff.reset()
                    next_claim = 0.0
                if loop.time() >= next_prune:
                    await self._prune()
                    next_prune = loop.time() + min(3600.0, self.handled_retention / 2)
                if loop.time() >= next_claim:
                    await self._claim_stale()
                    next_claim = loop.time() + self.claim_interval
                if self._stopping:
                    return
                block = min(self.block_ms, int((next_claim - loop.time()) * 1000))
                for stream, entries in await self._read(max(block, 1)):
                    await self._process(stream, [(i, f, 1) for i, f in entries])
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    logger.error("consumer %s: Redis refused a command: %s", self.group, exc)
                    await backoff.sleep()
                else:
                    logger.warning(
                        "consumer %s: group missing (Redis emptied?); recreating", self.group
                    )
                ready = False
            except REDIS_ERRORS as exc:
                self._drop_reads()
                if self.connected.is_set() or backoff.attempt == 0:
                    logger.warning("consumer %s: no Redis (%s); retrying", self.group, exc)
                self.connected.clear()
                ready = False
                await backoff.sleep()
            except Exception:
                logger.exception("consumer %s: unexpected error; retrying", self.group)
                await backoff.sleep()

    async def _read(self, block: int) -> list[tuple[str, Any]]:
        """New entries for this consumer, waiting up to ``block`` ms: ``[(stream, entries)]``.

        One ``XREADGROUP`` over every stream, except on Cluster, where one
        command may only name keys of one slot and each stream has its own:
        there each stream keeps one blocking read in flight, across calls.
        Such a read is never cancelled while the consumer runs, since one
        the server already answered would leave its entries pending until
        the visibility timeout.
        """
        if len(self.streams) == 1 or not is_cluster(self.redis):
            reply: Any = await self.redis.xreadgroup(
                self.group,
                self.consumer,
                dict.fromkeys(self.streams, ">"),
                count=self.batch,
                block=block,
            )
            return list(reply or [])
        for stream in self.streams:
            if stream not in self._reads:
                self._reads[stream] = asyncio.ensure_future(
                    self.redis.xreadgroup(
                        self.group,
                        self.consumer,
                        {stream: ">"},
                        count=self.batch,
                        block=self.block_ms,
                    )
                )
        done, _ = await asyncio.wait(
            self._reads.values(), timeout=block / 1000, return_when=asyncio.FIRST_COMPLETED
        )
        out: list[tuple[str, Any]] = []
        for stream, read in list(self._reads.items()):
            if read in done:
                del self._reads[stream]
                out.extend(read.result() or [])
        return out

    def _drop_reads(self) -> None:
        reads, self._reads = self._reads, {}
        for read in reads.values():
            read.cancel()
            if read.done() and not read.cancelled():
                read.exception()  # retrieved: it is the error being handled

    async def _create_groups(self, start: str) -> None:
        for stream in self.streams:
            # Replays are only ever added for an existing group: never skip them.
            at = "0" if stream == self.streams[-1] else start
            try:
                await self.redis.xgroup_create(stream, self.group, id=at, mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def _prune(self) -> None:
        cutoff = time.time() - self.handled_retention
        await self.db.run(
            lambda c: c.execute(
                "DELETE FROM essaim_handled WHERE grp = ? AND handled_at < ?", (self.group, cutoff)
            )
        )

    async def _claim_stale(self) -> None:
        idle_ms = int(self.visibility_timeout * 1000)
        for stream in self.streams:
            start = "0-0"
            while not self._stopping:
                reply = await self.redis.xautoclaim(
                    stream, self.group, self.consumer, idle_ms, start_id=start, count=self.batch
                )
                start, entries = reply[0], reply[1]
                if len(reply) > 2 and reply[2]:
                    logger.error(
                        "consumer %s: %d pending messages of %s were trimmed before being handled",
                        self.group,
                        len(reply[2]),
                        stream,
                    )
                if entries:
                    counts = await self._delivery_counts(stream, [i for i, _ in entries])
                    await self._process(stream, [(i, f, counts.get(i, 1)) for i, f in entries])
                if start == "0-0":
                    break

    async def _delivery_counts(self, stream: str, ids: list[str]) -> dict[str, int]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for entry_id in ids:
                pipe.xpending_range(stream, self.group, entry_id, entry_id, 1)
            replies = await pipe.execute()
        return {row["message_id"]: int(row["times_delivered"]) for rows in replies for row in rows}

    async def _process(
        self, stream: str, entries: list[tuple[str, Mapping[str, str] | None, int]]
    ) -> None:
        self._busy = True
        try:
            acks: list[str] = []
            dead: list[tuple[str, Mapping[str, str], int, str]] = []
            todo: list[tuple[str, Mapping[str, str], int, Event]] = []
            for entry_id, fields, deliveries in entries:
                if fields is None:  # deleted from the stream while pending
                    acks.append(entry_id)
                    continue
                try:
                    event = Event.from_fields(fields)
                except ValueError as exc:
                    dead.append((entry_id, fields, deliveries, f"malformed event: {exc}"))
                    continue
                if deliveries > self.max_deliveries:
                    reason = f"gave up after {deliveries - 1} deliveries without an acknowledgement"
                    dead.append((entry_id, fields, deliveries - 1, reason))
                    continue
                todo.append((entry_id, fields, deliveries, event))
            outcomes = await self._handle([event for *_, event in todo])
            for (entry_id, fields, deliveries, event), outcome in zip(todo, outcomes, strict=True):
                if outcome is None:
                    self.handled += 1
                    acks.append(entry_id)
                elif outcome is _DUPLICATE:
                    self.duplicates += 1
                    acks.append(entry_id)
                else:
                    self.failures += 1
                    logger.warning(
                        "consumer %s: event %s (%s) failed on delivery %d of %d: %r",
                        self.group,
                        event.id,
                        event.type,
                        deliveries,
                        self.max_deliveries,
                        outcome,
                    )
                    if deliveries >= self.max_deliveries:
                        dead.append((entry_id, fields, deliveries, repr(outcome)))
            if dead:
                await self._dead_letter(stream, dead)
            if acks:
                await self.redis.xack(stream, self.group, *acks)
        finally:
            self._busy = False

    async def _handle(self, events: list[Event]) -> list[object]:
        """One outcome per event: None (handled), ``_DUPLICATE``, or the handler's exception."""
        if not events:
            return []
        if self.handler is not None:
            try:
                return await self.db.transaction(lambda conn: self._handle_tx(conn, events))
            except sqlite3.Error as exc:
                logger.error("consumer %s: database error: %s", self.group, exc)
                return [exc] * len(events)
        outcomes: list[object] = []
        for event in events:
            outcomes.append(await self._handle_async(event))
        return outcomes

    def _handle_tx(self, conn: sqlite3.Connection, events: list[Event]) -> list[object]:
        assert self.handler is not None
        outcomes: list[object] = []
        for event in events:
            conn.execute("SAVEPOINT essaim_event")
            try:
                cur = conn.execute(
                    "INSERT INTO essaim_handled (grp, event_id, handled_at) VALUES (?, ?, ?)"
                    " ON CONFLICT DO NOTHING",
                    (self.group, event.id, time.time()),
                )
                if cur.rowcount == 0:
                    outcomes.append(_DUPLICATE)
                else:
                    # The handler's log lines, calls and events continue the event's trace.
                    span = trace.start(event.traceparent, event.tracestate)
                    token = trace.TRACE.set(span)
                    started, error = time.time_ns(), None
                    try:
                        self.handler(conn, event)
                        logger.info(
                            "event %s %s handled by %s", event.type, event.id, self.group,
                            extra={"event_type": event.type, "event_id": event.id,
                                   "group": self.group},
                        )  # fmt: skip
                    except Exception as exc:
                        error = exc
                        raise
                    finally:
                        trace.TRACE.reset(token)
                        _record_consumer(span, event, self.group, started, error)
                    outcomes.append(None)
                conn.execute("RELEASE essaim_event")
            except Exception as exc:
                conn.execute("ROLLBACK TO essaim_event")
                conn.execute("RELEASE essaim_event")
                outcomes.append(exc)
        return outcomes

    async def _handle_async(self, event: Event) -> object:
        assert self.async_handler is not None
        key = (self.group, event.id)
        try:
            seen = await self.db.run(
                lambda c: c.execute(
                    "SELECT 1 FROM essaim_handled WHERE grp = ? AND event_id = ?", key
                ).fetchone()
            )
        except sqlite3.Error as exc:
            return exc
        if seen:
            return _DUPLICATE
        span = trace.start(event.traceparent, event.tracestate)
        token = trace.TRACE.set(span)
        started, error = time.time_ns(), None
        try:
            await self.async_handler(event)
            logger.info(
                "event %s %s handled by %s",
                event.type,
                event.id,
                self.group,
                extra={"event_type": event.type, "event_id": event.id, "group": self.group},
            )
        except Exception as exc:
            error = exc
            return exc
        finally:
            trace.TRACE.reset(token)
            _record_consumer(span, event, self.group, started, error)
        try:
            await self.db.transaction(
                lambda c: c.execute(
                    "INSERT INTO essaim_handled (grp, event_id, handled_at) VALUES (?, ?, ?)"
                    " ON CONFLICT DO NOTHING",
                    (*key, time.time()),
                )
            )
        except sqlite3.Error as exc:
            return exc
        return None

    async def _dead_letter(
        self, stream: str, dead: list[tuple[str, Mapping[str, str], int, str]]
    ) -> None:
        # One transaction where the stream and the dead letters share a node;
        # on Cluster they live in different slots, so the dead letters are
        # written first and the acknowledgement follows: a crash in between
        # dead-letters the message again later (a duplicate, never a loss).
        cluster = is_cluster(self.redis)
        async with self.redis.pipeline(transaction=not cluster) as pipe:
            for entry_id, fields, deliveries, error in dead:
                pipe.xadd(
                    self.keys.dead(self.group),
                    redis_fields(
                        dead_fields(self.group, stream, entry_id, deliveries, error, fields)
                    ),
                )
            if not cluster:
                pipe.xack(stream, self.group, *[entry_id for entry_id, *_ in dead])
            await pipe.execute()
        if cluster:
            await self.redis.xack(stream, self.group, *[entry_id for entry_id, *_ in dead])
        self.dead_lettered += len(dead)
        for entry_id, _, deliveries, error in dead:
            logger.error(
                "consumer %s: message %s of %s dead-lettered after %d deliveries: %s",
                self.group,
                entry_id,
                stream,
                deliveries,
                error,
            )


def _record_consumer(
    span: trace.Trace, event: Event, group: str, started: int, error: Exception | None
) -> None:
    """Record the span of one event handled by ``group`` (kind CONSUMER) when spans are exported.

    Its parent is the event's producer span (the ``traceparent`` the event
    carries), so it continues the producer's trace.
    """
    recorder = spans.active()
    if recorder is None or not span.sampled:
        return
    attributes: Attributes = {
        "messaging.system": "essaim", "messaging.operation.type": "process",
        "messaging.operation.name": "process", "messaging.destination.name": event.type,
        "messaging.consumer.group.name": group, "messaging.message.id": event.id,
        "cloudevents.event_id": event.id, "cloudevents.event_type": event.type,
        "cloudevents.event_source": event.source,
    }  # fmt: skip
    failure = None
    if error is not None:
        attributes["error.type"] = type(error).__name__
        failure = f"{type(error).__name__}: {error}"[:200]
    recorder.record(
        Span(
            "consumer", f"process {event.type}", span.trace_id, span.span_id, span.parent_id,
            started, time.time_ns(), attributes, failure,
        )
    )  # fmt: skip
