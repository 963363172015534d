"""Small HTTP helpers shared by the control-plane services (registry, configsvc, services).

Bodies are read with a hard size limit before parsing, so that a client can't
make a service buffer more than it allows, and malformed input becomes a
problem-details error before any state is touched.

Server-Sent Events fed by a Redis pub/sub channel: the registry
(``/v1/events``) and configsvc (``/v1/events``) push their changes to clients
in any language this way. Each change carries a revision that is also its
SSE ``id:``, so an EventSource that reconnects sends ``Last-Event-ID`` and
the server can tell what the client missed (:func:`resume_from`).
:class:`ChannelHub` holds one :class:`~core.redis.Subscription` to the
channel and fans each message out to a bounded queue per open stream; a
stream whose queue overflows is ended (the client resumes), and after the
hub reconnects to Redis every stream is told to catch up (:data:`CATCH_UP`),
since messages may have been lost meanwhile.

Liveness and readiness, apart, beside each component's ``/health`` page
(:func:`add_health_routes`):

- ``GET /health/live``: 200 ``{"status": "UP"}`` whenever the process answers
  at all. It checks nothing else on purpose: a liveness probe restarts what
  fails it, and restarting the registry because Redis is away would only add
  a second outage to the first.
- ``GET /health/ready``: whether the component can do its job now. Each
  :data:`Check` gives ``(ok, detail)``; 200 with ``{"status": "UP", "checks":
  {...}}`` when all pass, else 503 with ``{"status": "DOWN", "failing":
  [names], "checks": {...}}``. A check that raises or takes longer than
  ``timeout`` seconds fails. :func:`config_check` is the check of a component
  following configsvc: a version it rejected (the last good one still in
  force) fails it until a valid version is applied.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware

from core import log
from core.errors import BadRequest, PayloadTooLarge, ServiceUnavailable, Unauthorized
from core.redis import REDIS_ERRORS, Redis, Subscription
from core.settings import Secret

__all__ = [
    "CATCH_UP",
    "KEEPALIVE",
    "RETRY_MS",
    "ChannelHub",
    "Check",
    "add_health_routes",
    "config_check",
    "frame",
    "json_response",
    "live",
    "open_stream",
    "presented_secret",
    "read_body",
    "read_json",
    "redis_check",
    "redis_health",
    "redis_unavailable",
    "require_bearer",
    "resume_from",
]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def read_body(request: web.Request, max_bytes: int) -> bytes:
    """The whole request body; :class:`PayloadTooLarge` past ``max_bytes``."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise PayloadTooLarge(
            f"the body is {request.content_length} bytes; the limit is {max_bytes}"
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(65536):
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"the body is over the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: web.Request, max_bytes: int, *, empty: Any = ...) -> Any:
    """The request body parsed as JSON.

    Raises :class:`PayloadTooLarge` past ``max_bytes`` and :class:`BadRequest`
    for malformed JSON. An empty body returns ``empty`` when given, else is a
    :class:`BadRequest`.
    """
    raw = await read_body(request, max_bytes)
    if not raw.strip():
        if empty is not ...:
            return empty
        raise BadRequest("the request body is empty; a JSON document is expected")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None


def json_response(
    data: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """``data`` as an ``application/json`` response, serialised by orjson."""
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=headers
    )


