"""The registry's expirer: an expired instance key becomes a ``down`` event within a second.

Nothing in Redis publishes when a TTL runs out, so :class:`Expirer` watches
two ways, whichever comes first: keyspace notifications for expired keys
(enabled on each (re)connect when the server allows ``CONFIG SET``; logged
once when it doesn't) and a sweep of every index entry every
``sweep_interval`` seconds. Both end in the idempotent ``_EXPIRE`` script of
:mod:`core.registry.store`, so ``down`` is published once however many
registries or paths see the expiry.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from prometheus_client import Counter

from core import log
from core.redis import REDIS_ERRORS, UNAVAILABLE, Backoff, Redis, RedisError, Subscription
from core.registry.store import INSTANCE_PREFIX, RegistryStore, parse_instance_key

logger = log.get("registry")

__all__ = ["Expirer"]


class Expirer:
    """Publishes ``down`` for expired instances: keyspace notifications plus a sweep."""

    def __init__(
        self,
        redis: Redis,
        store: RegistryStore,
        sweep_interval: Callable[[], float],
        expired: Counter,
    ) -> None:
        self.redis = redis
        self.store = store
        self._sweep_interval = sweep_interval
        self.expired = expired
        self.notifications = False
        self._warned = False
        db = int(redis.connection_pool.connection_kwargs.get("db", 0))
        self.subscription = Subscription(
            redis,
            [f"__keyevent@{db}__:expired"],
            self._on_expired,
            on_connect=self._enable_notifications,
            name="registry:expiry",
        )

    async def _enable_notifications(self) -> None:
        """Turn on expired-key events (``Ex``) unless the server refuses CONFIG."""
        try:
            reply = await self.redis.config_get("notify-keyspace-events")
            current = str(reply.get("notify-keyspace-events") or "")
            if "E" not in current or ("x" not in current and "A" not in current):
                wanted = current + "".join(c for c in "Ex" if c not in current)
                await self.redis.config_set("notify-keyspace-events", wanted)
                # A change to a server others may share: never silent.
                logger.warning(
                    "changed the Redis server's notify-keyspace-events from %r to %r"
                    " (expired-key events, to see instances expire at once)",
                    current, wanted,
                )  # fmt: skip
            self.notifications = True
        except RedisError as exc:
            if isinstance(exc, UNAVAILABLE):
                raise
            if not self._warned:
                logger.warning(
                    "keyspace notifications unavailable (%s); expiry relies on the %.1fs sweep",
                    exc, self._sweep_interval(),
                )  # fmt: skip
                self._warned = True
            self.notifications = False

    async def _on_expired(self, channel: str, key: str) -> None:
        if not key.startswith(INSTANCE_PREFIX):
            return
        parsed = parse_instance_key(key)
        if parsed is not None and await self.store.expire(*parsed):
            self.expired.inc()
            logger.info("instance %s/%s expired: down", *parsed)

    async def sweep_forever(self) -> None:
        backoff = Backoff()
        while True:
            try:
                count = await self.store.sweep()
                if count:
                    self.expired.inc(count)
                    logger.info("sweep: %d expired instance(s) published down", count)
                backoff.reset()
                await asyncio.sleep(self._sweep_interval())
            except REDIS_ERRORS as exc:
                if backoff.attempt == 0:
                    logger.warning("sweep: Redis unavailable (%s)", exc)
                await backoff.sleep()
