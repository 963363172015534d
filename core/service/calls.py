"""Synchronous service-to-service calls by service name.

``await calls.get("customers", "/customers/42")`` resolves the name through
the local :class:`~core.registry.discovery.Watcher` snapshot (no Redis round trip),
picks an instance with the same :class:`~core.upstream.upstream.Upstream` the gateway
uses (balancer, outlier ejection, circuit breaker, retry policy and budget),
and passes on the ``X-Request-ID`` and ``Authorization`` of the request being
handled, and its trace context: W3C ``traceparent``, ``tracestate`` and
``baggage`` (see :func:`forwarding_middleware`). Each attempt is a span of
its own, a child of the work in progress (the request, or the event being
handled), and is the parent named in the ``traceparent`` it sends; with
span export on it is recorded (kind CLIENT, :mod:`core.telemetry`).

Outcomes a caller sees:

- a :class:`CallResponse` for every answer, 4xx and 5xx included (after the
  retries that the policy allows for 502/503/504 on idempotent methods);
- :class:`~core.errors.ServiceUnavailable` (503, with ``Retry-After`` when
  the breaker is open) when no instance is up or the breaker refuses;
- :class:`~core.errors.BadGateway` (502) when no instance could be reached;
- :class:`~core.errors.GatewayTimeout` (504) when the call timed out.

All three are :class:`~core.errors.HTTPProblem` carrying the called service's
name in ``dependency``. A handler that lets one escape, in a service built on
the scaffold (:func:`dependency_middleware`), answers its own client 503
marked as a dependency's failure (``Essaim-Failure: dependency``, problem type
``urn:essaim:problem:dependency-unavailable``), so that the gateway does not
count a called service's outage against the caller.

A 5xx answer so marked is the called service's own report that *its*
dependency failed: it is returned as is, not retried, and not counted
against that service (:meth:`Upstream.dependency_failed`).
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from core import log, trace
from core.errors import (
    DEPENDENCY_FAILURE,
    FAILURE_HEADER,
    BadGateway,
    DependencyUnavailable,
    GatewayTimeout,
    HTTPProblem,
    ServiceUnavailable,
)
from core.registry.discovery import Watcher
from core.telemetry import spans
from core.telemetry.spans import Attributes, Span
from core.upstream.retry import RetryPolicy
from core.upstream.upstream import Endpoint, Upstream, UpstreamPolicy

logger = log.get("calls")

__all__ = ["CallResponse", "Calls", "Timeouts", "dependency_middleware", "forwarding_middleware"]

#: Headers of the request being handled that every call passes on.
FORWARDED = ("X-Request-ID", "Authorization")

#: Paths whose requests are not exported as spans: probes and scrapes, each a trace of its own.
UNTRACED = frozenset(("/health", "/health/live", "/health/ready", "/metrics", "/openapi.json"))

_incoming: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar(
    "essaim_incoming_headers", default=MappingProxyType({})
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def forwarding_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Start the request's span and remember what calls made while handling it pass on.

    The span (:func:`core.trace.start`) continues the request's
    ``traceparent`` or starts a trace; with the ``X-Request-ID`` (generated
    when absent) it is in every log line written meanwhile. Calls pass on
    the id, ``Authorization``, and the trace headers; the response carries
    the id. When spans are exported (:mod:`core.telemetry`), the span is
    recorded once the response is made (kind SERVER), except for the probes
    and scrapes of :data:`UNTRACED`.
    """
    headers = request.headers
    request_id = headers.get("X-Request-ID") or uuid.uuid4().hex
    span = trace.start(
        headers.get("traceparent"), headers.get("tracestate"), headers.get("baggage"), request_id
    )
    carried = {"X-Request-ID": request_id, **span.headers()}
    auth = headers.get("Authorization")
    if auth:
        carried["Authorization"] = auth
    token = _incoming.set(carried)
    span_token = trace.TRACE.set(span)
    recorder = spans.active()
    started = time.time_ns() if recorder is not None else 0
    status = 500
    try:
        response = await handler(request)
        status = response.status
    except web.HTTPException as exc:
        status = exc.status
        exc.headers["X-Request-ID"] = request_id
        raise
    finally:
        trace.TRACE.reset(span_token)
        _incoming.reset(token)
        if recorder is not None and span.sampled and request.path not in UNTRACED:
            recorder.record(_server_span(request, span, started, status))
    response.headers["X-Request-ID"] = request_id
    return response