def presented_secret(request: web.Request) -> str | None:
    """The credential a request carries: a bearer token, or the password of HTTP Basic.

    Basic is how Eureka and Spring Cloud Config clients authenticate (the
    user and password in the service URL, ``http://user:TOKEN@host/eureka/``);
    the user name is not checked. None when there is no usable credential.
    """
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        return given.strip()
    if scheme == "basic":
        try:
            decoded = base64.b64decode(given.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        _, sep, password = decoded.partition(":")
        return password if sep else None
    return None


def require_bearer(request: web.Request, token: Secret, what: str) -> None:
    """:class:`Unauthorized` unless ``token`` is empty or the request carries it.

    The token is accepted as a bearer (``Authorization: Bearer <token>``) or
    as the password of HTTP Basic (:func:`presented_secret`). ``what`` names
    the variable holding the token in the error, e.g. ``REGISTRY_TOKEN``. The
    comparison takes the same time whatever the token.
    """
    if not token:
        return
    given = presented_secret(request)
    if given is None or not hmac.compare_digest(given.encode(), token.reveal().encode()):
        realm = what.split("_")[0].lower()
        # RFC 6750 3: a request that presented a token is told it was not valid.
        error = "" if given is None else ', error="invalid_token"'
        raise Unauthorized(
            f"this request requires 'Authorization: Bearer <{what}>'",
            headers={"WWW-Authenticate": f'Bearer realm="essaim-{realm}"{error}'},
        )


def redis_unavailable(owner: str) -> Middleware:
    """Middleware: a Redis error escaping a handler becomes 503 with ``Retry-After: 1``.

    ``owner`` names the component in the detail ("the registry's Redis is
    unavailable: ..."), so the client knows what to wait for, not a 500.
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except REDIS_ERRORS as exc:
            raise ServiceUnavailable(
                f"the {owner}'s Redis is unavailable: {exc}", headers={"Retry-After": "1"}
            ) from None

    return middleware


async def redis_health(redis: Redis, timeout: float = 1.0) -> bool:
    """Whether ``redis`` answers PING within ``timeout`` seconds."""
    try:
        await asyncio.wait_for(redis.ping(), timeout)
        return True
    except REDIS_ERRORS:
        return False


Check = Callable[[], Awaitable[tuple[bool, Any]]]
"""A readiness check: ``(ok, detail)``; the detail is shown under the check's name."""


# ----------------------------------------------------------------------------- health


async def live(request: web.Request) -> web.Response:
    """``GET /health/live``: 200 while the process answers."""
    return json_response({"status": "UP"})


def ready_handler(
    checks: Callable[[web.Application], Mapping[str, Check]], timeout: float = 2.0
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The ``/health/ready`` handler running ``checks(app)`` concurrently."""

    async def ready(request: web.Request) -> web.Response:
        named = checks(request.app)
        results = await asyncio.gather(
            *(_run(name, check, timeout) for name, check in named.items())
        )
        report = dict(zip(named, results, strict=True))
        failing = [name for name, (ok, _) in report.items() if not ok]
        body: dict[str, Any] = {"status": "DOWN" if failing else "UP"}
        if failing:
            body["failing"] = failing
        body["checks"] = {
            name: {"status": "UP" if ok else "DOWN", "detail": detail}
            for name, (ok, detail) in report.items()
        }
        return json_response(body, status=503 if failing else 200)

    return ready


async def _run(name: str, check: Check, timeout: float) -> tuple[bool, Any]:
    try:
        return await asyncio.wait_for(check(), timeout)
    except TimeoutError:
        return False, f"no answer within {timeout:g}s"
    except Exception as exc:
        log.get("health").exception("readiness check %s failed", name)
        return False, f"{type(exc).__name__}: {exc}"


def add_health_routes(
    app: web.Application, checks: Callable[[web.Application], Mapping[str, Check]]
) -> None:
    """Add ``/health/live`` and ``/health/ready`` (with ``checks(app)``, read per request)."""
    app.router.add_get("/health/live", live)
    app.router.add_get("/health/ready", ready_handler(checks))


def redis_check(redis: Redis) -> Check:
    """Ready while ``redis`` answers PING."""

    async def check() -> tuple[bool, Any]:
        ok = await redis_health(redis)
        return ok, "reachable" if ok else "unreachable"

    return check


class Configured(Protocol):
    """What :func:`config_check` reads of a :class:`core.config.client.ConfigClient`."""

    @property
    def version(self) -> str | None: ...
    @property
    def source(self) -> str: ...
    @property
    def last_rejection(self) -> dict[str, Any] | None: ...


def config_check(client: Configured) -> Check:
    """Ready unless the last config version offered was rejected (the last good one kept).

    Being on a cached copy or on defaults because configsvc is away is not
    unready: the component works on what it last knew (it shows on ``/health``).
    """

    async def check() -> tuple[bool, Any]:
        rejection = client.last_rejection
        detail: dict[str, Any] = {"version": client.version, "source": client.source}
        if rejection is not None:
            detail["rejected"] = rejection
            return False, detail
        return True, detail

    return check


# Server-Sent Events

#: Messages a stream may have queued before it is ended as too slow.
QUEUE_SIZE = 1000
#: Seconds of silence before a keep-alive comment.
KEEPALIVE = 15.0
#: Milliseconds an EventSource waits before reconnecting (the ``retry:`` field).
RETRY_MS = 1000
#: Queued to every stream after the hub reconnected: messages may have been lost.
CATCH_UP = ""


class ChannelHub:
    """One subscription to ``channel``, fanned out to the queue of every open stream.

    After :meth:`shutdown`, a stream opened late (its request was read just
    as the server began to stop) gets a queue that ends it at once: the
    server's drain would otherwise wait for it until its shutdown timeout.
    """

    def __init__(self, redis: Redis, channel: str, *, name: str) -> None:
        self.queues: set[asyncio.Queue[str | None]] = set()
        self.closed = False
        self.subscription = Subscription(
            redis, [channel], self._on_message, on_connect=self._on_connect, name=name
        )

    async def _on_connect(self) -> None:
        for queue in list(self.queues):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(CATCH_UP)

    async def _on_message(self, channel: str, data: str) -> None:
        for queue in list(self.queues):
            try:
                queue.put_nowait(data)
            except asyncio.QueueFull:
                # Too slow: end its stream; the client resumes with Last-Event-ID.
                self.queues.discard(queue)
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait(None)

    def open(self) -> asyncio.Queue[str | None]:
        """A queue of this channel's messages (None: the stream must end)."""
        queue: asyncio.Queue[str | None] = asyncio.Queue(QUEUE_SIZE)
        if self.closed:
            queue.put_nowait(None)
            return queue
        self.queues.add(queue)
        return queue

    def close(self, queue: asyncio.Queue[str | None]) -> None:
        self.queues.discard(queue)

    def shutdown(self) -> None:
        """End every open stream, and any opened from now on (graceful stop)."""
        self.closed = True
        for queue in list(self.queues):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)
        self.queues.clear()


def resume_from(request: web.Request) -> int | None:
    """The revision a client has seen: ``Last-Event-ID``, else ``?since=``; None for neither.

    An EventSource reconnects to the URL it was opened with, adding
    ``Last-Event-ID``: the header is where it got to, the query only where it
    started, so the header wins. :class:`~core.errors.BadRequest` unless a
    revision number >= 0.
    """
    raw = request.headers.get("Last-Event-ID") or request.query.get("since")
    if raw is None or raw == "":
        return None
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise BadRequest(f"'since' must be a revision number >= 0, got {raw[:40]!r}")
    return int(raw)


async def open_stream(request: web.Request, comment: str) -> web.StreamResponse:
    """Start an event stream: its headers, a ``comment`` line and the ``retry:`` field."""
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    await response.write(f": {comment}\nretry: {RETRY_MS}\n\n".encode())
    return response


def frame(event: str | None, data: str, event_id: int | None = None) -> bytes:
    """One event: ``id:``, ``event:`` and ``data:`` lines and the blank line that ends it."""
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    if event:
        lines.append(f"event: {event}")
    lines.append(f"data: {data}")
    return ("\n".join(lines) + "\n\n").encode()
