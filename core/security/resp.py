"""A minimal pipelined Redis connection for the gateway's hot path.

redis-py's asyncio client spends 50 to 120 µs of CPU on one command (pool,
locks, health checks, retries): more than the gateway spends proxying a whole
request. :class:`RespClient` is one asyncio protocol speaking RESP2 over one
TCP connection: commands are written as they come, replies are matched to
callers in order, so any number of concurrent callers share the connection
(pipelining) for about 15 µs of CPU each. It does only what a per-request
script call needs: connect (with ``AUTH`` and ``SELECT`` from the URL), send,
read, reconnect on the next call after a failure, and find the server to
send to: Sentinel's primary, or on Cluster the primary of the key's slot.
Everything else uses :mod:`core.redis`.

A caller that gives up (a timeout) leaves its place in the reply queue;
its reply is read and dropped when it comes, so the connection stays usable.
:meth:`RespClient.reset` drops the connection when the server seems hung.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import ssl
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

from core.errors import EssaimError
from core.redis import ACCEPTED, RedisURL, parse_url

__all__ = ["RespClient", "RespError", "Script", "key_slot"]

Arg = str | bytes | int | float


class RespError(EssaimError):
    """An error reply from the server (``-ERR ...``, ``-NOSCRIPT ...``)."""


class _Incomplete(Exception):
    pass


def encode(args: tuple[Arg, ...]) -> bytes:
    """One command in RESP: an array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            raw = arg
        elif isinstance(arg, str):
            raw = arg.encode()
        elif isinstance(arg, float):
            raw = repr(arg).encode()
        else:
            raw = b"%d" % arg
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


def parse(buf: bytes | bytearray, pos: int) -> tuple[Any, int]:
    """One reply at ``pos``: ``(value, next position)``; ``_Incomplete`` when more bytes are needed.

    Simple strings are ``str``, errors :class:`RespError` (returned, not
    raised), integers ``int``, bulk strings ``bytes`` (``None`` for nil),
    arrays ``list``.
    """
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete
    kind, line = buf[pos : pos + 1], bytes(buf[pos + 1 : end])
    pos = end + 2
    if kind == b":":
        return int(line), pos
    if kind == b"+":
        return line.decode(), pos
    if kind == b"-":
        return RespError(line.decode(errors="replace")), pos
    if kind == b"$":
        size = int(line)
        if size < 0:
            return None, pos
        if len(buf) < pos + size + 2:
            raise _Incomplete
        return bytes(buf[pos : pos + size]), pos + size + 2
    if kind == b"*":
        count = int(line)
        if count < 0:
            return None, pos
        items = []
        for _ in range(count):
            item, pos = parse(buf, pos)
            items.append(item)
        return items, pos
    raise ValueError(f"not a RESP reply: {bytes(buf[pos - len(line) - 3 : end])!r}")


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.buffer = bytearray()
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        pos = 0
        try:
            while pos < len(buf):
                value, pos = parse(buf, pos)
                waiter = self.waiting.popleft()
                if not waiter.done():
                    waiter.set_result(value)
        except _Incomplete:
            pass
        except (ValueError, IndexError) as exc:  # garbage, or a reply nobody asked for
            self._fail(ConnectionError(f"Redis protocol error: {exc}"))
            if self.transport is not None:
                self.transport.abort()
            return
        del buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionError(f"connection to Redis lost: {exc or 'closed'}"))

    def _fail(self, exc: Exception) -> None:
        self.lost = True
        while self.waiting:
            waiter = self.waiting.popleft()
            if not waiter.done():
                waiter.set_exception(exc)

    def send(self, payload: bytes, loop: asyncio.AbstractEventLoop) -> asyncio.Future[Any]:
        waiter = loop.create_future()
        self.waiting.append(waiter)
        assert self.transport is not None
        self.transport.write(payload)
        return waiter


