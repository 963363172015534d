"""The client-facing side: one :class:`ClientConnection` per TCP connection, and :class:`ProxyServer`.

A client connection parses requests with httptools as bytes arrive and makes
an :class:`~core.proxy.exchange.Exchange` per request head. Pipelined
requests queue behind the current one and are answered in order (reading
pauses past ``max_pipeline`` queued requests). Limits, all answered as
problem details: a head over ``max_head`` bytes is 431, a malformed request
400, a head not complete within ``head_timeout`` 408; then the connection
closes, lingering to read what the client still sends so that it sees the
answer rather than a reset.

:class:`ProxyServer` is the protocol factory and owns what the connections
share: the router, the pool, the counters, the deadline sweep and the drain
on shutdown. Deadlines are not timers: each connection has one ``deadline``
(the earliest moment something must have happened) and a sweep every
``tick`` seconds acts on the expired ones, which costs a float store per
request instead of a timer handle.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
from typing import TYPE_CHECKING, Any

import httptools

from core import log
from core.errors import BadRequest, HeaderTooLarge, HTTPProblem, InternalError, RequestTimeout
from core.proxy.access import AccessLog
from core.proxy.bff import SessionEndpoints
from core.proxy.contract import Limits
from core.proxy.exchange import DONE, PAUSE_BUFFER, PAUSE_UPSTREAM, Exchange
from core.proxy.head import Heads
from core.proxy.pool import Pool, UpstreamConnection
from core.proxy.stats import Stats
from core.proxy.wire import Clock, RequestIds, TraceIds, problem_response
from core.telemetry.spans import Recorder
from core.upstream.upstream import Endpoint

if TYPE_CHECKING:
    from core.proxy.router import Router

logger = log.get("gateway.proxy")

__all__ = ["ClientConnection", "Limits", "ProxyServer"]

# More reasons to stop reading from a client (a bit each; see core.proxy.exchange).
_PIPELINE = 4  # too many requests queued
_UPGRADE = 8  # an upgrade is being negotiated
_LINGER_SECONDS = 2.0
_FRESH_GRACE_SECONDS = 1.0


class _HeadTooLarge(Exception):
    pass


def _version_refused(version: str) -> HTTPProblem:
    if version.startswith("0."):
        return BadRequest("a request line must end with HTTP/1.1 or HTTP/1.0 (HTTP/0.9 is refused)")
    return HTTPProblem(f"HTTP/{version} is not supported: use HTTP/1.1", status=505)


class ClientConnection(asyncio.Protocol):
    """One client connection: parsing, limits, pipelining, flow control."""

    __slots__ = (
        "began_here",
        "closing",
        "completed",
        "current",
        "deadline",
        "forwarded_for",
        "headers",
        "heads",
        "http11",
        "in_head",
        "parser",
        "partial",
        "paused",
        "peer",
        "proxy",
        "queue",
        "read_size",
        "reading",
        "repeat_args",
        "repeat_read",
        "rest",
        "simple",
        "too_large",
        "transport",
        "tunnel",
        "url",
        "write_paused",
    )

    def __init__(self, proxy: ProxyServer) -> None:
        self.proxy = proxy
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.peer = b"unknown"
        self.forwarded_for = b""
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.in_head = False
        self.began_here = False
        self.http11: bool | None = None
        self.heads: Heads = None  # type: ignore[assignment]
        self.completed = 0
        self.simple: tuple[bytes, bytes, list[tuple[bytes, bytes]], bool, bool] | None = None
        self.repeat_read = b""
        self.repeat_args: tuple[bytes, bytes, list[tuple[bytes, bytes]], bool, bool] = (
            b"",
            b"",
            [],
            False,
            False,
        )
        self.partial = 0
        self.read_size = 0
        self.too_large = False
        self.current: Exchange | None = None
        self.reading: Exchange | None = None
        # Requests parsed behind the current one; a problem is a refused request.
        self.queue: collections.deque[Exchange | HTTPProblem] = collections.deque()
        self.deadline = math.inf
        self.paused = 0
        self.write_paused = False
        self.closing = False
        self.tunnel: UpstreamConnection | None = None
        self.rest = b""

    # -- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self.peer = str(peer[0]).encode()
        self.forwarded_for = b"x-forwarded-for: " + self.peer + b"\r\n"
        self.heads = Heads(
            self.proxy.router,
            peer=self.peer,
            forwarded_for=self.forwarded_for,
            max_body=self.proxy.limits.max_body,
        )
        proxy = self.proxy
        proxy.connections.add(self)
        self.deadline = proxy.loop.time() + proxy.limits.head_timeout

    def connection_lost(self, exc: Exception | None) -> None:
        proxy = self.proxy
        proxy.connections.discard(self)
        if proxy.draining and not proxy.connections:
            proxy.drained.set()
        self.closing = True
        if self.tunnel is not None:
            self.tunnel.close()
        current = self.current
        if current is not None:
            current.client_lost()
        while self.queue:
            queued = self.queue.popleft()
            if isinstance(queued, Exchange):
                queued.client_lost()

    def data_received(self, data: bytes) -> None:
        tunnel = self.tunnel
        if tunnel is not None:
            tunnel.write(data)
            self.deadline = self.proxy.loop.time() + self.proxy.limits.stream_idle_timeout
            return
        if self.closing:
            return  # lingering: read and drop
        at_boundary = not self.in_head and self.reading is None
        if at_boundary and data == self.repeat_read:
            self._repeat()
            return
        self.read_size = len(data)
        self.began_here = False
        self.completed = 0
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.rest = data[exc.args[0] :]
            self.pause(_UPGRADE, True)
        except httptools.HttpParserError as exc:
            self._malformed(exc)
        else:
            if self.in_head:
                # Bytes of an unfinished head. When it began in this read, its
                # share is unknown and counted from the next read on: the
                # bound is then max_head plus one read.
                self.partial = 0 if self.began_here else self.partial + len(data)
                if self.partial > self.proxy.limits.max_head:
                    self.too_large = True
                    self._malformed(None)
            elif at_boundary and self.completed == 1 and self.simple is not None:
                # This read was exactly one request without a body: the same
                # bytes again will mean the same request (see _repeat).
                self.repeat_read = data
                self.repeat_args = self.simple
            elif self.repeat_read:
                self.repeat_read = b""
        current = self.current
        if current is not None and not current.started:
            current.start()

    def eof_received(self) -> bool | None:
        # An HTTP client that closes its side has gone (nginx's view too: 499):
        # the transport closes and the exchange in progress is abandoned.
        return None

    def pause_writing(self) -> None:
        self.write_paused = True
        conn = self._upstream()
        if conn is not None:
            conn.pause_reading(True)

    def resume_writing(self) -> None:
        self.write_paused = False
        conn = self._upstream()
        if conn is not None:
            conn.pause_reading(False)

    def _upstream(self) -> UpstreamConnection | None:
        if self.tunnel is not None:
            return self.tunnel
        current = self.current
        return current.conn if current is not None else None

    # -- httptools callbacks ---------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        # Every request has a URL: its first piece begins the head (one callback
        # less than on_message_begin would cost).
        if not self.in_head:
            self.url = url
            if self.headers:
                self.headers = []  # the last request's trailers
            self.in_head = True
            self.began_here = True
            self.partial = 0
            if self.current is None:
                self.deadline = self.proxy.loop.time() + self.proxy.limits.head_timeout
        else:
            self.url += url
        if len(self.url) > self.proxy.limits.max_head:
            self.too_large = True
            raise _HeadTooLarge

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.in_head = False
        limits = self.proxy.limits
        headers = self.headers
        if self.partial + self.read_size > limits.max_head:
            size = len(self.url) + sum(len(n) + len(v) + 4 for n, v in headers)
            if size + self.partial > limits.max_head:
                self.too_large = True
                raise _HeadTooLarge
        parser = self.parser
        http11 = self.http11
        keep_alive = parser.should_keep_alive()
        if http11 is None or not keep_alive:
            # The version is read from the first request (clients don't change
            # versions mid-connection) and from any that ends the connection:
            # HTTP/0.9 has no keep-alive, so none passes unseen, and reading
            # it costs more than a whole route match.
            version = parser.get_http_version()
            if version != "1.1" and version != "1.0":
                raise _version_refused(version)
            if http11 is None:
                http11 = self.http11 = self.heads.http11 = version == "1.1"
        method = parser.get_method()
        url = self.url
        upgrade = parser.should_upgrade()
        exchange = Exchange(self, method, url, headers, keep_alive, http11, upgrade)
        self.simple = (
            (method, url, headers, keep_alive, http11)
            if exchange.body_done and not upgrade and exchange.problem is None
            else None
        )
        self.headers = []  # for the next request (trailers land here and are dropped)
        self.reading = exchange
        if self.current is None:
            self.current = exchange
        else:
            self.queue.append(exchange)
            if len(self.queue) >= limits.max_pipeline:
                self.pause(_PIPELINE, True)

    def on_body(self, body: bytes) -> None:
        reading = self.reading
        if reading is not None:
            reading.request_body(body)

    def on_message_complete(self) -> None:
        self.completed += 1
        reading = self.reading
        self.reading = None
        if reading is not None and not reading.body_done:
            reading.request_end()

    def _repeat(self) -> None:
        """The client sent again, byte for byte, a read that was one request without a body.

        llhttp parsed those bytes before and ended at a message boundary, as
        it is now: the same bytes mean the same request, so the request is
        made from what was kept, without parsing.
        """
        method, url, headers, keep_alive, http11 = self.repeat_args
        exchange = Exchange(self, method, url, headers, keep_alive, http11, False)
        if self.current is None:
            self.current = exchange
            exchange.start()
        else:
            self.queue.append(exchange)
            if len(self.queue) >= self.proxy.limits.max_pipeline:
                self.pause(_PIPELINE, True)

    # -- used by exchanges ------------------------------------------------------------

    def pause(self, reason: int, paused: bool) -> None:
        """Stop (or resume) reading from the client for ``reason``; reads resume when no reason is left."""
        before = self.paused
        after = before | reason if paused else before & ~reason
        self.paused = after
        if self.closing:
            return
        if after and not before:
            self.transport.pause_reading()
        elif before and not after:
            self.transport.resume_reading()

    def exchange_done(self, exchange: Exchange, close: bool) -> None:
        """``exchange`` has answered: close, or go on with the next request or wait for one."""
        if exchange is not self.current:
            return
        self.current = None
        if self.closing:
            return
        if close or (self.proxy.draining and not self.queue):
            self._close(linger=close and not exchange.body_done)
            return
        # A reason the finished exchange had to stop reading from the client
        # (its body waiting for, or backing up on, the upstream) is gone with it.
        if self.paused & (PAUSE_BUFFER | PAUSE_UPSTREAM):
            self.pause(PAUSE_BUFFER | PAUSE_UPSTREAM, False)
        queue = self.queue
        if queue:
            nxt = queue.popleft()
            if isinstance(nxt, HTTPProblem):
                self._answer(nxt)
                return
            if self.paused & _PIPELINE and len(queue) < self.proxy.limits.max_pipeline:
                self.pause(_PIPELINE, False)
            self.current = nxt
            nxt.start()
        else:
            limits = self.proxy.limits
            wait = limits.head_timeout if self.in_head else limits.keepalive_timeout
            self.deadline = self.proxy.loop.time() + wait

    def tunnel_to(self, conn: UpstreamConnection, rest: bytes) -> None:
        """The upstream switched protocols: copy bytes both ways from now on."""
        self.tunnel = conn
        if rest:
            self.transport.write(rest)
        if self.rest:
            conn.write(self.rest)
            self.rest = b""
        self.deadline = self.proxy.loop.time() + self.proxy.limits.stream_idle_timeout
        self.pause(_UPGRADE, False)

    def expired(self, now: float) -> None:
        """The deadline passed: time the current exchange out, or the head, or close idle."""
        if self.closing:
            self.transport.abort()
            return
        current = self.current
        if current is not None and current.phase != DONE:
            current.expired(now)
        elif self.in_head:
            self._answer(RequestTimeout("the request head did not arrive in time"))
        else:
            self.closing = True
            self.transport.close()

    # -- errors ----------------------------------------------------------------------

    def _malformed(self, exc: Exception | None) -> None:
        cause = exc.__context__ if exc is not None else None
        if self.too_large:
            limit = self.proxy.limits.max_head
            problem: HTTPProblem = HeaderTooLarge(f"the request head is over {limit} bytes")
        elif isinstance(cause, HTTPProblem):  # refused by a callback (the HTTP version)
            problem = cause
        elif cause is not None and not isinstance(cause, _HeadTooLarge):
            logger.error("handling a request head failed", exc_info=cause)
            problem = InternalError("the gateway failed to handle this request")
        else:
            problem = BadRequest(f"malformed request: {exc}")
        self.in_head = False
        self.pause(PAUSE_BUFFER, True)  # nothing more is read but to linger
        if self.current is None:
            self._answer(problem)
        else:
            # Answer in order: after the requests already parsed.
            self.queue.append(problem)

    def _answer(self, problem: HTTPProblem) -> None:
        """Answer ``problem`` on a connection with no request in progress, then close."""
        self.current = None
        self.transport.write(
            problem_response(
                problem,
                instance="",
                request_id=self.proxy.ids.new(),
                date=self.proxy.clock.date(),
                close=True,
                http11=self.http11 is not False,
            )
        )
        self.proxy.stats.request("unmatched", "unmatched", problem.status, 0.0)
        self._close(linger=True)

    def _close(self, *, linger: bool) -> None:
        """Close after what was written; with ``linger``, first read and drop input for a while.

        Closing with unread input makes the kernel send a reset, which can
        destroy the answer before the client reads it.
        """
        self.closing = True
        transport = self.transport
        if linger and transport.can_write_eof():
            self.paused = 0
            with contextlib.suppress(OSError, RuntimeError):
                transport.write_eof()
                transport.resume_reading()
            self.deadline = self.proxy.loop.time() + _LINGER_SECONDS
        else:
            transport.close()


class ProxyServer:
    """The traffic listener's protocol factory and the state its connections share.

    Call it to get a :class:`ClientConnection`. :meth:`start` starts the
    deadline sweep; :meth:`drain` (on shutdown, after the listener stopped
    accepting) closes idle keep-alive connections, gives those accepted but
    without a request yet a second to send it, lets exchanges in flight
    finish within a bound, then cuts the rest.

    ``health_path`` (bytes, empty for none) is answered by the gateway itself
    for load balancers in front of it: 200 ``{"status": "UP"}`` while it
    serves, 503 ``{"status": "DRAINING"}`` once it is stopping. It must sit
    under ``/-/``, a prefix no service name and no route can take, so it
    never shadows a route.
    """

    def __init__(
        self,
        router: Router,
        limits: Limits | None = None,
        *,
        pool: Pool | None = None,
        stats: Stats | None = None,
        tick: float = 0.05,
        health_path: bytes = b"/-/health",
    ) -> None:
        if health_path and not health_path.startswith(b"/-/"):
            raise ValueError(f"the health path must start with '/-/', not {health_path!r}")
        self.health_path = health_path
        self.router = router
        self.limits = limits or Limits()
        self.pool = pool or Pool()
        self.stats = stats or Stats()
        self.ids = RequestIds()
        self.traces = TraceIds()
        #: The access log, when one is kept (``gateway.py`` sets it).
        self.access: AccessLog | None = None
        #: Where each request's span goes when spans are exported (``gateway.py`` sets it).
        self.spans: Recorder | None = None
        #: The session endpoints (``/-/session``), when sessions are on (``gateway.py`` sets them).
        self.bff: SessionEndpoints | None = None
        self.clock = Clock()
        self.tick = tick
        self.connections: set[ClientConnection] = set()
        self.active = 0
        self.draining = False
        self.drained = asyncio.Event()
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._host_lines: dict[Endpoint, bytes] = {}
        self._sweeper: asyncio.Task[None] | None = None

    def __call__(self) -> ClientConnection:
        return ClientConnection(self)

    def host_line(self, ep: Endpoint) -> bytes:
        """``host: <host[:port]>\\r\\n`` for requests to ``ep`` (the port left out when default)."""
        line = self._host_lines.get(ep)
        if line is None:
            host = f"[{ep.host}]" if ":" in ep.host else ep.host
            default = 443 if ep.scheme == "https" else 80
            value = host if ep.port == default else f"{host}:{ep.port}"
            line = self._host_lines[ep] = f"host: {value}\r\n".encode("latin-1")
            if len(self._host_lines) > 10_000:
                self._host_lines.clear()
        return line

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._sweeper = asyncio.create_task(self._sweep(), name="gateway:deadlines")

    async def _sweep(self) -> None:
        loop = self.loop
        next_pool_sweep = 0.0
        while True:
            await asyncio.sleep(self.tick)
            now = loop.time()
            for conn in [c for c in self.connections if c.deadline <= now]:
                try:
                    conn.expired(now)
                except Exception:
                    logger.exception("timing out a client connection failed")
                    conn.transport.abort()
            if now >= next_pool_sweep:
                self.pool.sweep(now)
                next_pool_sweep = now + 1.0
            if self.access is not None:
                self.access.flush()

    async def drain(self, timeout: float) -> None:
        """Let requests in flight finish within ``timeout`` seconds, then close everything."""
        self.draining = True
        grace = self.loop.time() + _FRESH_GRACE_SECONDS
        for conn in list(self.connections):
            if conn.current is None and not conn.in_head and conn.tunnel is None:
                if conn.http11 is None:
                    # Accepted, first request not read yet: it is likely on its
                    # way (the listener stopped a moment ago), and closing now
                    # would fail a request nobody sent twice. It is answered,
                    # then closed; one that sends nothing is closed by the sweep.
                    conn.deadline = min(conn.deadline, grace)
                    continue
                conn.closing = True
                conn.transport.close()
        if self.connections:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.drained.wait(), timeout)
        for conn in list(self.connections):
            conn.transport.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        self.pool.close()
        if self.access is not None:
            self.access.flush()

    def describe(self) -> dict[str, Any]:
        return {
            "connections": len(self.connections),
            "active": self.active,
            "pool": self.pool.describe(),
            "draining": self.draining,
        }
