"""Reading a Server-Sent Events stream with aiohttp: the registry's and configsvc's watches.

:func:`read_events` parses the ``text/event-stream`` format (WHATWG HTML,
"Server-sent events"): ``event:``, ``data:`` (several lines joined by
``\\n``), ``id:``, comments and ``retry:`` ignored, an event dispatched at
each blank line. :func:`follow` keeps one stream open, reconnecting with
``Last-Event-ID`` and a growing delay, and tells its owner when it
(re)connects, since events may have been missed meanwhile.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import aiohttp

from core import log
from core.redis import Backoff

logger = log.get("console")

__all__ = ["SSEvent", "follow", "read_events"]

#: Longest line accepted: an event's data is one JSON document, never this large.
MAX_LINE = 1 << 20


@dataclasses.dataclass(frozen=True, slots=True)
class SSEvent:
    """One dispatched event: its type (``message`` when unnamed), data and last id."""

    event: str
    data: str
    id: str | None


async def read_events(content: aiohttp.StreamReader) -> AsyncIterator[SSEvent]:
    """The events of one response body, until it ends."""
    event, last_id = "", None
    data: list[str] = []
    while True:
        raw = await content.readline()
        if not raw:
            return
        if len(raw) > MAX_LINE:
            raise ValueError(f"an event stream line of {len(raw)} bytes")
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if not line:
            if data:
                yield SSEvent(event or "message", "\n".join(data), last_id)
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id" and "\0" not in value:
            last_id = value


async def follow(
    session: aiohttp.ClientSession,
    url: str,
    on_event: Callable[[SSEvent], Awaitable[None]],
    *,
    on_connect: Callable[[], Awaitable[None]],
    on_disconnect: Callable[[str], None],
    headers: Mapping[str, str] | None = None,
) -> None:
    """Follow the stream at ``url`` until cancelled.

    ``on_connect`` runs each time the stream opens (its owner re-reads the
    full state: events may have been missed while it was closed);
    ``on_disconnect`` gets the reason each time it closes or fails to open.
    Reconnects resume with ``Last-Event-ID``, after 0.1 s doubling to 5 s.
    """
    backoff = Backoff(0.1, 5.0)
    last_id: str | None = None
    while True:
        wanted = dict(headers or {})
        if last_id is not None:
            wanted["Last-Event-ID"] = last_id
        reason = "the stream ended"
        try:
            timeout = aiohttp.ClientTimeout(total=None, connect=2.0, sock_read=60.0)
            async with session.get(url, headers=wanted, timeout=timeout) as resp:
                if resp.status != 200:
                    reason = f"{url} answered {resp.status}"
                else:
                    await on_connect()
                    backoff.reset()
                    async for event in read_events(resp.content):
                        if event.id is not None:
                            last_id = event.id
                        await on_event(event)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            reason = f"{url}: {exc or type(exc).__name__}"
        on_disconnect(reason)
        await asyncio.sleep(backoff.next())
