"""Finished spans, recorded where the work ends and taken in batches by an exporter.

A span is recorded once, when its work is over, as one tuple appended to the
process's :class:`Recorder`. The recorder is a ``collections.deque``:
appending and taking are atomic, so the event loop, the database's thread
(an event consumer, the outbox) and the exporter's thread share it without
a lock.

The first item of a record is a function that turns the record into a
:class:`Span`; the exporter calls it on its own thread. So a hot path
records the raw values it has and pays for no formatting: the gateway's
data plane appends one tuple of a dozen values per request (see
:mod:`core.proxy.span`). Code off the hot path records a :class:`Span`
directly (:meth:`Recorder.record`).

The recorder is bounded (``limit`` records): past it, records are dropped
and counted (``dropped``), never waited for. It wakes its exporter when a
batch is ready, once per ``batch`` records; otherwise the exporter comes by
on its own schedule.

There is one recorder per process, installed by whoever starts the
exporter (:func:`install`), found by :func:`active` (None while export is
off: the one check a path makes).
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable
from typing import Any, Literal

__all__ = ["Attributes", "Kind", "Recorder", "Span", "active", "install"]

#: What a span is, in OpenTelemetry's terms (``SpanKind``).
Kind = Literal["server", "client", "producer", "consumer", "internal"]
#: Span attributes: OpenTelemetry's attribute values (no ``None``).
Attributes = dict[str, str | bool | int | float]


@dataclasses.dataclass(frozen=True, slots=True)
class Span:
    """One finished span, as the exporter sends it.

    Ids are lower-case hex (``str`` or ``bytes``): the same ``trace_id`` and
    ``span_id`` as the work's ``traceparent`` and log lines
    (:class:`core.trace.Trace`). ``parent_id`` is None for the root of a
    trace. Times are nanoseconds since the epoch. ``error``, when set, says
    why the work failed (the span's status is then ERROR). A span whose
    trace is not ``sampled`` (the W3C flag) is not exported.
    """

    kind: Kind
    name: str
    trace_id: str | bytes
    span_id: str | bytes
    parent_id: str | bytes | None
    start_ns: int
    end_ns: int
    attributes: Attributes
    error: str | None = None
    sampled: bool = True


#: A record's first item: turns the record into a span, or None to skip it.
Converter = Callable[[tuple[Any, ...]], Span | None]


def _as_is(record: tuple[Any, ...]) -> Span:
    span: Span = record[1]
    return span


def _nothing() -> None:
    pass


class Recorder:
    """Records waiting for the exporter; see the module docstring."""

    __slots__ = ("batch", "dropped", "limit", "pending", "wake")

    def __init__(
        self, *, limit: int = 2048, batch: int = 512, wake: Callable[[], None] = _nothing
    ) -> None:
        if not 1 <= batch <= limit:
            raise ValueError(f"expected 1 <= batch <= limit, got {batch} and {limit}")
        self.limit = limit
        self.batch = batch
        #: Called (from any thread) when ``batch`` records are waiting.
        self.wake = wake
        #: Records dropped because ``limit`` were waiting.
        self.dropped = 0
        self.pending: collections.deque[tuple[Any, ...]] = collections.deque()

    def add(self, record: tuple[Any, ...]) -> None:
        """Keep ``record`` (its first item a :data:`Converter`) for the exporter."""
        pending = self.pending
        waiting = len(pending)
        if waiting >= self.limit:
            self.dropped += 1
            return
        pending.append(record)
        if waiting + 1 == self.batch:
            self.wake()

    def record(self, span: Span) -> None:
        """Keep a span already made."""
        self.add((_as_is, span))

    def take(self, most: int) -> list[tuple[Any, ...]]:
        """Up to ``most`` of the oldest records, removed (the exporter's side)."""
        pending = self.pending
        taken = []
        for _ in range(min(most, len(pending))):
            try:
                taken.append(pending.popleft())
            except IndexError:  # pragma: no cover - only this side removes
                break
        return taken


_active: Recorder | None = None


def active() -> Recorder | None:
    """The process's recorder while spans are exported; None otherwise."""
    return _active


def install(recorder: Recorder | None) -> None:
    """Make ``recorder`` the process's (None: export is off)."""
    global _active
    _active = recorder
