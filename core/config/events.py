"""configsvc's changes for HTTP clients: ``GET /v1/events`` as Server-Sent Events.

For clients without Redis (any language): each change to a document is an
event ``change`` whose ``id:`` is the config revision and whose data is
``{"rev": R, "document": NAME, "version": V}``, the message configsvc
publishes on its channel. Changes are not retained, so whenever a client may
have missed one (it resumed with an older ``Last-Event-ID`` or ``?since=``,
the hub lost its Redis connection for a while, or revisions jumped), it gets
one ``resync`` event instead: ``{"rev": R, "documents": {NAME: V, ...}}``,
every current document with its version, from which it re-reads the
documents it holds at an older version. A stream opened without a revision
starts from now, and keep-alive comments flow every 15 s.
"""

from __future__ import annotations

import asyncio

import orjson
from aiohttp import web

from core.config.store import CHANNEL, ConfigStore
from core.http import CATCH_UP, KEEPALIVE, ChannelHub, frame, open_stream, resume_from
from core.redis import Redis

__all__ = ["ChangeHub", "stream_changes"]


class ChangeHub(ChannelHub):
    """configsvc's one subscription to its change channel, fanned out to SSE streams."""

    def __init__(self, redis: Redis) -> None:
        super().__init__(redis, CHANNEL, name="configsvc:events")


async def stream_changes(
    request: web.Request, store: ConfigStore, hub: ChangeHub
) -> web.StreamResponse:
    """``GET /v1/events?since=REV``: a ``resync`` if REV is behind, then every change live."""
    since = resume_from(request)
    queue = hub.open()
    try:
        current = await store.rev()
        response = await open_stream(request, f"essaim config changes after rev {current}")
        last = current
        if since is not None and since != current:
            last = await _resync(response, store)
        while True:
            try:
                data = await asyncio.wait_for(queue.get(), KEEPALIVE)
            except TimeoutError:
                await response.write(b": keepalive\n\n")
                continue
            if data is None:
                break
            if data == CATCH_UP:
                # Reconnected: changes may have been missed, and after a Redis
                # restart revisions start over (the same number may now name
                # another change), so the revision can't tell: always resync.
                last = await _resync(response, store)
                continue
            rev = int(orjson.loads(data)["rev"])
            if rev <= last:
                continue
            if rev != last + 1:
                last = await _resync(response, store)
                if rev <= last:
                    continue
            await response.write(frame("change", data, rev))
            last = rev
        return response
    finally:
        hub.close(queue)


async def _resync(response: web.StreamResponse, store: ConfigStore) -> int:
    """Send every current document's version; return the revision it was read at.

    The revision is read first: a change landing meanwhile is also in the
    client's queue, and applying a version twice is harmless.
    """
    rev = await store.rev()
    documents = {}
    for name in await store.names():
        version = await store.get(name)
        if version is not None:
            documents[name] = version.version
    data = orjson.dumps({"rev": rev, "documents": documents}).decode()
    await response.write(frame("resync", data, rev))
    return rev
