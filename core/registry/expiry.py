"""The registry's expirer: an instance whose deadline passes becomes a ``down`` event at once.

Each instance's deadline (Redis clock) sits in one sorted set
(:data:`core.registry.store.DEADLINES_KEY`), so :class:`Expirer` needs no
keyspace notifications: it asks Redis which deadlines have passed and how long
until the next one, publishes ``down`` for the former, and sleeps until the
latter, but never longer than ``sweep_interval`` (a registration with a
shorter TTL may arrive meanwhile). This works the same on one node, behind
Sentinel and on Cluster, where keyspace notifications are per node, and on
servers that refuse ``CONFIG SET``. Every path ends in the idempotent
``_EXPIRE`` script of :mod:`core.registry.store`, so ``down`` is published
once however many registries see the expiry.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from prometheus_client import Counter

from core import log
from core.redis import REDIS_ERRORS, Backoff
from core.registry.store import RegistryStore

logger = log.get("registry")

__all__ = ["Expirer"]

# A deadline is checked this long after it passes, so that the Redis clock
# has surely reached it when the script runs.
_MARGIN = 0.002


class Expirer:
    """Publishes ``down`` for instances whose deadline passed, woken by the next deadline."""

    def __init__(
        self, store: RegistryStore, sweep_interval: Callable[[], float], expired: Counter
    ) -> None:
        self.store = store
        self._sweep_interval = sweep_interval
        self.expired = expired
        self._wake = asyncio.Event()
        self._stopped = False

    def poke(self) -> None:
        """Look again now (a registration may have brought an earlier deadline)."""
        self._wake.set()

    def stop(self) -> None:
        """Sweep no more: :meth:`run` returns instead of starting another sweep."""
        self._stopped = True
        self._wake.set()

    async def run(self) -> None:
        backoff = Backoff()
        while not self._stopped:
            try:
                # Cleared before the sweep, not after: a poke that arrives while
                # it runs (a registration with an earlier deadline) must wake the
                # wait that follows, or that deadline waits a whole interval.
                self._wake.clear()
                count, wait = await self.store.sweep()
                if count:
                    self.expired.inc(count)
                    logger.info("%d expired instance(s) published down", count)
                if backoff.attempt:
                    logger.info("expirer: Redis is back")
                backoff.reset()
                interval = self._sweep_interval()
                delay = interval if wait is None else min(interval, wait + _MARGIN)
                if self._stopped:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
            except REDIS_ERRORS as exc:
                if backoff.attempt == 0:
                    logger.warning("expirer: Redis unavailable (%s)", exc)
                await backoff.sleep()