def _server_span(request: web.Request, span: trace.Trace, started: int, status: int) -> Span:
    """The span of a request a service answered (OpenTelemetry's HTTP server conventions)."""
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else None
    attributes: Attributes = {
        "http.request.method": request.method,
        "url.path": request.path,
        "url.scheme": request.scheme,
        "http.response.status_code": status,
    }
    if route is not None:
        attributes["http.route"] = route
    if request.remote:
        attributes["client.address"] = request.remote
    error = None
    if status >= 500:
        attributes["error.type"] = str(status)
        error = f"answered {status}"
    name = f"{request.method} {route}" if route is not None else request.method
    return Span(
        "server", name, span.trace_id, span.span_id, span.parent_id, started, time.time_ns(),
        attributes, error,
    )  # fmt: skip


@web.middleware
async def dependency_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A 5xx problem naming a ``dependency`` becomes a marked 503 :class:`DependencyUnavailable`.

    Goes inside :func:`core.errors.problem_middleware`, which renders it.
    """
    try:
        return await handler(request)
    except DependencyUnavailable:
        raise
    except HTTPProblem as exc:
        if exc.status >= 500 and "dependency" in exc.extra:
            raise DependencyUnavailable.from_problem(exc) from None
        raise


def marked_as_dependency_failure(headers: Mapping[str, str]) -> bool:
    """Whether an answer's headers mark it as the failure of the answering service's dependency."""
    return headers.get(FAILURE_HEADER, "").strip().lower() == DEPENDENCY_FAILURE


@dataclasses.dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds: to connect, for one attempt, for the whole call with its retries."""

    connect: float = 1.0
    per_try: float = 5.0
    total: float = 15.0


