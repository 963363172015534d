"""Owned background tasks: started in one place, cancelled and awaited at stop.

Every background loop of a component (subscriptions, sweeps, heartbeats,
relays) runs in a :class:`TaskSet`. A task that ends with an exception is
logged loudly at once; :meth:`TaskSet.stop` cancels every task and waits a
bounded time, so that one uncooperative coroutine can never hang a graceful
shutdown.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from core import log

logger = log.get("tasks")

__all__ = ["TaskSet"]


class TaskSet:
    """A set of named background tasks owned by one component."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.tasks: list[asyncio.Task[Any]] = []

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=f"{self.owner}:{name}")
        task.add_done_callback(self._done)
        self.tasks.append(task)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            logger.critical("background task %s crashed", task.get_name(), exc_info=exc)

    async def stop(self, timeout: float = 5.0) -> None:
        """Cancel every task and wait up to ``timeout`` seconds for them to end.

        A task still running 50 ms after its cancellation is cancelled again:
        redis-py can swallow a cancellation that lands while a pub/sub
        connection is being set up (redis/redis-py#2028, #2551), after which
        the task would otherwise block on its next read.
        """
        tasks, self.tasks = self.tasks, []
        for task in tasks:
            task.remove_done_callback(self._done)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        pending = {t for t in tasks if not t.done()}
        while pending and loop.time() < deadline:
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=min(0.05, deadline - loop.time()))
        for task in pending:
            logger.error("background task %s did not stop within %.1fs", task.get_name(), timeout)
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                logger.error(
                    "background task %s failed", task.get_name(), exc_info=task.exception()
                )
