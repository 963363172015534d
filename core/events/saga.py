"""Sagas: a business transaction across services as local transactions linked by events.

A saga is owned by one service and kept in that service's database (table
``essaim_sagas``, :data:`core.db.CORE_SCHEMA`). It is a small state machine:

- a :class:`Step` is a state in which the saga waits: entering it adds the
  step's command event to the outbox (in the transaction that entered it),
  and one of the step's replies, published by a participant, moves the saga
  on. A reply's ``data["reason"]``, when present, is recorded as the saga's
  reason (why it was rejected, say);
- a state without a step is final, unless the service moves the saga on
  itself with :meth:`Saga.move` (a cancellation);
- a step that gets no reply within the saga's ``timeout`` moves the saga to
  the step's ``on_timeout`` state and compensates;
- the :class:`Compensation` is one event that undoes what the participants
  may have done. It is sent when the saga is moved with ``compensate=`` (a
  timeout, a cancellation) and sent again until the participant answers with
  its ``done`` reply: a compensation can't fail, it can only be late.

While a step waits, its command is sent again every ``retry`` seconds, each
time as a new event (a new id) with the same data: events lost with an
emptied Redis, or a reply lost the same way, are made good by the next
send. So participants must be idempotent **by saga**, not only by event id:
a command for a saga they already answered gets the same answer again, and
a compensation that arrives before the command it undoes must leave a mark
so that the command, when it comes, does nothing. Replies that find the
saga in another state (late, repeated) are ignored; the saga's state only
moves inside a transaction that reads it first, so two processes handling
replies or timeouts of one saga never both move it.

The events carry the saga's id in ``data[key]`` (``bill_id`` for bills).
Running one: :class:`SagaRunner` (the service scaffold makes one per saga
of a :class:`~core.service.scaffold.Service`): it handles the replies, fires
the timeouts and the resends, and lets requests wait for a saga to move.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import sqlite3
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import orjson

from core import log
from core.db import Database, after_commit
from core.errors import Conflict, NotFound
from core.events.bus import Event, check_name
from core.events.outbox import add_to_outbox
from core.tasks import TaskSet

logger = log.get("saga")

__all__ = [
    "Compensation",
    "Saga",
    "SagaConflict",
    "SagaNotFound",
    "SagaRunner",
    "SagaState",
    "Step",
]

COLUMNS = (
    "saga, id, state, data, reason, timeout, retry, deadline, next_send, sends,"
    " compensation, compensated_at, created_at, updated_at"
)


@dataclasses.dataclass(frozen=True, slots=True)
class SagaState:
    """One saga as stored: its state, its data, why it ended where it did.

    ``compensation`` is the cause of the compensation sent (``None``: none
    was), ``compensated_at`` when the participant confirmed it (``None``: not
    yet). ``deadline`` is when the step in progress times out.
    """

    saga: str
    id: str
    state: str
    data: Any
    reason: Any
    timeout: float
    retry: float
    deadline: float | None
    next_send: float | None
    sends: int
    compensation: str | None
    compensated_at: float | None
    created_at: float
    updated_at: float

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> SagaState:
        values = list(row)
        values[3] = orjson.loads(values[3])
        values[4] = None if values[4] is None else orjson.loads(values[4])
        return cls(*values)


@dataclasses.dataclass(frozen=True, slots=True)
class Step:
    """In ``state`` the saga sends ``command(saga)`` and waits for one of ``replies``.

    ``replies`` maps a reply's event type to the state it moves the saga to;
    with no reply within the saga's timeout it goes to ``on_timeout`` and
    compensates.
    """

    state: str
    command: Callable[[SagaState], Event]
    replies: Mapping[str, str]
    on_timeout: str


@dataclasses.dataclass(frozen=True, slots=True)
class Compensation:
    """``command(saga, cause)`` undoes what the participants did; ``done`` is their answer."""

    command: Callable[[SagaState, str], Event]
    done: str


class SagaNotFound(NotFound):
    """No saga with that id."""


class SagaConflict(Conflict):
    """The saga is in a state the requested move does not start from."""


class Saga:
    """A saga's definition: its ``name``, its steps, its compensation (see the module docstring).

    ``initial`` is the state :meth:`start` enters; ``key`` the field of the
    events' ``data`` that holds the saga's id.
    """

    def __init__(
        self,
        name: str,
        *,
        key: str,
        initial: str,
        steps: Sequence[Step],
        compensation: Compensation | None = None,
    ) -> None:
        self.name = check_name("saga name", name)
        self.key = key
        self.initial = initial
        self.steps = {step.state: step for step in steps}
        self.compensation = compensation
        self.listeners: list[Callable[[str], None]] = []
        replies = {t for step in steps for t in step.replies}
        if compensation is not None:
            if compensation.done in replies:
                raise ValueError(f"{compensation.done!r} is both a step's reply and the done reply")
            replies.add(compensation.done)
        self.reply_types = tuple(sorted(replies))

    # ------------------------------------------------------------------ reads

    def get(self, conn: sqlite3.Connection, saga_id: str) -> SagaState | None:
        """The saga ``saga_id``, or None."""
        row = conn.execute(
            f"SELECT {COLUMNS} FROM essaim_sagas WHERE saga = ? AND id = ?", (self.name, saga_id)
        ).fetchone()
        return None if row is None else SagaState.from_row(row)

    def next_due(self, conn: sqlite3.Connection) -> float | None:
        """The earliest deadline or resend time of this saga's instances, or None."""
        row = conn.execute(
            "SELECT min(t) FROM (SELECT min(deadline) AS t FROM essaim_sagas WHERE saga = ?"
            " AND deadline IS NOT NULL UNION ALL SELECT min(next_send) FROM essaim_sagas"
            " WHERE saga = ? AND next_send IS NOT NULL)",
            (self.name, self.name),
        ).fetchone()
        return None if row[0] is None else float(row[0])

    # ------------------------------------------------------------------ writes (in a transaction)

    def start(
        self, conn: sqlite3.Connection, saga_id: str, data: Any, *, timeout: float, retry: float
    ) -> SagaState:
        """Create the saga ``saga_id`` in the initial state; its step's command goes to the outbox.

        ``timeout`` (seconds a step waits for its reply) and ``retry``
        (seconds between sends of an unanswered command or compensation) stay
        with the saga for its life. A saga id already taken raises
        ``sqlite3.IntegrityError``.
        """
        now = time.time()
        conn.execute(
            f"INSERT INTO essaim_sagas ({COLUMNS}) VALUES (?, ?, ?, ?, NULL, ?, ?, NULL, NULL, 0,"
            " NULL, NULL, ?, ?)",
            (self.name, saga_id, "", orjson.dumps(data).decode(), timeout, retry, now, now),
        )
        state = self.get(conn, saga_id)
        assert state is not None
        return self._enter(conn, state, self.initial, None, None, now)

    def move(
        self,
        conn: sqlite3.Connection,
        saga_id: str,
        target: str,
        *,
        allowed: Collection[str],
        reason: Any = None,
        compensate: str | None = None,
    ) -> SagaState:
        """Move the saga to ``target`` from one of the ``allowed`` states (a cancellation).

        ``compensate`` (the cause) sends the compensation. A saga already in
        ``target`` is returned unchanged (moving twice is moving once);
        :class:`SagaNotFound` or :class:`SagaConflict` otherwise.
        """
        state = self.get(conn, saga_id)
        if state is None:
            raise SagaNotFound(f"no {self.name} with id {saga_id}")
        if state.state == target:
            return state
        if state.state not in allowed:
            raise SagaConflict(
                f"{self.name} {saga_id} is {state.state}: only a {' or '.join(sorted(allowed))}"
                f" {self.name} can become {target}",
                state=state.state,
            )
        return self._enter(conn, state, target, reason, compensate, time.time())

    def handle(self, conn: sqlite3.Connection, event: Event) -> str:
        """Apply the reply ``event``; what came of it: ``moved``, ``compensated``, ``stale``, ``unknown``.

        ``stale``: the saga is not waiting for this reply (a late or repeated
        one); ``unknown``: no saga has the event's id (not ours). An event
        without the key raises ``ValueError`` (a malformed event).
        """
        saga_id = self.id_of(event)
        state = self.get(conn, saga_id)
        if state is None:
            return "unknown"
        now = time.time()
        if self.compensation is not None and event.type == self.compensation.done:
            if state.compensation is None or state.compensated_at is not None:
                return "stale"
            waiting = state.state in self.steps
            conn.execute(
                "UPDATE essaim_sagas SET compensated_at = ?, updated_at = ?,"
                " next_send = CASE WHEN ? THEN next_send ELSE NULL END WHERE saga = ? AND id = ?",
                (now, now, waiting, self.name, saga_id),
            )
            self._notify_after(conn, saga_id)
            return "compensated"
        step = self.steps.get(state.state)
        target = None if step is None else step.replies.get(event.type)
        if target is None:
            return "stale"
        reason = event.data.get("reason") if isinstance(event.data, dict) else None
        self._enter(conn, state, target, reason, None, now)
        return "moved"

    def id_of(self, event: Event) -> str:
        """The saga id an event is about (``data[key]``); ``ValueError`` if it has none."""
        data = event.data
        if not isinstance(data, dict) or not isinstance(data.get(self.key), int | str):
            raise ValueError(f"{event.type} {event.id}: data has no {self.key!r}")
        return str(data[self.key])

    def expire(self, conn: sqlite3.Connection, now: float, limit: int = 500) -> int:
        """Time out the sagas whose step's deadline passed (at most ``limit``); how many."""
        rows = conn.execute(
            f"SELECT {COLUMNS} FROM essaim_sagas WHERE saga = ? AND deadline <= ?"
            " ORDER BY deadline LIMIT ?",
            (self.name, now, limit),
        ).fetchall()
        for row in rows:
            state = SagaState.from_row(row)
            step = self.steps[state.state]
            reason = {
                "code": "timeout",
                "detail": f"no answer to {step.command(state).type} within {state.timeout:g} s",
            }
            self._enter(conn, state, step.on_timeout, reason, "timeout", now)
        return len(rows)

    def resend(self, conn: sqlite3.Connection, now: float, limit: int = 500) -> int:
        """Send again the commands and compensations still unanswered at ``now``; how many."""
        rows = conn.execute(
            f"SELECT {COLUMNS} FROM essaim_sagas WHERE saga = ? AND next_send <= ?"
            " ORDER BY next_send LIMIT ?",
            (self.name, now, limit),
        ).fetchall()
        for row in rows:
            state = SagaState.from_row(row)
            step = self.steps.get(state.state)
            outstanding = True
            if step is not None:
                add_to_outbox(conn, step.command(state))
            elif (
                self.compensation is not None
                and state.compensation is not None
                and state.compensated_at is None
            ):
                add_to_outbox(conn, self.compensation.command(state, state.compensation))
            else:
                outstanding = False
            conn.execute(
                "UPDATE essaim_sagas SET next_send = ?, sends = sends + ? WHERE saga = ? AND id = ?",
                (now + state.retry if outstanding else None, int(outstanding), self.name, state.id),
            )
        return len(rows)

    def _enter(
        self,
        conn: sqlite3.Connection,
        state: SagaState,
        target: str,
        reason: Any,
        compensate: str | None,
        now: float,
    ) -> SagaState:
        step = self.steps.get(target)
        compensation = state.compensation
        entered = dataclasses.replace(state, state=target, updated_at=now)
        if reason is not None:
            entered = dataclasses.replace(entered, reason=reason)
        if compensate is not None and self.compensation is not None and compensation is None:
            compensation = compensate
            entered = dataclasses.replace(entered, compensation=compensate)
            add_to_outbox(conn, self.compensation.command(entered, compensate))
        if step is not None:
            add_to_outbox(conn, step.command(entered))
        outstanding = step is not None or (
            compensation is not None and entered.compensated_at is None
        )
        entered = dataclasses.replace(
            entered,
            deadline=now + state.timeout if step is not None else None,
            next_send=now + state.retry if outstanding else None,
            sends=state.sends + (1 if step is not None else 0),
        )
        conn.execute(
            "UPDATE essaim_sagas SET state = ?, reason = ?, deadline = ?, next_send = ?,"
            " sends = ?, compensation = ?, updated_at = ? WHERE saga = ? AND id = ?",
            (
                target,
                None if entered.reason is None else orjson.dumps(entered.reason).decode(),
                entered.deadline,
                entered.next_send,
                entered.sends,
                entered.compensation,
                now,
                self.name,
                state.id,
            ),
        )
        self._notify_after(conn, state.id)
        return entered

    def _notify_after(self, conn: sqlite3.Connection, saga_id: str) -> None:
        for listener in self.listeners:
            after_commit(conn, functools.partial(listener, saga_id))


