"""Sending recorded spans to an OpenTelemetry collector: OTLP over HTTP, from a thread.

:class:`Exporter` owns one thread. The thread sleeps until the recorder
says a batch is waiting (:attr:`core.telemetry.spans.Recorder.wake`) or
``interval`` has passed, then takes up to ``batch`` records at a time,
turns each into the SDK's ``ReadableSpan`` (the record's converter runs
here, not where it was recorded) and hands them to the OpenTelemetry
project's ``OTLPSpanExporter`` (protobuf over HTTP, with its own retries
and timeout). Nothing here runs on the event loop but :meth:`Exporter.stop`,
which waits for the last batch in a thread.

The OpenTelemetry SDK is the ``otel`` extra (``pip install 'essaim[otel]'``).
This module imports it only when an exporter is made; :func:`missing` says,
in one line, when it is not installed.

The SDK reads its own standard variables for what Essaim does not set:
``OTEL_EXPORTER_OTLP_HEADERS``, ``..._TIMEOUT``, ``..._COMPRESSION``,
``..._CERTIFICATE`` (and their ``_TRACES_`` forms) for the transport, and
``OTEL_RESOURCE_ATTRIBUTES`` for the resource, whose ``service.name`` and
``service.instance.id`` are the component's own and win.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from core import log
from core.errors import SettingsError
from core.telemetry.spans import Recorder, Span, install

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import SpanExporter

__all__ = ["TRACES_PATH", "Exporter", "check_endpoint", "exporting", "missing", "traces_url"]

logger = log.get("telemetry")

#: OTLP/HTTP's path for traces, appended to a collector's base URL.
TRACES_PATH = "/v1/traces"


def missing() -> str | None:
    """None when the ``otel`` extra is installed; else one line saying what to install."""
    try:
        import opentelemetry.exporter.otlp.proto.http.trace_exporter
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError as exc:
        return (
            "span export needs the OpenTelemetry SDK and OTLP exporter, which are not "
            f"installed ({exc}): pip install 'essaim[otel]'"
        )
    return None


def traces_url(endpoint: str) -> str:
    """The URL spans are posted to: ``endpoint`` if it ends with ``/v1/traces``, else that appended.

    ``endpoint`` is a collector's base URL, as ``OTEL_EXPORTER_OTLP_ENDPOINT``
    is (``http://collector:4318`` posts to ``http://collector:4318/v1/traces``).
    """
    if urlsplit(endpoint).path.rstrip("/").endswith(TRACES_PATH):
        return endpoint
    return endpoint.rstrip("/") + TRACES_PATH


def check_endpoint(name: str, endpoint: str) -> None:
    """:class:`SettingsError` (one line, naming ``name``) for a bad endpoint or a missing SDK.

    An empty ``endpoint`` (export off) is always fine.
    """
    if not endpoint:
        return
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
        raise SettingsError(
            f"{name}: expected the collector's http(s) URL (http://HOST:4318), got {endpoint!r}"
        )
    why = missing()
    if why is not None:
        raise SettingsError(f"{name}: {why}")


class Exporter:
    """A thread exporting the records of ``recorder``; :meth:`start`, then :meth:`stop`.

    ``service`` and ``instance`` are the resource's ``service.name`` and
    ``service.instance.id``. ``otlp`` replaces the OTLP/HTTP exporter (any
    SDK ``SpanExporter``). Counters: ``exported`` spans accepted by the
    collector, ``failed`` spans in batches it did not accept (lost: the
    SDK's exporter already retried), ``skipped`` records of unsampled traces.
    """

    def __init__(
        self,
        recorder: Recorder,
        endpoint: str,
        *,
        service: str,
        instance: str,
        interval: float = 1.0,
        otlp: SpanExporter | None = None,
    ) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope
        from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

        self.recorder = recorder
        self.url = traces_url(endpoint)
        self.interval = interval
        self.otlp: SpanExporter = otlp or OTLPSpanExporter(endpoint=self.url)
        self.exported = 0
        self.failed = 0
        self.skipped = 0
        resource = Resource.create({"service.name": service, "service.instance.id": instance})
        self._resource = _hashed_once(resource)
        self._scope = InstrumentationScope("essaim")
        self._kinds: dict[str, Any] = {
            "server": SpanKind.SERVER, "client": SpanKind.CLIENT,
            "producer": SpanKind.PRODUCER, "consumer": SpanKind.CONSUMER,
            "internal": SpanKind.INTERNAL,
        }  # fmt: skip
        # The parent of a server or consumer span is in another process.
        self._remote_parent = {"server": True, "consumer": True}
        self._make = ReadableSpan
        self._context = SpanContext
        self._sampled = TraceFlags(TraceFlags.SAMPLED)
        self._ok = Status(StatusCode.UNSET)
        self._status = Status
        self._error = StatusCode.ERROR
        self._wake = threading.Event()
        self._stopping = False
        self._failing = False
        self._dropped_seen = 0
        self._thread: threading.Thread | None = None
        recorder.wake = self._wake.set

    def start(self) -> None:
        """Start the thread (a daemon: a process that exits without :meth:`stop` loses its spans)."""
        self._thread = threading.Thread(target=self._run, name="otel-export", daemon=True)
        self._thread.start()
        logger.info("exporting spans to %s (OTLP/HTTP)", self.url)

    async def stop(self, timeout: float = 5.0) -> None:
        """Export what is waiting, within ``timeout`` seconds, then close the exporter."""
        self._stopping = True
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            await asyncio.to_thread(thread.join, timeout)
            if thread.is_alive():  # the collector is away: the exporter is still retrying
                logger.warning("span export did not finish in %.0fs; the rest is lost", timeout)
        # Also ends the retries of an export in progress.
        await asyncio.to_thread(self.otlp.shutdown)

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            stopping = self._stopping
            try:
                self.flush()
            except Exception:  # a converter's bug must not end export for good
                logger.exception("span export failed")
            if stopping:
                return

    def flush(self) -> int:
        """Export every waiting record now, in batches (the thread calls it); spans exported."""
        from opentelemetry.sdk.trace.export import SpanExportResult

        recorder = self.recorder
        done = 0
        while True:
            records = recorder.take(recorder.batch)
            if not records:
                break
            spans = []
            for record in records:
                span = record[0](record)
                if span is None or not span.sampled:
                    self.skipped += 1
                    continue
                spans.append(self._readable(span))
            if spans:
                if self.otlp.export(spans) == SpanExportResult.SUCCESS:
                    self.exported += len(spans)
                    done += len(spans)
                    self._healthy()
                else:
                    self.failed += len(spans)
                    self._unhealthy(len(spans))
            if len(records) < recorder.batch:
                break
        dropped = recorder.dropped
        if dropped != self._dropped_seen:
            logger.warning(
                "%d spans dropped: more than %d were waiting for export",
                dropped - self._dropped_seen, recorder.limit,
            )  # fmt: skip
            self._dropped_seen = dropped
        return done

    def _healthy(self) -> None:
        if self._failing:
            self._failing = False
            logger.info("span export to %s works again", self.url)

    def _unhealthy(self, lost: int) -> None:
        if not self._failing:
            self._failing = True
            logger.warning(
                "span export to %s failed: %d spans lost; later batches are tried as they come",
                self.url, lost,
            )  # fmt: skip

    def _readable(self, span: Span) -> ReadableSpan:
        trace_id = int(span.trace_id, 16)
        context = self._context(trace_id, int(span.span_id, 16), False, self._sampled)
        parent = None
        if span.parent_id:
            parent = self._context(
                trace_id, int(span.parent_id, 16),
                self._remote_parent.get(span.kind, False), self._sampled,
            )  # fmt: skip
        status = self._ok if span.error is None else self._status(self._error, span.error)
        return self._make(
            span.name,
            context=context,
            parent=parent,
            resource=self._resource,
            attributes=span.attributes,
            kind=self._kinds[span.kind],
            status=status,
            start_time=span.start_ns,
            end_time=span.end_ns,
            instrumentation_scope=self._scope,
        )


def _hashed_once(resource: Any) -> Any:
    """``resource``, its hash computed once.

    The SDK's encoder groups each batch's spans by resource, hashing the
    resource of every span, and ``Resource.__hash__`` serializes its
    attributes to JSON each time: a fifth of the encoder's time per span
    (measured). Every span of a process has the same resource.
    """
    from opentelemetry.sdk.resources import Resource

    class _Resource(Resource):
        def __init__(self) -> None:
            super().__init__(resource.attributes, resource.schema_url)
            self._hash = super().__hash__()

        def __hash__(self) -> int:
            return self._hash

    return _Resource()


@contextlib.asynccontextmanager
async def exporting(
    endpoint: str, *, service: str, instance: str
) -> AsyncIterator[Recorder | None]:
    """While inside, the process's spans go to ``endpoint`` (empty: export off, yields None).

    The recorder is installed as the process's (:func:`core.telemetry.spans.install`)
    and yielded; on the way out it is uninstalled and what it holds is exported.
    """
    if not endpoint:
        yield None
        return
    recorder = Recorder()
    exporter = Exporter(recorder, endpoint, service=service, instance=instance)
    exporter.start()
    install(recorder)
    try:
        yield recorder
    finally:
        install(None)
        await exporter.stop()
