"""A minimal pipelined Redis connection for the gateway's hot path.

redis-py's asyncio client spends 50 to 120 µs of CPU on one command (pool,
locks, health checks, retries): more than the gateway spends proxying a whole
request. :class:`RespClient` is one asyncio protocol speaking RESP2 over one
TCP connection: commands are written as they come, replies are matched to
callers in order, so any number of concurrent callers share the connection
(pipelining) for about 15 µs of CPU each. It does only what a per-request
script call needs: connect (with ``AUTH`` and ``SELECT`` from the URL), send,
read, reconnect on the next call after a failure. Everything else uses
:mod:`core.redis`.

A caller that gives up (a timeout) leaves its place in the reply queue;
its reply is read and dropped when it comes, so the connection stays usable.
:meth:`RespClient.reset` drops the connection when the server seems hung.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
from typing import Any, cast
from urllib.parse import unquote, urlsplit

from core.errors import EssaimError

__all__ = ["RespClient", "RespError", "Script"]

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


class RespClient:
    """One pipelined connection to the Redis server of ``url`` (``redis://[:pw@]host[:port][/db]``).

    Connects on first use and again on the first call after the connection
    failed. Calls raise ``ConnectionError``/``OSError``/``TimeoutError`` when
    the server can't be reached and :class:`RespError` for an error reply.
    """

    def __init__(self, url: str, *, connect_timeout: float = 1.0) -> None:
        parts = urlsplit(url)
        if parts.scheme != "redis":
            raise ValueError(f"{url!r}: expected redis://[[user]:password@]host[:port][/db]")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 6379
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        path = parts.path.strip("/")
        self.db = int(path) if path else 0
        self.connect_timeout = connect_timeout
        self.connections = 0
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None

    async def call(self, *args: Arg) -> Any:
        """Send one command and return its reply (an error reply raises :class:`RespError`)."""
        protocol = self._protocol
        if protocol is None or protocol.lost:
            protocol = await self._connect()
        reply = await protocol.send(encode(args), asyncio.get_running_loop())
        if isinstance(reply, RespError):
            raise reply
        return reply

    async def run_script(self, script: Script, keys: list[str], args: list[Arg]) -> Any:
        """``EVALSHA``, loading the script when the server does not know it (after a restart)."""
        try:
            return await self.call("EVALSHA", script.sha, len(keys), *keys, *args)
        except RespError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        return await self.call("EVAL", script.source, len(keys), *keys, *args)

    async def _connect(self) -> _Protocol:
        if self._connecting is not None:
            return await asyncio.shield(self._connecting)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_Protocol] = loop.create_future()
        self._connecting = future
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, protocol = await loop.create_connection(_Protocol, self.host, self.port)
                setup: list[asyncio.Future[Any]] = []
                if self.password is not None:
                    credentials = (self.password,) if self.username is None else (
                        self.username, self.password)  # fmt: skip
                    setup.append(protocol.send(encode(("AUTH", *credentials)), loop))
                if self.db:
                    setup.append(protocol.send(encode(("SELECT", self.db)), loop))
                for reply in await asyncio.gather(*setup):
                    if isinstance(reply, RespError):
                        assert protocol.transport is not None
                        protocol.transport.close()
                        raise ConnectionError(f"Redis refused the connection setup: {reply}")
            self._protocol = protocol
            self.connections += 1
            future.set_result(protocol)
            return protocol
        except BaseException as exc:
            future.set_exception(exc if isinstance(exc, Exception) else ConnectionError(str(exc)))
            future.exception()
            raise
        finally:
            self._connecting = None

    def reset(self) -> None:
        """Drop the connection (callers waiting get ``ConnectionError``); the next call reconnects."""
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.abort()

    async def close(self) -> None:
        self.reset()
        await asyncio.sleep(0)  # let connection_lost run
