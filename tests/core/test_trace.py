"""W3C Trace Context (core/trace.py): parsing, child spans, and the ids on every log line."""

from __future__ import annotations

import logging

import orjson
import pytest

from core import trace
from core.log import JSONFormatter

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.mark.parametrize(
    "value",
    [
        None, "", "garbage",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # upper case
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero parent id
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # version ff
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",  # v00 has no tail
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  # short trace id
    ],
)  # fmt: skip
def test_an_invalid_traceparent_is_ignored(value: str | None) -> None:
    assert trace.parse_traceparent(value) is None
    span = trace.start(value, tracestate="vendor=1")
    assert len(span.trace_id) == 32
    assert span.trace_id != "4bf92f3577b34da6a3ce929d0e0e4736"
    assert span.parent_id is None
    assert span.tracestate is None  # it belonged to the invalid parent


def test_a_later_version_is_read_as_version_00() -> None:
    later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-what-comes-next"
    assert trace.parse_traceparent(later) == (
        "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", "00",
    )  # fmt: skip


def test_a_child_span_continues_the_trace_and_is_the_parent_of_what_it_calls() -> None:
    span = trace.start(PARENT, "vendor=1", "user=42", request_id="r-1")
    assert (span.trace_id, span.parent_id, span.flags) == (
        "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", "01",
    )  # fmt: skip
    assert span.span_id not in ("00f067aa0ba902b7", "0" * 16)
    assert span.headers() == {
        "traceparent": f"00-4bf92f3577b34da6a3ce929d0e0e4736-{span.span_id}-01",
        "tracestate": "vendor=1",
        "baggage": "user=42",
    }


def test_log_lines_carry_the_current_span() -> None:
    record = logging.makeLogRecord({"name": "essaim.x", "msg": "hello", "levelname": "INFO"})
    trace.LogContext().filter(record)
    assert record._context == ""
    assert "trace_id" not in orjson.loads(JSONFormatter().format(record))

    span = trace.start(PARENT, request_id="r-1")
    token = trace.TRACE.set(span)
    try:
        record = logging.makeLogRecord({"name": "essaim.x", "msg": "hello", "levelname": "INFO"})
        trace.LogContext().filter(record)
    finally:
        trace.TRACE.reset(token)
    line = orjson.loads(JSONFormatter().format(record))
    assert (line["trace_id"], line["span_id"], line["request_id"]) == (
        span.trace_id, span.span_id, "r-1",
    )  # fmt: skip
    assert "_context" not in line
    assert record._context == f" [request r-1 trace {span.trace_id}]"
