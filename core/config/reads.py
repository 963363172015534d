"""Shared reads of merged configs: a burst of identical GETs costs a few Redis reads.

After a change, every client of an app asks the config service for the same
merged config at about the same moment. :class:`SharedReads` lets concurrent
requests for one app and profile share one :meth:`ConfigStore.merged` read,
under one rule that keeps them correct: a request joins the next read that
has **not started yet**, never one already in flight. So the read a request
gets began after the request arrived, and can't be older than a change the
client was told about before asking.
"""

from __future__ import annotations

import asyncio
import contextlib

from core.config.store import ConfigStore, Merged

__all__ = ["SharedReads"]

Key = tuple[str, str]


class SharedReads:
    """Merged-config reads shared between concurrent requests (see the module docstring).

    ``reads`` counts the reads made and ``requests`` the calls served, so
    their ratio shows the sharing. :meth:`close` cancels reads in flight.
    """

    def __init__(self, store: ConfigStore) -> None:
        self.store = store
        self.reads = 0
        self.requests = 0
        self._next: dict[Key, asyncio.Future[Merged]] = {}
        self._runners: dict[Key, asyncio.Task[None]] = {}

    async def merged(self, app: str, profile: str) -> Merged:
        """The merged config, from a read that started after this call; raises what the read raised."""
        self.requests += 1
        key = (app, profile)
        future = self._next.get(key)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            future.add_done_callback(_retrieve)
            self._next[key] = future
            if key not in self._runners:
                self._runners[key] = asyncio.create_task(
                    self._run(key), name=f"configsvc:read:{app}/{profile}"
                )
        # Shielded: a client that goes away must not cancel the others' read.
        return await asyncio.shield(future)

    async def _run(self, key: Key) -> None:
        """Serve the pending futures of ``key`` one read each, until none is left."""
        future: asyncio.Future[Merged] | None = None
        try:
            while (future := self._next.pop(key, None)) is not None:
                self.reads += 1
                try:
                    result = await self.store.merged(*key)
                except Exception as exc:
                    future.set_exception(exc)
                else:
                    future.set_result(result)
        finally:
            if future is not None and not future.done():
                future.cancel()  # cancelled mid-read: its waiters get CancelledError
            del self._runners[key]

    async def close(self) -> None:
        """Cancel the reads in flight and every waiting request."""
        runners = list(self._runners.values())
        for task in runners:
            task.cancel()
        for task in runners:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for future in self._next.values():
            future.cancel()
        self._next.clear()


def _retrieve(future: asyncio.Future[Merged]) -> None:
    # Every waiter may have gone (clients disconnected): mark the exception
    # retrieved so that asyncio does not log it as lost.
    if not future.cancelled():
        future.exception()
