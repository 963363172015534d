"""The upstream's answer as an exchange receives it: response head, body, end, loss.

:class:`ResponseSide` is the part of :class:`core.proxy.exchange.Exchange`
that implements :class:`core.proxy.pool.Receiver`: the upstream connection
calls it as it parses. A 502/503/504 head may still be retried (nothing was
written to the client yet); any other head is written to the client with
the gateway's framing (``Content-Length`` kept, else chunked for HTTP/1.1,
else until close), its own ``X-Request-ID`` and ``Via``, a ``Date`` when
the upstream sent none, and the body
follows as it comes, collected and written once per read.

A 5xx head marked ``Essaim-Failure: dependency`` (the upstream reports that a
service *it* calls failed) goes to the client as it is: not retried, and not
counted against the upstream (:meth:`Upstream.dependency_failed`).

The phases of an exchange and the reasons a client connection stops reading
are defined here, where both halves of the exchange see them.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from core import log
from core.errors import BadGateway, HTTPProblem
from core.proxy.wire import (
    STATUS_PREFIXES,
    chunk,
    marks_dependency_failure,
    scan_response,
    status_line,
)

if TYPE_CHECKING:
    from core.proxy.contract import Client, Proxy
    from core.proxy.pool import UpstreamConnection
    from core.proxy.router import Plan
    from core.upstream.upstream import Endpoint

logger = log.get("gateway.proxy")

__all__ = [
    "CONNECTING",
    "DONE",
    "NO_BODY",
    "PAUSE_BUFFER",
    "PAUSE_UPSTREAM",
    "QUEUED",
    "STREAMING",
    "TUNNEL",
    "WAITING",
    "ResponseSide",
]

# Phases of an exchange.
QUEUED, CONNECTING, WAITING, STREAMING, TUNNEL, DONE = range(6)

# How the response body goes to the client.
NO_BODY, LENGTH, CHUNKED, UNTIL_CLOSE = range(4)

# Reasons for the client connection to stop reading (see ClientConnection.pause).
PAUSE_BUFFER = 1  # body bytes wait for an upstream connection
PAUSE_UPSTREAM = 2  # the upstream takes the body slower than the client sends it

_CRLF = b"\r\n"
_LAST_CHUNK = b"0\r\n\r\n"
# Via names the protocol the client spoke (HTTP/1.1, else 1.0).
_PROTOCOL = {True: b"1.1 essaim", False: b"1.0 essaim"}
_DATED = re.compile(rb"\r\ndate:", re.IGNORECASE).search
_CLOSE = b"connection: close\r\n"
_KEEP_ALIVE = b"connection: keep-alive\r\n"
_RETRY_STATUSES = frozenset((502, 503, 504))


class ResponseSide:
    """Receiving the upstream's answer; mixed into :class:`~core.proxy.exchange.Exchange`."""

    upstream_eof = False

    # Set by Exchange, which also provides the methods below; declared here
    # (not only for the type checker) so that mypyc lays them out in C.
    out: list[bytes] | None
    resp_mode: int
    client: Client
    proxy: Proxy
    plan: Plan | None
    endpoint: Endpoint | None
    conn: UpstreamConnection | None
    request_id: bytes
    rate_lines: bytes
    phase: int
    status: int
    bytes_out: int
    attempt_open: bool
    close_after: bool
    body_done: bool
    head_only: bool
    http11: bool
    upgrade: bool

    def _may_retry(self, kind: str, status: int = 0) -> bool:
        raise NotImplementedError

    def _retry(self, kind: str) -> None:
        raise NotImplementedError

    def attempt_failed(self, kind: str, problem: HTTPProblem) -> None:
        raise NotImplementedError

    def may_reconnect(self, conn: UpstreamConnection) -> bool:
        raise NotImplementedError

    def reconnect(self) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        raise NotImplementedError

    def _service(self) -> str:
        raise NotImplementedError

    def upstream_head(self, status: int, block: bytes, close: bool) -> None:
        plan = self.plan
        ep = self.endpoint
        assert plan is not None
        assert ep is not None
        upstream = plan.upstream
        self.attempt_open = False
        if status >= 500 and marks_dependency_failure(block):
            upstream.dependency_failed(ep)
            self.proxy.stats.upstream_error(plan.service, "dependency")
        elif status >= 500:
            upstream.failed(ep, "5xx")
            self.proxy.stats.upstream_error(plan.service, "5xx")
            if status in _RETRY_STATUSES and self._may_retry("5xx", status):
                conn = self.conn
                self.conn = None
                if conn is not None:
                    conn.close()
                self._retry("5xx")
                return
        else:
            upstream.succeeded(ep)
        self.status = status
        self.phase = STREAMING
        memo = plan.last_response
        if (
            memo is not None
            and memo[0] == status
            and memo[1] == block
            and self.http11
            and not self.head_only
            and not self.upgrade
        ):
            # The same head as the last response of this route (a static file
            # within the same second, a health check): filtered and framed already.
            _, _, prefix, mode, eof, via_line, dated = memo
            self.resp_mode = mode
            self.upstream_eof = eof
        else:
            prefix, via_line, dated = self._frame(plan, status, block)
        tail = [prefix, b"x-request-id: ", self.request_id, _CRLF, self.rate_lines, via_line]
        if not dated:
            tail += (b"date: ", self.proxy.clock.date(), _CRLF)
        if self.proxy.draining or (self.upgrade and status != 101):
            self.close_after = True
        if status != 101:
            if self.close_after:
                tail.append(_CLOSE)
            elif not self.http11:
                tail.append(_KEEP_ALIVE)
        tail.append(_CRLF)
        if self.out is None:
            self.out = [b"".join(tail)]
        else:
            self.out.append(b"".join(tail))

    def _frame(self, plan: Plan, status: int, block: bytes) -> tuple[bytes, bytes, bool]:
        """The head up to the gateway's own lines, the ``Via`` line, whether it is dated; sets the framing.

        A response without ``Date`` gets the gateway's (RFC 9110 6.6.1: an
        origin with a clock must send one; the gateway has one), except an
        interim or 101 response.

        Remembered on the plan for the next response with the same status and
        head, when nothing about this request changes the framing.
        """
        kept, length, chunked, upgrade, via = scan_response(block, plan.response_drop)
        out = [STATUS_PREFIXES.get(status) or status_line(status)[:-2], kept]
        if plan.response_add:
            out.extend(plan.response_add)
        if status == 101:
            self.resp_mode = NO_BODY
            out.append(b"connection: upgrade\r\nupgrade: " + upgrade + _CRLF)
        elif self.head_only or status == 204 or status == 304:
            self.resp_mode = NO_BODY
        elif length is not None:
            self.resp_mode = LENGTH
        else:
            self.upstream_eof = not chunked
            if self.http11:
                self.resp_mode = CHUNKED
                out.append(b"transfer-encoding: chunked\r\n")
            else:
                self.resp_mode = UNTIL_CLOSE
                self.close_after = True
        prefix = b"".join(out)
        protocol = _PROTOCOL[self.http11]
        via_line = b"via: " + (protocol if via is None else via + b", " + protocol) + _CRLF
        dated = status < 200 or _DATED(block) is not None
        if self.http11 and not self.head_only and not self.upgrade and status != 101:
            plan.last_response = (
                status,
                block,
                prefix,
                self.resp_mode,
                self.upstream_eof,
                via_line,
                dated,
            )
        return prefix, via_line, dated

    def upstream_interim(self, status: int, block: bytes) -> None:
        # 100 Continue was the gateway's to send (Expect is not forwarded); others
        # (103 Early Hints) go on to HTTP/1.1 clients.
        if status == 100 or not self.http11:
            return
        kept = scan_response(block)[0]
        interim = (STATUS_PREFIXES.get(status) or status_line(status)[:-2]) + kept + _CRLF
        if self.out is None:
            self.out = [interim]
        else:
            self.out.append(interim)

    def upstream_body(self, data: bytes) -> None:
        out = self.out  # made by upstream_head, which comes first
        if out is not None:
            if self.resp_mode == CHUNKED:
                out.append(chunk(data))
            elif self.resp_mode != NO_BODY:
                out.append(data)

    def upstream_flush(self) -> None:
        out = self.out
        if out:
            # One write of joined bytes: uvloop's writelines goes through a
            # queued uv_write (a loop iteration and a completion callback),
            # write tries the socket at once.
            data = out[0] if len(out) == 1 else b"".join(out)
            self.bytes_out += len(data)
            self.client.transport.write(data)
            out.clear()
            if self.phase == STREAMING:
                self.client.deadline = (
                    self.proxy.loop.time() + self.proxy.limits.stream_idle_timeout
                )

    def upstream_done(self, conn: UpstreamConnection) -> None:
        out = self.out
        if out is not None and self.resp_mode == CHUNKED:
            out.append(_LAST_CHUNK)
        if out:
            data = out[0] if len(out) == 1 else b"".join(out)
            self.bytes_out += len(data)
            self.client.transport.write(data)
            out.clear()
        self.conn = None
        if self.body_done:
            self.proxy.pool.release(conn, self.proxy.loop.time())
        else:
            # The upstream answered before the whole request body was sent: the
            # connection's framing is unknown from here, and the client's too.
            conn.close()
            self.close_after = True
        self.finish()

    def upstream_lost(self, conn: UpstreamConnection, reason: str) -> None:
        self.conn = None
        if self.phase == WAITING:
            if self.may_reconnect(conn):
                self.reconnect()
                return
            self.attempt_failed(
                "reset",
                BadGateway(f"{self._service()} closed the connection before answering"),
            )
        elif self.phase == STREAMING:
            if self.upstream_eof:
                # A body delimited by the connection's end: complete.
                if self.resp_mode == CHUNKED:
                    self.client.transport.write(_LAST_CHUNK)
                self.finish()
                return
            assert self.plan is not None
            self.proxy.stats.upstream_error(self.plan.service, "reset")
            logger.info(
                "%s closed the connection mid-response (request %s)",
                self._service(),
                self.request_id.decode(),
            )
            self.close_after = True
            self.client.transport.abort()
            self.finish()
        elif self.phase == TUNNEL:
            self.close_after = True
            self.client.transport.close()
            self.finish()

    def upstream_upgraded(self, conn: UpstreamConnection, rest: bytes) -> None:
        self.phase = TUNNEL
        self.client.tunnel_to(conn, rest)

    def upstream_data(self, data: bytes) -> None:
        self.bytes_out += len(data)
        self.client.transport.write(data)
        self.client.deadline = self.proxy.loop.time() + self.proxy.limits.stream_idle_timeout

    def pause_client(self, paused: bool) -> None:
        self.client.pause(PAUSE_UPSTREAM, paused)
