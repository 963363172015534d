"""Span export to OpenTelemetry (optional: the ``otel`` extra, off unless asked for).

Essaim's trace context (:mod:`core.trace`) is always on: ids in
``traceparent`` headers, event envelopes and log lines. This package adds,
when a component is given ``--otel-endpoint``, the spans themselves: one per
request the gateway proxies and per request a service answers (SERVER),
per call to another service (CLIENT), per event written (PRODUCER) and
handled (CONSUMER), with the same ids, sent to a collector over OTLP/HTTP.

- :mod:`~core.telemetry.spans`: the recorder where finished spans wait,
  appended to by the paths that did the work; :func:`~core.telemetry.spans.active`
  is None while export is off, the one check those paths make.
- :mod:`~core.telemetry.export`: the thread that turns records into the
  OpenTelemetry SDK's spans and exports them in batches; the settings check.

Public face: ``Span``, ``Recorder``, ``Kind``, ``Attributes``, ``active``,
``install`` (from ``spans``); ``Exporter``, ``exporting``, ``check_endpoint``,
``missing``, ``traces_url`` (from ``export``). Nothing here imports the
OpenTelemetry SDK until an exporter is made.
"""
