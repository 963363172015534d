"""The event bus on Redis Streams: the envelope, the key layout, publishing.

An :class:`Event` carries CloudEvents' attribute names (``specversion``,
``id``, ``type``, ``source``, ``time``, ``datacontenttype``, ``data``) and is
stored as one stream entry, one field per attribute, ``data`` as JSON.
Producers should publish through the outbox (:mod:`core.events.outbox`), which
never loses an event nor publishes one without its data change;
:meth:`EventBus.publish` is the direct way, for events that may be lost with
the request that made them. Consuming is :mod:`core.events.consumer`; dead
letters are :mod:`core.events.dead_letters`. Keys, with the default prefix
(``<type>`` an event type, ``<group>`` a consumer group)::

    essaim:events:{<type>}               stream of the events of one type (and its groups)
    essaim:events:{group:<group>}:retry  replayed dead letters, read by that group only
    essaim:events:{group:<group>}:dead   dead letters of one group

Each stream is its own hash tag, so on Redis Cluster the streams spread over
the shards; a group's retry and dead-letter streams share theirs, since a
replay moves entries from one to the other in one script. Types and group
names never contain ``:`` (nor braces), so the families never collide.
"""

from __future__ import annotations

import re
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from core import trace
from core.redis import Redis, ReplicaWait, tag
from core.telemetry import spans
from core.telemetry.spans import Span

__all__ = [
    "PREFIX",
    "AsyncHandler",
    "Event",
    "EventBus",
    "Keys",
    "TxHandler",
    "check_name",
    "now_iso",
    "producer_fields",
    "record_producer",
    "redis_fields",
]

PREFIX = "essaim:events:"
SPECVERSION = "1.0"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}\Z")


def now_iso() -> str:
    """The current UTC time in RFC 3339 with milliseconds (``2024-05-01T12:00:00.123Z``)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def redis_fields(fields: Mapping[str, str]) -> dict[Any, Any]:
    """Stream fields as redis-py's (invariant) parameter type wants them."""
    return dict(fields)


def check_name(what: str, value: str) -> str:
    """``value`` when it is a valid event type or group name, else ``ValueError``."""
    if not NAME_RE.match(value):
        raise ValueError(f"invalid {what} {value!r}: letters, digits, '.', '_', '-' only")
    return value


def _current_traceparent() -> str | None:
    span = trace.current()
    return None if span is None else span.traceparent()


def _current_tracestate() -> str | None:
    span = trace.current()
    return None if span is None else span.tracestate


@dataclass(frozen=True, slots=True)
class Event:
    """One event: what happened (``type``), where (``source``), when, and its ``data``.

    ``id`` is unique per event (a new UUID by default) and is what consumers
    deduplicate on: publishing the same event twice delivers it twice but
    handles it once. ``data`` is anything orjson can encode.

    ``traceparent`` and ``tracestate`` are CloudEvents' distributed-tracing
    extension: by default, the span of the request or event being handled
    where the event is made (:func:`core.trace.current`), so that its
    consumers continue that trace.
    """

    type: str
    source: str
    data: Any = None
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    time: str = field(default_factory=now_iso)
    traceparent: str | None = field(default_factory=_current_traceparent)
    tracestate: str | None = field(default_factory=_current_tracestate)

    def __post_init__(self) -> None:
        check_name("event type", self.type)
        if not self.source:
            raise ValueError("an event needs a source")
        if not self.id:
            raise ValueError("an event needs an id")

    def to_fields(self) -> dict[str, str]:
        """The stream entry's fields."""
        fields = {
            "specversion": SPECVERSION,
            "id": self.id,
            "type": self.type,
            "source": self.source,
            "time": self.time,
            "datacontenttype": "application/json",
            "data": orjson.dumps(self.data).decode(),
        }
        if self.traceparent:
            fields["traceparent"] = self.traceparent
        if self.tracestate:
            fields["tracestate"] = self.tracestate
        return fields

    @classmethod
    def from_fields(cls, fields: Mapping[str, str]) -> Event:
        """The event in a stream entry; ``ValueError`` when it is not a valid envelope."""
        try:
            spec = fields.get("specversion", SPECVERSION)
            if spec != SPECVERSION:
                raise ValueError(f"unsupported specversion {spec!r}")
            return cls(
                id=fields["id"],
                type=fields["type"],
                source=fields["source"],
                time=fields["time"],
                data=orjson.loads(fields["data"]),
                traceparent=fields.get("traceparent"),
                tracestate=fields.get("tracestate"),
            )
        except KeyError as exc:
            raise ValueError(f"missing attribute {exc.args[0]!r}") from None
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"data is not JSON: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """The event in CloudEvents' JSON format."""
        return (
            {
                "specversion": SPECVERSION,
                "id": self.id,
                "type": self.type,
                "source": self.source,
                "time": self.time,
                "datacontenttype": "application/json",
                "data": self.data,
            }
            | ({"traceparent": self.traceparent} if self.traceparent else {})
            | ({"tracestate": self.tracestate} if self.tracestate else {})
        )