@dataclasses.dataclass(frozen=True, slots=True)
class CallResponse:
    """An upstream's answer, read whole (service calls carry small bodies)."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    instance: str

    def json(self) -> Any:
        return orjson.loads(self.body) if self.body else None

    @property
    def ok(self) -> bool:
        return self.status < 400


class Calls:
    """Calls to services by name. Create once per process; :meth:`close` at stop.

    One :class:`Upstream` per called service is kept current from the
    watcher's change events, so balancing, ejection and breaker state survive
    registry changes.
    """

    def __init__(
        self,
        watcher: Watcher,
        *,
        policy: UpstreamPolicy | None = None,
        timeouts: Timeouts = Timeouts(),
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.watcher = watcher
        self.policy = policy or UpstreamPolicy()
        self.timeouts = timeouts
        self._session = session
        self._owns_session = session is None
        self.upstreams: dict[str, Upstream] = {}
        watcher.on_change(self._refresh)

    def _refresh(self, services: set[str]) -> None:
        for name in services:
            upstream = self.upstreams.get(name)
            if upstream is not None:
                upstream.update_instances(self.watcher.instances(name))

    def upstream(self, service: str) -> Upstream:
        upstream = self.upstreams.get(service)
        if upstream is None:
            upstream = self.upstreams[service] = Upstream(service, self.policy)
            upstream.update_instances(self.watcher.instances(service))
        return upstream

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=256, limit_per_host=64),
                auto_decompress=False,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None and self._owns_session:
            await self._session.close()
        self._session = None

    async def get(self, service: str, path: str, **kwargs: Any) -> CallResponse:
        return await self.request("GET", service, path, **kwargs)

    async def post(self, service: str, path: str, **kwargs: Any) -> CallResponse:
        return await self.request("POST", service, path, **kwargs)

    async def put(self, service: str, path: str, **kwargs: Any) -> CallResponse:
        return await self.request("PUT", service, path, **kwargs)

    async def patch(self, service: str, path: str, **kwargs: Any) -> CallResponse:
        return await self.request("PATCH", service, path, **kwargs)

    async def delete(self, service: str, path: str, **kwargs: Any) -> CallResponse:
        return await self.request("DELETE", service, path, **kwargs)

    async def request(
        self,
        method: str,
        service: str,
        path: str,
        *,
        json: Any = None,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
        timeouts: Timeouts | None = None,
    ) -> CallResponse:
        """Call ``method path`` on an instance of ``service``; see the module doc for outcomes."""
        timeouts = timeouts or self.timeouts
        retry = retry or self.policy.retry
        upstream = self.upstream(service)
        send_headers = dict(_incoming.get())
        send_headers.setdefault("X-Request-ID", uuid.uuid4().hex)
        # The span of the work in progress (a request, an event): each attempt is a
        # span of its own, its child, and the callee's parent (its traceparent).
        caller = trace.current()
        if caller is not None:
            send_headers.update(caller.headers())
        if headers:
            send_headers.update(headers)
            if any(name.lower() == "traceparent" for name in headers):
                caller = None  # the caller chose the trace context itself
        recorder = spans.active() if caller is not None and caller.sampled else None
        body = data
        if json is not None:
            body = orjson.dumps(json)
            send_headers.setdefault("Content-Type", "application/json")
        deadline = time.monotonic() + timeouts.total
        upstream.budget.deposit()
        tried: list[str] = []
        attempt = 0
        last_error = ""
        while True:
            attempt += 1
            ep = upstream.choose(tried)
            if ep is None:
                known = self.watcher.known(service)
                raise ServiceUnavailable(
                    f"no instance of {service!r} is up"
                    if known
                    else f"no service named {service!r} is registered",
                    headers={"Retry-After": "1"},
                    dependency=service,
                )
            if not upstream.breaker.try_acquire():
                wait = max(1, math.ceil(upstream.breaker.retry_after()))
                raise ServiceUnavailable(
                    f"the circuit breaker of {service!r} is open",
                    headers={"Retry-After": str(wait)},
                    dependency=service,
                )
            left = deadline - time.monotonic()
            upstream.begin(ep)
            kind, status, marked = "", 0, False
            attempt_span = None
            if caller is not None:
                attempt_span = caller.child()
                send_headers["traceparent"] = attempt_span.traceparent()
            started = time.time_ns() if recorder is not None else 0
            try:
                try:
                    timeout = aiohttp.ClientTimeout(
                        total=max(0.001, min(timeouts.per_try, left)),
                        sock_connect=timeouts.connect,
                    )
                    async with self.session.request(
                        method,
                        f"{ep.url}{path}",
                        data=body,
                        headers=send_headers,
                        params=params,
                        timeout=timeout,
                        allow_redirects=False,
                    ) as resp:
                        payload = await resp.read()
                        status = resp.status
                        result = CallResponse(status, dict(resp.headers), payload, ep.key)
                        marked = status >= 500 and marked_as_dependency_failure(resp.headers)
                    if marked:
                        # Its own dependency failed: passed on, not retried (the
                        # other instances share that dependency), not held against it.
                        upstream.dependency_failed(ep)
                        return result
                    if status >= 500:
                        kind = "5xx"
                        upstream.failed(ep, kind)
                    else:
                        upstream.succeeded(ep)
                        return result
                except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                    kind, last_error = "connect", str(exc) or "connect timeout"
                    upstream.failed(ep, kind)
                except (
                    aiohttp.ServerDisconnectedError,
                    aiohttp.ClientOSError,
                    aiohttp.ClientPayloadError,
                ) as exc:
                    kind, last_error = "reset", str(exc) or type(exc).__name__
                    upstream.failed(ep, kind)
                except TimeoutError:
                    kind, last_error = "timeout", f"no answer within {timeout.total:.3g}s"
                    upstream.failed(ep, kind)
                except (aiohttp.ClientError, asyncio.CancelledError) as exc:
                    kind = type(exc).__name__
                    upstream.released(ep)
                    raise
            finally:
                if recorder is not None and attempt_span is not None:
                    recorder.record(
                        _client_span(
                            method, service, ep, attempt_span, started, status, kind, attempt
                        )
                    )
            tried.append(ep.key)
            if time.monotonic() < deadline and upstream.retry_allowed(
                retry, kind, method, attempt, False, status
            ):
                continue
            if kind == "5xx":
                return result
            if kind == "timeout" or time.monotonic() >= deadline:
                raise GatewayTimeout(f"{service} {method} {path}: {last_error}", dependency=service)
            raise BadGateway(f"{service} {method} {path}: {last_error}", dependency=service)


def _client_span(
    method: str,
    service: str,
    ep: Endpoint,
    span: trace.Trace,
    started: int,
    status: int,
    failure: str,
    attempt: int,
) -> Span:
    """The span of one attempt of a call (OpenTelemetry's HTTP client conventions).

    ``failure`` is ``connect``, ``reset``, ``timeout``, ``5xx`` or the name
    of the exception that ended the attempt; empty when it was answered. An
    answer of 400 or more is an error too.
    """
    attributes: Attributes = {
        "http.request.method": method,
        "server.address": ep.host,
        "server.port": ep.port,
        "peer.service": service,
        "essaim.instance": ep.key,
    }
    if status:
        attributes["http.response.status_code"] = status
    if attempt > 1:
        attributes["http.request.resend_count"] = attempt - 1
    error = None
    if failure and failure != "5xx":
        attributes["error.type"] = error = failure
    elif status >= 400:  # a client span's error, by the HTTP conventions
        attributes["error.type"] = str(status)
        error = f"{service} answered {status}"
    return Span(
        "client", f"{method} {service}", span.trace_id, span.span_id, span.parent_id, started,
        time.time_ns(), attributes, error,
    )  # fmt: skip
