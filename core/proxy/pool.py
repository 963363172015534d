"""Upstream connections and the pool of idle keep-alive connections per endpoint.

An :class:`UpstreamConnection` carries one request at a time. While it does,
it hands what it parses to its :class:`Receiver` (the exchange); between
requests it sits idle in the :class:`Pool`, which closes it after
``idle_timeout`` or when the upstream closes it first. A connection goes back
to the pool only when its response was complete, the request was wholly
sent, and both sides allow keep-alive.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Hashable
from typing import Any, Protocol

import httptools

from core import log

logger = log.get("gateway.pool")

__all__ = ["Address", "Pool", "Receiver", "UpstreamConnection"]

#: ``(host, port, scheme)`` of an upstream endpoint.
Address = tuple[str, int, str]

#: The largest response head accepted from an upstream (bytes).
MAX_RESPONSE_HEAD = 64 * 1024


class Receiver(Protocol):
    """What an :class:`UpstreamConnection` reports to while it carries a request.

    Calls happen inside the connection's ``data_received``. Once the parser
    is done with the data comes ``upstream_done`` when the whole response was
    parsed, else ``upstream_flush``: the receiver writes what it collected.
    """

    def upstream_head(self, status: int, block: bytes, close: bool) -> None: ...

    def upstream_interim(self, status: int, block: bytes) -> None: ...

    def upstream_body(self, data: bytes) -> None: ...

    def upstream_flush(self) -> None: ...

    def upstream_done(self, conn: UpstreamConnection) -> None: ...

    def upstream_upgraded(self, conn: UpstreamConnection, rest: bytes) -> None: ...

    def upstream_lost(self, conn: UpstreamConnection, reason: str) -> None: ...

    def upstream_data(self, data: bytes) -> None: ...

    def pause_client(self, paused: bool) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    """One TCP (or TLS) connection to an upstream endpoint."""

    __slots__ = (
        "_body_seen",
        "_complete",
        "_head_bytes",
        "_head_only",
        "_heads",
        "_interim",
        "_known_block",
        "_known_head",
        "_known_length",
        "_known_status",
        "_parser",
        "_partial",
        "_remaining",
        "_status",
        "_want_head",
        "address",
        "close_after",
        "idle_since",
        "key",
        "lost",
        "pool",
        "reading_paused",
        "receiver",
        "requests",
        "transport",
        "tunnel",
        "writing_paused",
    )

    def __init__(self, pool: Pool, key: Hashable, address: Address) -> None:
        self.pool = pool
        self.key = key
        self.address = address
        self.transport: asyncio.Transport | None = None
        self.receiver: Receiver | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._heads: list[bytes] = []
        self._partial = b""
        # The last response head llhttp parsed here whose body was framed by
        # Content-Length: an identical head later skips llhttp (see _known).
        self._known_head = b""
        self._known_block = b""
        self._known_status = 0
        self._known_length = 0
        self._head_bytes = b""
        self._status = 0
        self._body_seen = 0
        self._remaining = -1
        self._want_head = False
        self._head_only = False
        self._interim = False
        self._complete = False
        self.close_after = False
        self.lost = False
        self.tunnel = False
        self.idle_since = 0.0
        self.requests = 0
        #: Reading paused by the client's backpressure (see :meth:`pause_reading`).
        self.reading_paused = False
        #: The transport's write buffer is over its high-water mark.
        self.writing_paused = False

    # -- asyncio.Protocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        receiver = self.receiver
        if receiver is None:
            # Bytes on an idle connection: the upstream is confused; drop it.
            self.close()
            return
        if self.tunnel:
            receiver.upstream_data(data)
            return
        if self._remaining >= 0:
            self._counted(receiver, data)
            return
        if self._want_head:
            if (
                self._known_head
                and not self._partial
                and not self._head_only
                and data.startswith(self._known_head)
            ):
                self._known(receiver, data)
                return
            end = -1 if self._partial else data.find(b"\r\n\r\n")
            if end > 0 and data[9] != 49:  # a whole final head in this read: the usual case
                self._heads.append(data[data.find(b"\r\n") : end + 2])
                self._head_bytes = data[: end + 4]
                self._want_head = False
            elif not self._find_heads(data):
                logger.info(
                    "response head from %s:%d is too large", self.address[0], self.address[1]
                )
                self.receiver = None
                self.close()
                receiver.upstream_lost(self, "protocol")
                return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            receiver.upstream_flush()
            self.tunnel = True
            receiver.upstream_upgraded(self, data[exc.args[0] :])
            return
        except httptools.HttpParserError as exc:
            logger.info("malformed response from %s:%d: %s", self.address[0], self.address[1], exc)
            self.receiver = None
            self.close()
            receiver.upstream_lost(self, "protocol")
            return
        if self.receiver is not receiver:
            return  # the receiver gave this connection up while it was parsed
        if self._complete:
            self._complete = False
            self.receiver = None
            if self._head_only:
                # llhttp cannot know that the response to HEAD has no body.
                self._parser = httptools.HttpResponseParser(self)
            elif self._head_bytes and not self.close_after:
                self._remember()
            receiver.upstream_done(self)
        else:
            receiver.upstream_flush()

    def _remember(self) -> None:
        """Keep the head just parsed if its body was framed by Content-Length alone."""
        head = self._head_bytes
        status = self._status
        if (
            status >= 200
            and status not in (204, 304)
            and head.startswith(b"HTTP/1.1 ")
            and b"\r\ntransfer-encoding:" not in head.lower()
        ):
            self._known_head = head
            self._known_block = head[head.find(b"\r\n") : -2]
            self._known_status = status
            self._known_length = self._body_seen

    def _known(self, receiver: Receiver, data: bytes) -> None:
        """A response whose head is byte for byte the one remembered: no need for llhttp.

        The bytes are the ones llhttp accepted before, so they mean the same:
        the status, the headers, and a body of the same Content-Length, which
        is counted here. llhttp's state is untouched (it ended the last message).
        """
        self._want_head = False
        receiver.upstream_head(self._known_status, self._known_block, False)
        if self.receiver is not receiver:
            return
        self._remaining = self._known_length
        self._counted(receiver, data[len(self._known_head) :])

    def _counted(self, receiver: Receiver, body: bytes) -> None:
        remaining = self._remaining
        if len(body) > remaining:
            # More than the head announced: the upstream is broken; end here.
            body = body[:remaining]
            self.close_after = True
        if body:
            receiver.upstream_body(body)
            if self.receiver is not receiver:
                return
        remaining -= len(body)
        if remaining:
            self._remaining = remaining
            receiver.upstream_flush()
        else:
            self._remaining = -1
            self.receiver = None
            receiver.upstream_done(self)

    def eof_received(self) -> bool | None:
        return None  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.pool.forget(self)
        receiver = self.receiver
        self.receiver = None
        if receiver is not None:
            receiver.upstream_lost(self, "eof" if exc is None else "reset")

    def pause_writing(self) -> None:
        self.writing_paused = True
        if self.receiver is not None:
            self.receiver.pause_client(True)

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.receiver is not None:
            self.receiver.pause_client(False)

    def _find_heads(self, data: bytes) -> bool:
        """Cut the response heads out of the raw bytes, before llhttp parses them.

        llhttp checks the syntax and frames the body; the header block is
        taken whole from the bytes (a head ends at the first CRLFCRLF, which
        llhttp's strict parsing guarantees), so no Python call is made per
        header. Interim (1xx) heads come before the final one, without a body.
        False when a head grows past :data:`MAX_RESPONSE_HEAD`.
        """
        buf = self._partial + data if self._partial else data
        start = 0
        while True:
            end = buf.find(b"\r\n\r\n", start)
            if end < 0:
                self._partial = buf[start:]
                return len(self._partial) <= MAX_RESPONSE_HEAD
            self._heads.append(buf[buf.find(b"\r\n", start) : end + 2])
            status = buf[start + 9 : start + 12]
            if status[:1] == b"1" and status != b"101":
                start = end + 4
                continue
            self._want_head = False
            self._partial = b""
            return True

    # -- httptools callbacks -----------------------------------------------------------

    def on_headers_complete(self) -> None:
        parser = self._parser
        self._status = status = parser.get_status_code()
        block = self._heads.pop(0) if self._heads else b"\r\n"
        receiver = self.receiver
        assert receiver is not None
        if status < 200 and status != 101:
            self._interim = True
            receiver.upstream_interim(status, block)
            return
        self.close_after = not parser.should_keep_alive()
        receiver.upstream_head(status, block, self.close_after)
        if self._head_only:
            self._complete = True

    def on_body(self, body: bytes) -> None:
        if self.receiver is not None and not self._complete:
            self._body_seen += len(body)
            self.receiver.upstream_body(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        self._complete = True

    # -- use ---------------------------------------------------------------------

    def send(self, receiver: Receiver, data: list[bytes], head_only: bool) -> None:
        """Carry a request for ``receiver``: write ``data`` (its head and any body so far)."""
        self.receiver = receiver
        self._head_only = head_only
        self._complete = False
        self._want_head = True
        self._partial = b""
        self._heads.clear()
        self._head_bytes = b""
        self._body_seen = 0
        self.requests += 1
        assert self.transport is not None
        self.transport.write(data[0] if len(data) == 1 else b"".join(data))

    def write(self, data: bytes) -> None:
        """More of the current request's body."""
        assert self.transport is not None
        self.transport.write(data)

    def pause_reading(self, paused: bool) -> None:
        """Stop (or resume) reading the upstream: the client takes the answer slower than it comes."""
        if paused == self.reading_paused:
            return
        self.reading_paused = paused
        if self.transport is not None and not self.lost:
            if paused:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    def close(self) -> None:
        """Close at once, forgetting any request it carried (no callback to the receiver)."""
        self.receiver = None
        if self.transport is not None:
            self.transport.abort()


class Pool:
    """Idle keep-alive connections per endpoint, most recently used first.

    Connections are kept under a key, the upstream's endpoint object (hashed
    by identity: no tuple to build per request); an endpoint whose address
    changes is a new endpoint. ``acquire`` is synchronous (an idle
    connection or None); ``connect`` opens a new connection. At most ``max_idle`` idle connections are kept
    per address; each is closed after ``idle_timeout`` seconds unused, which
    should be below the upstreams' own keep-alive timeout so that the
    gateway, not the upstream, closes idle connections.
    """

    def __init__(self, *, max_idle: int = 64, idle_timeout: float = 30.0) -> None:
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self.idle: dict[Hashable, list[UpstreamConnection]] = {}
        self.connects = 0
        self.reuses = 0
        self.open = 0
        self._ssl: ssl.SSLContext | None = None

    def acquire(self, key: Hashable) -> UpstreamConnection | None:
        conns = self.idle.get(key)
        while conns:
            conn = conns.pop()
            if not conn.lost:
                self.reuses += 1
                return conn
        return None

    async def connect(self, key: Hashable, address: Address) -> UpstreamConnection:
        """A new connection to ``address``, pooled under ``key``; ``OSError`` if it can't be made.

        The caller bounds the wait (it cancels the call at its connect timeout).
        """
        host, port, scheme = address
        loop = asyncio.get_running_loop()
        tls: dict[str, Any] = {}
        if scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            tls = {"ssl": self._ssl, "server_hostname": host}
        factory: Callable[[], UpstreamConnection] = lambda: UpstreamConnection(self, key, address)  # noqa: E731
        _, conn = await loop.create_connection(factory, host, port, **tls)
        self.connects += 1
        self.open += 1
        return conn

    def release(self, conn: UpstreamConnection, now: float) -> None:
        """Take back ``conn`` after a complete exchange; close it if it can't be reused.

        A connection is kept reading while idle (so that its close is seen,
        and so that the next request's answer is read): an exchange that
        completed while its slow client had reading paused leaves it paused,
        and it is resumed here. One whose request is still being written out
        (the upstream answered before taking the whole body) is closed.
        """
        if conn.lost or conn.close_after or conn.writing_paused:
            self.discard(conn)
            return
        conn.pause_reading(False)
        conns = self.idle.get(conn.key)
        if conns is None:
            conns = self.idle[conn.key] = []
        if len(conns) >= self.max_idle:
            self.discard(conn)
            return
        conn.idle_since = now
        conns.append(conn)

    def discard(self, conn: UpstreamConnection) -> None:
        """Close ``conn`` for good."""
        if not conn.lost:
            conn.close()

    def forget(self, conn: UpstreamConnection) -> None:
        """``conn`` was closed (by either side): count it and drop it from the idle list."""
        self.open -= 1
        conns = self.idle.get(conn.key)
        if conns and conn in conns:
            conns.remove(conn)

    def sweep(self, now: float) -> None:
        """Close connections idle for longer than ``idle_timeout``."""
        limit = now - self.idle_timeout
        for key, conns in list(self.idle.items()):
            if conns and conns[0].idle_since < limit:
                stale = [c for c in conns if c.idle_since < limit]
                conns[:] = [c for c in conns if c.idle_since >= limit]
                for conn in stale:
                    conn.close()
            if not conns:
                del self.idle[key]

    def close(self) -> None:
        for conns in self.idle.values():
            for conn in conns:
                conn.close()
        self.idle.clear()

    def describe(self) -> dict[str, Any]:
        return {
            "open": self.open,
            "idle": sum(len(c) for c in self.idle.values()),
            "connects": self.connects,
            "reuses": self.reuses,
        }
