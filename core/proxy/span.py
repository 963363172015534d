"""The gateway's span of one proxied request, for export to OpenTelemetry.

When export is on (``--otel-endpoint``), :meth:`Exchange.finish
<core.proxy.exchange.Exchange.finish>` appends one tuple of the values it
already has to the process's recorder (:mod:`core.telemetry.spans`);
:func:`exchange_span`, run later on the exporter's thread, makes the span.
Nothing is formatted on the request path. When export is off the request
path pays one ``is not None`` check.

The span (kind SERVER) has the ids of the request's ``traceparent``: the
trace the client sent (or the one the gateway started), the gateway's own
span id (the parent of the upstream's span), and the client's span as its
parent. Its name is ``METHOD route`` (``METHOD /service`` for a discovery
route); its attributes follow OpenTelemetry's HTTP conventions where they
fit (``http.request.method``, ``url.path``, ``url.scheme``,
``http.response.status_code``, ``client.address``, ``error.type``) and add
Essaim's (``essaim.route``, ``essaim.service``, ``essaim.instance``,
``essaim.retries``). A 5xx is an error, with the gateway's reason when it
answered itself.

Requests refused before routing (400, 404, 401, 403, 431...) and those
the gateway answers itself (its health path, ``/-/session``) get no span,
as they get no trace id.
"""

from __future__ import annotations

from typing import Any

from core.proxy.router import DISCOVERY_ROUTE
from core.telemetry.spans import Attributes, Span

__all__ = ["exchange_span"]


def exchange_span(record: tuple[Any, ...]) -> Span:
    """The span of a record that :meth:`Exchange.finish` made (see the module docstring)."""
    (_, trace_id, span_id, parent_id, flags, end_ns, duration, method, path, route, service,
     endpoint, status, problem, attempts, peer) = record  # fmt: skip
    attributes: Attributes = {
        "http.request.method": method,
        "url.path": path,
        "url.scheme": "http",
        "client.address": peer.decode("latin-1"),
        "essaim.route": route,
        "essaim.service": service,
    }
    if status != 499:  # the client left before an answer
        attributes["http.response.status_code"] = status
    if endpoint is not None:
        attributes["essaim.instance"] = f"{endpoint.host}:{endpoint.port}"
    if attempts > 1:
        attributes["essaim.retries"] = attempts - 1
    error = None
    if status >= 500:
        attributes["error.type"] = str(status)
        error = problem or f"the upstream answered {status}"
    return Span(
        "server",
        f"{method} /{service}" if route == DISCOVERY_ROUTE else f"{method} {route}",
        trace_id,
        span_id,
        parent_id,
        end_ns - int(duration * 1e9),
        end_ns,
        attributes,
        error,
        sampled=int(flags, 16) & 1 == 1,
    )