class Script:
    """A Lua script known by its SHA-1, loaded into the server on first use."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


def key_slot(key: str | bytes) -> int:
    """The Redis Cluster slot of ``key``: CRC16 (XMODEM) of its hash tag, or of it all, mod 16384."""
    raw = key.encode() if isinstance(key, str) else key
    start = raw.find(b"{")
    if start >= 0:
        end = raw.find(b"}", start + 1)
        if end > start + 1:
            raw = raw[start + 1 : end]
    crc = 0
    for byte in raw:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc % 16384


class _Node:
    """One pipelined connection to one server: connect (``AUTH``, ``SELECT``, a role check), send."""

    def __init__(
        self,
        address: tuple[str, int],
        target: RedisURL,
        connect_timeout: float,
        on_connect: Callable[[], None],
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.address = address
        self.target = target
        self.tls = tls
        self.connect_timeout = connect_timeout
        self.on_connect = on_connect
        self.protocol: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None

    async def send(self, payload: bytes) -> Any:
        protocol = self.protocol
        if protocol is None or protocol.lost:
            protocol = await self._connect()
        return await protocol.send(payload, asyncio.get_running_loop())

    async def _connect(self) -> _Protocol:
        if self._connecting is not None:
            return await asyncio.shield(self._connecting)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_Protocol] = loop.create_future()
        self._connecting = future
        try:
            async with asyncio.timeout(self.connect_timeout):
                protocol = await _open(
                    self.address, self.target.username, self.target.password, self.tls
                )
                setup: list[asyncio.Future[Any]] = []
                if self.target.db:
                    setup.append(protocol.send(encode(("SELECT", self.target.db)), loop))
                if self.target.topology == "sentinel":
                    setup.append(protocol.send(encode(("ROLE",)), loop))
                for reply in await asyncio.gather(*setup):
                    if isinstance(reply, RespError):
                        _abort(protocol)
                        raise ConnectionError(f"Redis refused the connection setup: {reply}")
                    if isinstance(reply, list) and reply and reply[0] != b"master":
                        # Sentinel named a server that is no longer (or not yet) the primary.
                        _abort(protocol)
                        raise ConnectionError(
                            f"{self.address[0]}:{self.address[1]} is not the primary"
                        )
            self.protocol = protocol
            self.on_connect()
            future.set_result(protocol)
            return protocol
        except BaseException as exc:
            future.set_exception(exc if isinstance(exc, Exception) else ConnectionError(str(exc)))
            future.exception()
            raise
        finally:
            self._connecting = None

    def reset(self) -> None:
        protocol, self.protocol = self.protocol, None
        if protocol is not None:
            _abort(protocol)


async def _open(
    address: tuple[str, int],
    username: str | None,
    password: str | None,
    tls: ssl.SSLContext | None = None,
) -> _Protocol:
    """A connection to ``address`` (over TLS with ``tls``), authenticated when a password is given."""
    loop = asyncio.get_running_loop()
    if tls is None:
        _, protocol = await loop.create_connection(_Protocol, *address)
    else:
        _, protocol = await loop.create_connection(
            _Protocol, *address, ssl=tls, server_hostname=address[0]
        )
    if password is not None:
        credentials = (password,) if username is None else (username, password)
        reply = await protocol.send(encode(("AUTH", *credentials)), loop)
        if isinstance(reply, RespError):
            _abort(protocol)
            raise ConnectionError(f"Redis refused the connection setup: {reply}")
    return protocol


def _tls(url: str) -> ssl.SSLContext:
    """The TLS context of a ``rediss://`` URL (redis-py's query parameters)."""
    params = parse_qs(urlsplit(url).query)
    cafile = params["ssl_ca_certs"][0] if params.get("ssl_ca_certs") else None
    context = ssl.create_default_context(cafile=cafile)
    if (params.get("ssl_cert_reqs") or [""])[0].lower() == "none":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _abort(protocol: _Protocol) -> None:
    if protocol.transport is not None:
        protocol.transport.abort()


