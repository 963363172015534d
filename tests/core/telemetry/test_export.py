"""Span export (core/telemetry/export.py) to a collector, decoded as the collector decodes it."""

from __future__ import annotations

import logging
import time

import pytest

from core.errors import SettingsError
from core.telemetry.export import Exporter, check_endpoint, exporting, traces_url
from core.telemetry.spans import Recorder, Span, active
from core.testing import OTLPReceiver, wait_until

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def _span(kind: str, span_id: str, parent: str | None, **extra: object) -> Span:
    now = time.time_ns()
    return Span(
        kind,  # type: ignore[arg-type]
        f"{kind} work",
        TRACE,
        span_id,
        parent,
        now - 2_000_000,
        now,
        {"http.request.method": "GET", "n": 3, "ratio": 0.5, "ok": True},
        **extra,  # type: ignore[arg-type]
    )


def test_traces_url_is_the_base_url_and_the_traces_path_as_the_standard_variable_says() -> None:
    assert traces_url("http://collector:4318") == "http://collector:4318/v1/traces"
    assert traces_url("http://collector:4318/") == "http://collector:4318/v1/traces"
    assert traces_url("https://c.example/otlp") == "https://c.example/otlp/v1/traces"
    assert traces_url("http://collector:4318/v1/traces") == "http://collector:4318/v1/traces"


def test_check_endpoint_names_the_setting_and_accepts_none() -> None:
    check_endpoint("ESSAIM_OTEL_ENDPOINT", "")
    check_endpoint("ESSAIM_OTEL_ENDPOINT", "http://127.0.0.1:4318")
    for bad in ("collector:4318", "ftp://collector", "http://", "http://c:4318/?x=1"):
        with pytest.raises(SettingsError, match=r"^ESSAIM_OTEL_ENDPOINT: expected the collector"):
            check_endpoint("ESSAIM_OTEL_ENDPOINT", bad)


async def test_spans_arrive_with_their_ids_kinds_parents_status_and_resource(
    otlp_receiver: OTLPReceiver,
) -> None:
    async with exporting(otlp_receiver.url, service="billing", instance="billing-1") as recorder:
        assert recorder is not None
        assert active() is recorder
        recorder.record(_span("server", "00000000000000a1", "00f067aa0ba902b7"))
        recorder.record(_span("client", "00000000000000a2", "00000000000000a1", error="boom"))
        recorder.record(_span("producer", "00000000000000a3", "00000000000000a1"))
        recorder.record(_span("consumer", "00000000000000a4", "00000000000000a3"))
        recorder.record(_span("server", "00000000000000a5", None, sampled=False))
        await wait_until(lambda: len(otlp_receiver.spans) == 4, message="four spans received")
    assert active() is None

    by_id = {s.span_id: s for s in otlp_receiver.spans}
    server = by_id["00000000000000a1"]
    assert (server.service, server.instance, server.scope) == ("billing", "billing-1", "essaim")
    assert (server.kind, server.name, server.trace_id) == ("server", "server work", TRACE)
    assert (server.parent_id, server.parent_remote, server.status) == (
        "00f067aa0ba902b7", True, "unset",
    )  # fmt: skip
    assert server.attributes == {"http.request.method": "GET", "n": 3, "ratio": 0.5, "ok": True}
    assert server.end_ns - server.start_ns == 2_000_000
    client = by_id["00000000000000a2"]
    assert (client.kind, client.parent_remote) == ("client", False)
    assert (client.status, client.status_message) == ("error", "boom")
    assert (by_id["00000000000000a3"].kind, by_id["00000000000000a3"].parent_remote) == (
        "producer", False,
    )  # fmt: skip
    assert (by_id["00000000000000a4"].kind, by_id["00000000000000a4"].parent_remote) == (
        "consumer", True,
    )  # fmt: skip
    assert "00000000000000a5" not in by_id  # its trace is not sampled


async def test_leaving_exports_what_is_waiting(otlp_receiver: OTLPReceiver) -> None:
    async with exporting(otlp_receiver.url, service="s", instance="s-1") as recorder:
        assert recorder is not None
        for n in range(1, 1201):  # more than two batches
            recorder.record(_span("internal", f"{n:016x}", None))
    assert len(otlp_receiver.spans) == 1200
    assert otlp_receiver.requests >= 3  # in batches of 512


async def test_export_off_yields_no_recorder() -> None:
    async with exporting("", service="s", instance="s-1") as recorder:
        assert recorder is None
        assert active() is None


async def test_a_refusing_collector_costs_the_spans_says_so_once_and_export_resumes(
    otlp_receiver: OTLPReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="essaim.telemetry")
    recorder = Recorder()
    exporter = Exporter(recorder, otlp_receiver.url, service="s", instance="s-1", interval=0.05)
    exporter.start()
    try:
        otlp_receiver.status = 400  # not retried by the SDK's exporter
        for n in range(1, 4):
            recorder.record(_span("internal", f"{n:016x}", None))
            await wait_until(lambda n=n: exporter.failed == n, message=f"{n} failed")  # type: ignore[misc]
        otlp_receiver.status = None
        recorder.record(_span("internal", "0000000000000010", None))
        await wait_until(lambda: exporter.exported == 1, message="export again")
    finally:
        await exporter.stop()
    messages = [r.getMessage() for r in caplog.records if r.name == "essaim.telemetry"]
    assert sum("failed: 1 spans lost" in m for m in messages) == 1
    assert sum("works again" in m for m in messages) == 1
    assert [s.span_id for s in otlp_receiver.spans] == ["0000000000000010"]
