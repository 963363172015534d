"""W3C Trace Context: the trace a piece of work belongs to, carried across calls and events.

A :class:`Trace` is this process's span of one trace: the ``trace_id`` that
the whole request shares from the gateway to the last event consumer, the
``span_id`` of the work done here, and the ``parent_id`` it continues. It
lives in a context variable (:func:`current`), set by whoever starts the
work: the service scaffold for a request (from its ``traceparent`` header),
the event consumer for an event (from the event's ``traceparent``
attribute, CloudEvents' distributed-tracing extension). Calls to other
services send :meth:`Trace.headers`, events written meanwhile carry
:meth:`Trace.traceparent`, and every log line written meanwhile carries
``trace_id``, ``span_id`` and ``request_id`` (:class:`LogContext`).

Spans are not exported here: :mod:`core.telemetry` records the finished
ones, with these ids, when export to OpenTelemetry is on.
"""

from __future__ import annotations

import contextvars
import dataclasses
import logging
import re
import secrets

__all__ = ["TRACE", "LogContext", "Trace", "current", "parse_traceparent", "start"]

# version "-" trace-id "-" parent-id "-" flags, lower-case hex (W3C Trace Context, level 1).
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?\Z")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
_MAX_STATE = 512  # tracestate: 32 members of up to 256 chars are allowed; keep it small
_MAX_BAGGAGE = 8192  # the W3C Baggage limit

TRACE: contextvars.ContextVar[Trace | None] = contextvars.ContextVar("essaim_trace", default=None)


@dataclasses.dataclass(frozen=True, slots=True)
class Trace:
    """This process's span of a trace, with what travels along with it."""

    trace_id: str
    span_id: str
    parent_id: str | None = None
    flags: str = "01"
    tracestate: str | None = None
    baggage: str | None = None
    request_id: str | None = None

    def traceparent(self) -> str:
        """The ``traceparent`` for work done on this span's behalf (this span is its parent)."""
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"

    def child(self) -> Trace:
        """A new span of this trace whose parent is this one, carrying the same state.

        The span of a call this work makes (its client span) or of an event
        it writes (the producer span): what goes out names it as the parent.
        """
        return Trace(
            self.trace_id, secrets.token_hex(8), self.span_id, self.flags,
            self.tracestate, self.baggage, self.request_id,
        )  # fmt: skip

    @property
    def sampled(self) -> bool:
        """Whether the trace is sampled (the ``sampled`` bit of its flags): spans are exported."""
        return int(self.flags, 16) & 1 == 1

    def headers(self) -> dict[str, str]:
        """``traceparent``, and ``tracestate`` and ``baggage`` when there are any, for a call."""
        out = {"traceparent": self.traceparent()}
        if self.tracestate:
            out["tracestate"] = self.tracestate
        if self.baggage:
            out["baggage"] = self.baggage
        return out


def parse_traceparent(value: str | None) -> tuple[str, str, str] | None:
    """``(trace_id, parent_id, flags)`` of a valid ``traceparent``; None otherwise.

    Version ``ff`` and all-zero ids are invalid; version ``00`` has nothing
    after the flags, a later version may (and is read as version 00).
    """
    if not value:
        return None
    found = _TRACEPARENT.match(value.strip())
    if found is None:
        return None
    version, trace_id, parent_id, flags, rest = found.groups()
    if version == "ff" or (version == "00" and rest) or trace_id == _ZERO_TRACE:
        return None
    if parent_id == _ZERO_SPAN:
        return None
    return trace_id, parent_id, flags


def start(
    traceparent: str | None = None,
    tracestate: str | None = None,
    baggage: str | None = None,
    request_id: str | None = None,
) -> Trace:
    """A new span: a child of ``traceparent`` when it is valid, else the root of a new trace.

    ``tracestate`` is kept only with a valid parent (W3C: it belongs to it);
    oversized ``tracestate`` or ``baggage`` values are dropped, not cut.
    """
    parsed = parse_traceparent(traceparent)
    span_id = secrets.token_hex(8)
    if baggage is not None and len(baggage) > _MAX_BAGGAGE:
        baggage = None
    if parsed is None:
        return Trace(secrets.token_hex(16), span_id, baggage=baggage, request_id=request_id)
    trace_id, parent_id, flags = parsed
    if tracestate is not None and len(tracestate) > _MAX_STATE:
        tracestate = None
    return Trace(trace_id, span_id, parent_id, flags, tracestate, baggage, request_id)


def current() -> Trace | None:
    """The span of the work in progress in this context, if any."""
    return TRACE.get()


class LogContext(logging.Filter):
    """Adds the current span to every log record: ``trace_id``, ``span_id``, ``request_id``.

    They become fields of JSON lines; the text format shows them at the end
    of the line (``_context``, empty outside a traced piece of work).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        trace = TRACE.get()
        if trace is None:
            record._context = ""
            return True
        record.trace_id = trace.trace_id
        record.span_id = trace.span_id
        if trace.request_id:
            record.request_id = trace.request_id
            record._context = f" [request {trace.request_id} trace {trace.trace_id}]"
        else:
            record._context = f" [trace {trace.trace_id}]"
        return True