def producer_fields(event: Event) -> tuple[dict[str, str], trace.Trace | None]:
    """The stream fields of ``event`` as it is written, and its producer span if it has one.

    An event made while a request or another event is handled carries that
    work's ``traceparent`` (the default). Written, it becomes a span of its
    own, a child of that work: its fields' ``traceparent`` names that span,
    so each consumer's span is a child of it (OpenTelemetry's messaging
    model: a PRODUCER span per message, its consumers' spans below it). An
    event carrying another ``traceparent`` (a replay, one read from a
    stream) is written as it is, with no span.
    """
    fields = event.to_fields()
    current = trace.current()
    if current is None or event.traceparent != current.traceparent():
        return fields, None
    producer = current.child()
    fields["traceparent"] = producer.traceparent()
    return fields, producer


def record_producer(
    producer: trace.Trace | None, event: Event, operation: str, started_ns: int
) -> None:
    """Record ``event``'s producer span (kind PRODUCER) when spans are exported.

    ``operation`` is OpenTelemetry's messaging operation: ``create`` for an
    event written to the outbox (the relay sends it later, in a batch),
    ``send`` for one appended to its stream directly.
    """
    recorder = spans.active()
    if recorder is None or producer is None or not producer.sampled:
        return
    recorder.record(
        Span(
            "producer", f"{operation} {event.type}", producer.trace_id, producer.span_id,
            producer.parent_id, started_ns, time.time_ns(),
            {
                "messaging.system": "essaim", "messaging.operation.type": operation,
                "messaging.operation.name": operation,
                "messaging.destination.name": event.type, "messaging.message.id": event.id,
                "cloudevents.event_id": event.id, "cloudevents.event_type": event.type,
                "cloudevents.event_source": event.source,
            },
        )
    )  # fmt: skip


#: Handles one event inside the transaction that records it as handled; must not commit.
TxHandler = Callable[[sqlite3.Connection, Event], None]
#: Handles one event outside the database; see :class:`Consumer` for what that guarantees.
AsyncHandler = Callable[[Event], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Keys:
    """The Redis keys of the bus under ``prefix``."""

    prefix: str = PREFIX

    def stream(self, type: str) -> str:
        return self.prefix + tag(check_name("event type", type))

    def retry(self, group: str) -> str:
        return self.prefix + tag("group:" + check_name("group", group)) + ":retry"

    def dead(self, group: str) -> str:
        return self.prefix + tag("group:" + check_name("group", group)) + ":dead"


class EventBus:
    """The producer side: appends events to their type's stream.

    Each stream keeps about ``maxlen`` entries (``None``: no trimming). A
    consumer group that falls further behind than that loses the oldest
    entries, which are logged when it tries to claim them.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str = PREFIX,
        maxlen: int | None = 100_000,
    ) -> None:
        self.redis = redis
        #: Behind Sentinel, a batch of :meth:`publish_fields` waits for one replica.
        self.replica_wait = ReplicaWait(redis)
        self.keys = Keys(prefix)
        self.maxlen = maxlen

    async def publish(self, event: Event) -> str:
        """Append ``event``; returns its stream entry id.

        Raises one of :data:`core.redis.REDIS_ERRORS` when Redis is away: the
        event is then not published (use the outbox when that matters).
        """
        stream = self.keys.stream(event.type)
        fields, producer = producer_fields(event)
        started = time.time_ns()
        entry = str(await self.redis.xadd(stream, redis_fields(fields), maxlen=self.maxlen))
        record_producer(producer, event, "send", started)
        return entry

    async def publish_many(self, events: Sequence[Event]) -> list[str]:
        """Append ``events`` in order in one round trip; their entry ids."""
        written = [producer_fields(event) for event in events]
        started = time.time_ns()
        entries = await self.publish_fields(
            [(event.type, fields) for event, (fields, _) in zip(events, written, strict=True)]
        )
        for event, (_, producer) in zip(events, written, strict=True):
            record_producer(producer, event, "send", started)
        return entries

    async def publish_fields(self, entries: Sequence[tuple[str, Mapping[str, str]]]) -> list[str]:
        """Append already encoded events, ``(type, fields)``, in order in one round trip.

        For the outbox relay, which stores events encoded. On an error some of
        them may have been appended: publishing again duplicates those, which
        consumers handle once.
        """
        if not entries:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for type, fields in entries:
                pipe.xadd(self.keys.stream(type), redis_fields(fields), maxlen=self.maxlen)
            waiting = self.replica_wait.wanted()
            if waiting:
                # Behind Sentinel: return once a replica has the batch too, so
                # that a failover right after cannot lose what the outbox then
                # marks published (WAIT covers this connection's writes).
                pipe.execute_command(*self.replica_wait.args())
            replies = await pipe.execute()
        if waiting:
            self.replica_wait.done(int(replies.pop()), "events")
        return [str(entry_id) for entry_id in replies]
