"""Server-Sent Events fed by a Redis pub/sub channel: the hub, the stream's framing, resume.

The registry (``/v1/events``) and configsvc (``/v1/events``) push their
changes to clients in any language this way. Each change carries a revision
that is also its SSE ``id:``, so an EventSource that reconnects sends
``Last-Event-ID`` and the server can tell what the client missed.

:class:`ChannelHub` holds one :class:`~core.redis.Subscription` to the
channel and fans each message out to a bounded queue per open stream; a
stream whose queue overflows is ended (the client resumes), and after the
hub reconnects to Redis every stream is told to catch up (:data:`CATCH_UP`),
since messages may have been lost meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web

from core.errors import BadRequest
from core.redis import Redis, Subscription

__all__ = [
    "CATCH_UP",
    "KEEPALIVE",
    "RETRY_MS",
    "ChannelHub",
    "frame",
    "open_stream",
    "resume_from",
]

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
