"""The event bus as the console shows it: streams, consumer groups, dead letters.

:class:`Streams` reads the bus's keys in Redis every ``interval`` seconds
while someone looks (``core.events.bus`` names them): each event type's
stream (``essaim:events:{TYPE}``) with its length and, per consumer group,
its consumers, pending messages (delivered, not yet acknowledged) and lag
(entries not yet delivered to the group; Redis 7's ``XINFO GROUPS``); each
group's retry stream (replayed dead letters, read by that group only); and
each group's dead letters (``core.events.dead_letters``), the oldest
:data:`SHOWN` of them with their error.

Reading is not a privilege here (the registry's watchers read Redis too);
replaying and discarding are the owning service's admin actions, which the
console asks for with the user's own token (:mod:`services.console.service`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from core import log
from core.events.bus import PREFIX
from core.events.dead_letters import dead_letters
from core.redis import REDIS_ERRORS, Redis
from core.tasks import TaskSet
from services.console.hub import Hub

logger = log.get("console")

__all__ = ["SHOWN", "Streams"]

#: Dead letters shown per group (the oldest; the count says how many there are).
SHOWN = 50
_GROUP_PREFIX = PREFIX + "{group:"


class Streams:
    """The bus's streams and dead letters, read while someone looks; :meth:`start`, :meth:`stop`."""

    section = "events"

    def __init__(self, hub: Hub, redis: Redis, *, interval: float = 1.0) -> None:
        self.hub = hub
        self.redis = redis
        self.interval = interval
        self.tasks = TaskSet("console:events")
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        self.tasks.spawn(self._poll(), "poll")

    async def stop(self) -> None:
        await self.tasks.stop()

    async def refresh(self) -> None:
        """Read the bus once and publish the ``events`` section."""
        async with self._lock:
            try:
                doc = await self._read()
            except REDIS_ERRORS as exc:
                doc = {"reachable": False, "error": f"Redis did not answer: {exc}",
                       "streams": [], "dead": []}  # fmt: skip
            await self.hub.set("events", doc)

    async def _read(self) -> dict[str, Any]:
        streams, retries, dead = [], [], []
        async for key in self.redis.scan_iter(match=PREFIX + "{*", count=500, _type="stream"):
            if not key.startswith(_GROUP_PREFIX):
                streams.append(key)
            elif key.endswith("}:retry"):
                retries.append(key)
            elif key.endswith("}:dead"):
                dead.append(key)
        return {
            "reachable": True,
            "error": None,
            "streams": [await self._stream(key) for key in sorted(set(streams))],
            "retries": [await self._stream(key) for key in sorted(set(retries))],
            "dead": [await self._dead(key) for key in sorted(set(dead))],
        }

    async def _stream(self, key: str) -> dict[str, Any]:
        length = int(await self.redis.xlen(key))
        groups = []
        for group in await self.redis.xinfo_groups(key):
            groups.append({
                "name": group["name"],
                "consumers": int(group.get("consumers", 0)),
                "pending": int(group.get("pending", 0)),
                "lag": None if group.get("lag") is None else int(group["lag"]),
                "last_delivered": group.get("last-delivered-id"),
            })  # fmt: skip
        return {"stream": _name(key), "key": key, "length": length,
                "groups": sorted(groups, key=lambda g: g["name"])}  # fmt: skip

    async def _dead(self, key: str) -> dict[str, Any]:
        group = _name(key)
        count = int(await self.redis.xlen(key))
        letters = await dead_letters(self.redis, group, count=SHOWN)
        shown = []
        for letter in letters:
            event = letter.event
            shown.append({
                "id": letter.id,
                "stream": letter.stream,
                "type": event.type if event is not None else letter.fields.get("type"),
                "event_id": event.id if event is not None else letter.fields.get("id"),
                "source": event.source if event is not None else letter.fields.get("source"),
                "deliveries": letter.deliveries,
                "error": letter.error,
                "failed_at": letter.failed_at,
            })  # fmt: skip
        return {"group": group, "count": count, "letters": shown}

    async def _poll(self) -> None:
        while True:
            await self.hub.active()
            await self.refresh()
            await asyncio.sleep(self.interval)


def _name(key: str) -> str:
    """``essaim:events:{bill.created}`` -> ``bill.created``; a group's keys -> the group."""
    inner = key[len(PREFIX) + 1 : key.rindex("}")]
    return inner.removeprefix("group:")