class RespClient:
    """Pipelined connections to the Redis of ``url``: one node, Sentinel's primary, or a Cluster.

    ``url`` takes the forms of :func:`core.redis.parse_url` (not ``unix://``);
    ``rediss://`` is TLS, verified against the system's CAs or the file named
    by ``?ssl_ca_certs=`` (``?ssl_cert_reqs=none`` skips the check), as
    redis-py reads the same URL. On one node there is one connection. Behind Sentinel the
    connection goes to the server the Sentinels name as primary, checked with
    ``ROLE``; after a failover (the connection drops, or a write answers
    ``READONLY``) the next call asks the Sentinels again. On Cluster each
    command goes to the primary of its first key's slot, over one connection
    per primary, from a slot map read with ``CLUSTER SLOTS`` and read again
    on a ``MOVED`` reply (``ASK`` is followed once, as Cluster asks).

    Connects on first use and again on the first call after the connection
    failed. Calls raise ``ConnectionError``/``OSError``/``TimeoutError`` when
    the server can't be reached and :class:`RespError` for an error reply.
    """

    def __init__(self, url: str, *, connect_timeout: float = 1.0) -> None:
        scheme = url.split("://", 1)[0].lower()
        if scheme == "unix":
            raise ValueError(f"{url!r}: the gateway's rate-limit connection speaks {ACCEPTED}")
        self.tls = _tls(url) if scheme == "rediss" else None
        self.target = parse_url(url)
        self.connect_timeout = connect_timeout
        self.connections = 0
        self._nodes: dict[tuple[str, int], _Node] = {}
        self._primary: _Node | None = None  # one node, or Sentinel's primary
        self._slots: list[tuple[str, int]] = []  # Cluster: slot -> primary address
        self._refreshing: asyncio.Future[None] | None = None

    def _counted(self) -> None:
        self.connections += 1

    def _node(self, address: tuple[str, int]) -> _Node:
        node = self._nodes.get(address)
        if node is None:
            node = self._nodes[address] = _Node(
                address, self.target, self.connect_timeout, self._counted, self.tls
            )
        return node

    async def call(self, *args: Arg) -> Any:
        """Send one command and return its reply (an error reply raises :class:`RespError`).

        On Cluster the command goes to the slot of its first argument after
        the name (its key, for the commands this client is for).
        """
        return await self._call(args[1] if len(args) > 1 else None, encode(args), args)

    async def run_script(self, script: Script, keys: list[str], args: list[Arg]) -> Any:
        """``EVALSHA``, loading the script when the server does not know it (after a restart)."""
        route = keys[0] if keys else None
        try:
            return await self._call(
                route, encode(("EVALSHA", script.sha, len(keys), *keys, *args)), None
            )
        except RespError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        return await self._call(
            route, encode(("EVAL", script.source, len(keys), *keys, *args)), None
        )

    async def _call(self, key: Arg | None, payload: bytes, args: tuple[Arg, ...] | None) -> Any:
        if self.target.topology != "cluster":
            node = self._primary
            if node is None or (
                self.target.topology == "sentinel" and (node.protocol is None or node.protocol.lost)
            ):
                # Behind Sentinel every new connection asks where the primary is now.
                node = await self._find_primary()
            reply = await node.send(payload)
            if isinstance(reply, RespError) and str(reply).startswith("READONLY"):
                # A failover demoted the server under this connection.
                self.reset()
                raise ConnectionError(
                    f"Redis at {node.address[0]}:{node.address[1]} is a replica now"
                )
        else:
            if not self._slots:
                await self._refresh_slots()
            slot = key_slot(key if isinstance(key, str | bytes) else str(key or ""))
            reply = await self._node(self._slots[slot]).send(payload)
            if isinstance(reply, RespError):
                kind, _, rest = str(reply).partition(" ")
                if kind in ("MOVED", "ASK"):
                    host, _, port = rest.split(" ")[-1].rpartition(":")
                    node = self._node((host or self._slots[slot][0], int(port)))
                    if kind == "MOVED":
                        self._slots = []  # the map changed: the next call reads it again
                        reply = await node.send(payload)
                    else:
                        _, reply = await asyncio.gather(
                            node.send(encode(("ASKING",))), node.send(payload)
                        )
        if isinstance(reply, RespError):
            raise reply
        return reply

    async def _find_primary(self) -> _Node:
        """One node's, or the address the Sentinels give for the primary, asking each in turn."""
        if self.target.topology == "single":
            self._primary = self._node(self.target.nodes[0])
            return self._primary
        assert self.target.primary is not None
        errors = []
        for sentinel in self.target.nodes:
            try:
                async with asyncio.timeout(self.connect_timeout):
                    protocol = await _open(sentinel, None, self.target.sentinel_password)
                    try:
                        reply = await protocol.send(
                            encode(("SENTINEL", "get-master-addr-by-name", self.target.primary)),
                            asyncio.get_running_loop(),
                        )
                    finally:
                        _abort(protocol)
            except (OSError, TimeoutError) as exc:
                errors.append(f"{sentinel[0]}:{sentinel[1]}: {exc or type(exc).__name__}")
                continue
            if isinstance(reply, list) and len(reply) == 2:
                address = (reply[0].decode(), int(reply[1]))
                if self._primary is not None and self._primary.address != address:
                    self._primary.reset()
                self._primary = self._node(address)
                return self._primary
            errors.append(f"{sentinel[0]}:{sentinel[1]}: no primary named {self.target.primary!r}")
        raise ConnectionError("no Sentinel named the primary: " + "; ".join(errors))

    async def _refresh_slots(self) -> None:
        if self._refreshing is not None:
            return await asyncio.shield(self._refreshing)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._refreshing = future
        try:
            candidates = [*{a for a in self._slots}, *self.target.nodes]
            errors = []
            for address in dict.fromkeys(candidates):
                try:
                    async with asyncio.timeout(self.connect_timeout):
                        reply = await self._node(address).send(encode(("CLUSTER", "SLOTS")))
                except (OSError, TimeoutError) as exc:
                    errors.append(f"{address[0]}:{address[1]}: {exc or type(exc).__name__}")
                    continue
                if isinstance(reply, RespError) or not reply:
                    errors.append(f"{address[0]}:{address[1]}: {reply or 'no slots'}")
                    continue
                slots: list[tuple[str, int]] = [address] * 16384
                for start, end, primary, *_ in reply:
                    host = primary[0].decode() or address[0]
                    for slot in range(int(start), int(end) + 1):
                        slots[slot] = (host, int(primary[1]))
                self._slots = slots
                future.set_result(None)
                return None
            raise ConnectionError("no Cluster node answered CLUSTER SLOTS: " + "; ".join(errors))
        except BaseException as exc:
            future.set_exception(exc if isinstance(exc, Exception) else ConnectionError(str(exc)))
            future.exception()
            raise
        finally:
            self._refreshing = None

    def reset(self) -> None:
        """Drop every connection (callers waiting get ``ConnectionError``); the next call reconnects.

        Behind Sentinel the next call asks the Sentinels for the primary again;
        on Cluster it reads the slot map again.
        """
        for node in self._nodes.values():
            node.reset()
        if self.target.topology != "single":
            self._primary = None
            self._slots = []

    async def close(self) -> None:
        self.reset()
        await asyncio.sleep(0)  # let connection_lost run
