"""The registry's change stream for HTTP clients: ``GET /v1/events`` as Server-Sent Events.

:class:`EventHub` holds the process's one subscription to the change channel
and fans it out to a bounded queue per open stream. :func:`stream_events`
replays the retained events after the client's revision, then forwards live
ones in revision order, re-reading the retained stream on a gap, and sends a
``resync`` event when what the client missed is no longer retained.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import orjson
from aiohttp import web

from core.http import CATCH_UP, KEEPALIVE, ChannelHub, frame, open_stream, resume_from
from core.redis import Redis
from core.registry.store import CHANNEL, RegistryStore

__all__ = ["EventHub", "stream_events"]


class EventHub(ChannelHub):
    """The registry's one subscription to its change channel, fanned out to SSE streams.

    A client whose queue overflows is dropped (its stream ends); it reconnects
    with ``Last-Event-ID`` and reads what it missed from the retained events.
    """

    def __init__(self, redis: Redis) -> None:
        super().__init__(redis, CHANNEL, name="registry:events")
        #: Called with every change as published (raw JSON), before the streams get it
        #: (the Eureka API's delta listens here).
        self.listeners: list[Callable[[str], None]] = []

    async def _on_message(self, channel: str, data: str) -> None:
        for listener in self.listeners:
            listener(data)
        await super()._on_message(channel, data)


async def stream_events(
    request: web.Request, store: RegistryStore, hub: EventHub
) -> web.StreamResponse:
    """``GET /v1/events?since=REV``: retained events after REV, then live ones, as SSE.

    ``Last-Event-ID`` (sent by EventSource on reconnect) takes precedence over
    ``since`` (:func:`core.http.resume_from`); the stream opens with a
    ``retry:`` field. When what follows REV is no longer retained, a
    ``resync`` event (data: the current revision) tells the client to list
    everything again.
    """
    since = resume_from(request)
    queue = hub.open()
    try:
        # The epoch that ``since`` and every later position belong to: every
        # catch-up reads the data's epoch with the events, so that Redis emptied
        # while this stream was behind (its new revisions past ``last``) is a
        # resync, never the new epoch's events taken for the old one's.
        epoch = await store.epoch()
        if since is None:
            since = await store.rev()
        response = await open_stream(request, f"essaim registry events after rev {since}")
        last, epoch = await _catch_up(response, store, since, epoch)
        while True:
            try:
                data = await asyncio.wait_for(queue.get(), KEEPALIVE)
            except TimeoutError:
                await response.write(b": keepalive\n\n")
                continue
            if data is None:
                break
            if data == CATCH_UP:
                # Back on the channel after a disconnection: read what was missed
                # (or resync, if Redis was emptied meanwhile).
                last, epoch = await _catch_up(response, store, last, epoch)
                continue
            rev = int(orjson.loads(data)["rev"])
            if rev <= last:
                continue
            if rev != last + 1:
                last, epoch = await _catch_up(response, store, last, epoch)
                if rev <= last:
                    continue
            await response.write(frame("change", data, rev))
            last = rev
        return response
    finally:
        hub.close(queue)


async def _resync(response: web.StreamResponse, store: RegistryStore) -> tuple[int, str]:
    """Tell the client to list everything again; return the current revision and epoch."""
    epoch = await store.epoch()
    current = await store.rev()
    await response.write(frame("resync", orjson.dumps({"rev": current}).decode(), current))
    return current, epoch


async def _catch_up(
    response: web.StreamResponse, store: RegistryStore, since: int, epoch: str
) -> tuple[int, str]:
    """Write retained events after ``since`` of ``epoch``; return the revision and epoch reached."""
    while True:
        backlog, resync = await store.events_since(since, epoch=epoch)
        if resync:
            return await _resync(response, store)
        if not backlog:
            return since, epoch
        for data in backlog:
            since = int(orjson.loads(data)["rev"])
            await response.write(frame("change", data, since))
