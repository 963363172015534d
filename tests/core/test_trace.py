"""W3C Trace Context (core/trace.py): parsing, child spans, and the ids on every log line."""

from __future__ import annotations

import logging
from collections.abc import Iterator

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


# ----------------------------------------------------------------------------- head sampling

# Trace ids whose low 64 bits sit on either side of the bounds below.
AT_ZERO = "4bf92f3577b34da6" + "0000000000000000"
LOW = "4bf92f3577b34da6" + "0ccccccccccccccc"  # just below a tenth of 2**64
# round(0.1 * 2**64), 0x1999999999999a00 (0.1 is a double): the bound, not below it.
TENTH = "4bf92f3577b34da6" + "1999999999999a00"
HALF_MINUS = "4bf92f3577b34da6" + "7fffffffffffffff"
HALF = "4bf92f3577b34da6" + "8000000000000000"
TOP = "4bf92f3577b34da6" + "ffffffffffffffff"
# The high 64 bits do not count: the same low bits under another prefix decide alike.
OTHER_HIGH = "ffffffffffffffff" + "0ccccccccccccccc"


@pytest.fixture
def ratio_reset() -> Iterator[None]:
    yield
    trace.sample(1.0)


def test_the_ratio_rule_is_opentelemetrys_traceidratiobased_on_known_ids() -> None:
    """The same decisions as the OpenTelemetry SDK's own sampler, for the same trace ids."""
    from opentelemetry.sdk.trace.sampling import Decision, TraceIdRatioBased

    expected = {  # ratio: the ids sampled among them
        0.0: set(),
        0.1: {AT_ZERO, LOW, OTHER_HIGH},
        0.5: {AT_ZERO, LOW, OTHER_HIGH, TENTH, HALF_MINUS},
        1.0: {AT_ZERO, LOW, OTHER_HIGH, TENTH, HALF_MINUS, HALF, TOP},
    }
    ids = (AT_ZERO, LOW, TENTH, HALF_MINUS, HALF, TOP, OTHER_HIGH)
    for ratio, sampled in expected.items():
        sdk = TraceIdRatioBased(ratio)
        bound = trace.ratio_bound(ratio)
        assert bound == sdk.bound
        for trace_id in ids:
            ours = trace.sampled_by_ratio(trace_id, bound)
            theirs = sdk.should_sample(None, int(trace_id, 16), "x").decision
            assert ours == (theirs is Decision.RECORD_AND_SAMPLE) == (trace_id in sampled), (
                ratio, trace_id,
            )  # fmt: skip
            assert trace.sampled_by_ratio(trace_id.encode(), bound) == ours  # bytes alike
    # A higher ratio samples every trace a lower one does (the spec's requirement).
    for low, high in ((0.0, 0.1), (0.1, 0.5), (0.5, 1.0)):
        assert expected[low] <= expected[high]
    with pytest.raises(ValueError, match=r"from 0\.0 to 1\.0"):
        trace.ratio_bound(1.5)


def test_by_default_every_new_trace_is_sampled_and_a_parent_keeps_its_decision(
    ratio_reset: None,
) -> None:
    assert {trace.start().flags for _ in range(200)} == {"01"}
    unsampled = PARENT[:-2] + "00"
    assert trace.start(unsampled).flags == "00"
    assert trace.start(unsampled).sampled is False


def test_new_traces_are_sampled_at_the_ratio_by_their_id_and_parents_decide_theirs(
    ratio_reset: None,
) -> None:
    trace.sample(0.0)
    assert {trace.start().flags for _ in range(200)} == {"00"}
    assert trace.start(PARENT).flags == "01"  # sampled upstream: obeyed (ParentBased)
    child = trace.start(PARENT).child()
    assert child.flags == "01"
    assert child.headers()["traceparent"].endswith("-01")

    trace.sample(1.0)
    assert trace.start(PARENT[:-2] + "00").flags == "00"  # not sampled upstream: obeyed

    trace.sample(0.5)
    bound = trace.ratio_bound(0.5)
    roots = [trace.start() for _ in range(2000)]
    for span in roots:
        assert span.sampled == trace.sampled_by_ratio(span.trace_id, bound)
        assert span.traceparent().endswith("-01" if span.sampled else "-00")
        assert span.child().flags == span.flags  # what it calls and writes carry it
    assert 800 < sum(span.sampled for span in roots) < 1200

    with pytest.raises(ValueError, match=r"got -0\.1"):
        trace.sample(-0.1)