class SagaRunner:
    """Runs one :class:`Saga` in one process: replies, timeouts, resends, waits.

    :meth:`handle` is the consumer's handler for the saga's reply types.
    The loop started by :meth:`start` times out and resends, each in one
    transaction; it sleeps until the next deadline or resend time, at most
    ``poll_interval`` (other processes start sagas too). Counters:
    ``moved``, ``compensated``, ``stale``, ``unknown``, ``timeouts``,
    ``resends``.
    """

    def __init__(self, saga: Saga, db: Database, *, poll_interval: float = 1.0) -> None:
        self.saga = saga
        self.db = db
        self.poll_interval = poll_interval
        self.moved = self.compensated = self.stale = self.unknown = 0
        self.timeouts = self.resends = 0
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._wake = asyncio.Event()
        self._tasks = TaskSet(f"saga:{saga.name}")

    def handle(self, conn: sqlite3.Connection, event: Event) -> None:
        """The consumer's handler (inside the transaction that records the event as handled)."""
        outcome = self.saga.handle(conn, event)
        setattr(self, outcome, getattr(self, outcome) + 1)

    async def start(self) -> None:
        self.saga.listeners.append(self._notify)
        self._tasks.spawn(self._run(), "timeouts")

    async def stop(self) -> None:
        with contextlib.suppress(ValueError):
            self.saga.listeners.remove(self._notify)
        await self._tasks.stop()

    def wake(self) -> None:
        """Look for due timeouts and resends now (after starting a saga with a short timeout)."""
        self._wake.set()

    async def wait(
        self, saga_id: str, leaving: str, timeout: float, *, recheck: float = 0.5
    ) -> SagaState | None:
        """The saga once it is no longer in ``leaving``, or as it is after ``timeout`` seconds.

        A move made in this process wakes the waiter at once; one made by
        another process (another instance of the service) is seen within
        ``recheck`` seconds. None when there is no such saga.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            woken = asyncio.Event()
            self._waiters.setdefault(saga_id, set()).add(woken)
            try:
                state = await self.db.run(lambda c: self.saga.get(c, saga_id))
                remaining = deadline - loop.time()
                if state is None or state.state != leaving or remaining <= 0:
                    return state
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), min(remaining, recheck))
            finally:
                waiting = self._waiters.get(saga_id)
                if waiting is not None:
                    waiting.discard(woken)
                    if not waiting:
                        del self._waiters[saga_id]

    def describe(self) -> dict[str, Any]:
        return {
            name: getattr(self, name)
            for name in ("moved", "compensated", "stale", "unknown", "timeouts", "resends")
        }

    def _notify(self, saga_id: str) -> None:
        for woken in self._waiters.get(saga_id, ()):
            woken.set()

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                now = time.time()
                expired = await self.db.transaction(functools.partial(self.saga.expire, now=now))
                resent = await self.db.transaction(functools.partial(self.saga.resend, now=now))
                self.timeouts += expired
                self.resends += resent
                if expired:
                    logger.warning("saga %s: %d timed out and compensate", self.saga.name, expired)
                if expired == 500 or resent == 500:
                    continue  # more are due
                due = await self.db.run(self.saga.next_due)
            except sqlite3.Error as exc:
                logger.error("saga %s: database error: %s; retrying", self.saga.name, exc)
                due = None
            delay = self.poll_interval if due is None else due - time.time()
            delay = min(max(delay, 0.01), self.poll_interval)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
