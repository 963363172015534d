"""The console's state: one JSON document per part, and the streams waiting for changes.

Each part of the page (``services``, ``gateway``, ``config``, ``events``,
``audit``) is a :class:`Section`: its current document, encoded once, and a
sequence number that grows when the encoding changes (a poll that finds
nothing new wakes nobody). A browser's stream (:meth:`Hub.next_changes`) sends
every section once, then each section whose number moved past what it sent.

The polling sources work only while someone looks: :meth:`Hub.watch` counts
the open streams, and :meth:`Hub.touch` marks a plain API read, which keeps
them polling for :data:`IDLE_AFTER` seconds more. A console nobody has open
costs its system nothing but the registry's and configsvc's pushed events.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from typing import Any

import orjson

__all__ = ["IDLE_AFTER", "SECTIONS", "Hub", "Section"]

SECTIONS = ("services", "gateway", "config", "events", "audit")
#: Seconds the sources keep polling after the last stream closed or API read.
IDLE_AFTER = 10.0


class Section:
    """One part of the state: ``doc`` as JSON bytes, ``seq`` its change count."""

    __slots__ = ("body", "name", "seq", "updated")

    def __init__(self, name: str) -> None:
        self.name = name
        self.body = b"null"
        self.seq = 0
        self.updated = 0.0  # monotonic time of the last set(), changed or not

    @property
    def doc(self) -> Any:
        return orjson.loads(self.body)


class Hub:
    """The sections, and a condition the streams wait on."""

    def __init__(self) -> None:
        self.sections = {name: Section(name) for name in SECTIONS}
        self._changed = asyncio.Condition()
        self._watchers = 0
        self._touched = 0.0
        self._active = asyncio.Event()
        self.closed = False

    # -- sources ----------------------------------------------------------------------

    async def set(self, name: str, doc: Any) -> bool:
        """Make ``doc`` the section's document; whether it differs from the last one."""
        section = self.sections[name]
        body = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
        section.updated = time.monotonic()
        if body == section.body:
            return False
        section.body = body
        section.seq += 1
        async with self._changed:
            self._changed.notify_all()
        return True

    async def active(self) -> None:
        """Return once someone looks (an open stream, or an API read in the last seconds)."""
        while not self.watched:
            self._active.clear()
            await self._active.wait()

    @property
    def watched(self) -> bool:
        return bool(self._watchers) or time.monotonic() - self._touched < IDLE_AFTER

    # -- readers ----------------------------------------------------------------------

    def touch(self) -> None:
        """An API read: keep the sources polling a while."""
        self._touched = time.monotonic()
        self._active.set()

    @contextlib.contextmanager
    def watch(self) -> Iterator[None]:
        """Count an open stream for as long as the block runs."""
        self._watchers += 1
        self._active.set()
        try:
            yield
        finally:
            self._watchers -= 1
            self._touched = time.monotonic()

    def snapshot(self) -> dict[str, Any]:
        return {name: section.doc for name, section in self.sections.items()}

    async def close(self) -> None:
        """End every stream (the process stops): :meth:`next_changes` returns None from now on."""
        self.closed = True
        async with self._changed:
            self._changed.notify_all()

    def marks(self) -> dict[str, int]:
        """What a new stream has sent: nothing (so that every section goes first)."""
        return {name: -1 for name in self.sections}

    async def next_changes(self, sent: dict[str, int], timeout: float) -> list[Section] | None:
        """The sections whose number moved past ``sent`` (updated), waiting up to ``timeout``.

        An empty list when nothing changed in time (the stream then writes a
        keep-alive comment); None once the hub is closed (the stream ends).
        """

        def fresh() -> list[Section]:
            return [s for s in self.sections.values() if s.seq != sent[s.name]]

        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: self.closed or bool(fresh())), timeout
                )
            if self.closed:
                return None
            changed = fresh()
        for section in changed:
            sent[section.name] = section.seq
        return changed
