"""The registry's change stream for HTTP clients: ``GET /v1/events`` as Server-Sent Events.

:class:`EventHub` holds the process's one subscription to the change channel
and fans it out to a bounded queue per open stream. :func:`stream_events`
replays the retained events after the client's revision, then forwards live
ones in revision order, re-reading the retained stream on a gap, and sends a
``resync`` event when what the client missed is no longer retained.
"""

from __future__ import annotations

import asyncio
import contextlib

import orjson
from aiohttp import web

from core.errors import BadRequest
from core.redis import Redis, Subscription
from core.registry.store import CHANNEL, RegistryStore

__all__ = ["EventHub", "stream_events"]

SSE_QUEUE = 1000
SSE_KEEPALIVE = 15.0
#: Queued to a stream when the hub reconnected: events may have been lost.
CATCH_UP = ""


class EventHub:
    """One subscription to the change channel, fanned out to every SSE client's queue.

    A client whose queue overflows is dropped (its stream ends); it reconnects
    with ``Last-Event-ID`` and reads what it missed from the retained events.
    """

    def __init__(self, redis: Redis) -> None:
        self.queues: set[asyncio.Queue[str | None]] = set()
        self.subscription = Subscription(
            redis, [CHANNEL], self._on_message, on_connect=self._on_connect, name="registry:events"
        )

    async def _on_connect(self) -> None:
        """After a reconnect, tell every open stream to re-read what it may have missed."""
        for queue in list(self.queues):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(CATCH_UP)

    async def _on_message(self, channel: str, data: str) -> None:
        for queue in list(self.queues):
            try:
                queue.put_nowait(data)
            except asyncio.QueueFull:
                # Too slow: end its stream; it resumes from Last-Event-ID.
                self.queues.discard(queue)
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait(None)

    def open(self) -> asyncio.Queue[str | None]:
        queue: asyncio.Queue[str | None] = asyncio.Queue(SSE_QUEUE)
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


def _sse(event: str | None, data: str, event_id: int | None = None) -> bytes:
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    if event:
        lines.append(f"event: {event}")
    lines.append(f"data: {data}")
    return ("\n".join(lines) + "\n\n").encode()


async def stream_events(
    request: web.Request, store: RegistryStore, hub: EventHub
) -> web.StreamResponse:
    """``GET /v1/events?since=REV``: retained events after REV, then live ones, as SSE.

    ``Last-Event-ID`` (sent by EventSource on reconnect) takes the place of
    ``since``. When what follows REV is no longer retained, a ``resync`` event
    (data: the current revision) tells the client to list everything again.
    """
    raw = request.query.get("since") or request.headers.get("Last-Event-ID")
    try:
        since = int(raw) if raw is not None else None
    except ValueError:
        raise BadRequest(f"'since' must be a revision number, got {str(raw)[:40]!r}") from None
    if since is not None and since < 0:
        raise BadRequest("'since' must be >= 0")
    queue = hub.open()
    try:
        if since is None:
            since = await store.rev()
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        await response.write(f": essaim registry events after rev {since}\n\n".encode())
        last = await _catch_up(response, store, since)
        while True:
            try:
                data = await asyncio.wait_for(queue.get(), SSE_KEEPALIVE)
            except TimeoutError:
                await response.write(b": keepalive\n\n")
                continue
            if data is None:
                break
            if data == CATCH_UP:
                last = await _catch_up(response, store, last)
                continue
            rev = int(orjson.loads(data)["rev"])
            if rev <= last:
                continue
            if rev != last + 1:
                last = await _catch_up(response, store, last)
                if rev <= last:
                    continue
            await response.write(_sse("change", data, rev))
            last = rev
        return response
    finally:
        hub.close(queue)


async def _catch_up(response: web.StreamResponse, store: RegistryStore, since: int) -> int:
    """Write retained events after ``since``; return the revision reached."""
    while True:
        backlog, resync = await store.events_since(since)
        if resync:
            current = await store.rev()
            await response.write(_sse("resync", orjson.dumps({"rev": current}).decode(), current))
            return current
        if not backlog:
            return since
        for data in backlog:
            since = int(orjson.loads(data)["rev"])
            await response.write(_sse("change", data, since))
