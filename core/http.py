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
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware

from core.errors import BadRequest, PayloadTooLarge, ServiceUnavailable, Unauthorized
from core.redis import REDIS_ERRORS, Redis, Subscription
from core.settings import Secret

__all__ = [
    "CATCH_UP",
    "KEEPALIVE",
    "RETRY_MS",
    "ChannelHub",
    "frame",
    "json_response",
    "open_stream",
    "presented_secret",
    "read_body",
    "read_json",
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
        raise Unauthorized(
            f"this request requires 'Authorization: Bearer <{what}>'",
            headers={"WWW-Authenticate": f'Bearer realm="essaim-{realm}"'},
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
    """One subscription to ``channel``, fanned out to the queue of every open stream."""

    def __init__(self, redis: Redis, channel: str, *, name: str) -> None:
        self.queues: set[asyncio.Queue[str | None]] = set()
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
        self.queues.add(queue)
        return queue

    def close(self, queue: asyncio.Queue[str | None]) -> None:
        self.queues.discard(queue)

    def shutdown(self) -> None:
        """End every open stream (graceful stop)."""
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
