"""One proxied request, from its parsed head to the last byte of its response.

An :class:`Exchange` is made by the client connection when a request head is
parsed, and started when it is the oldest unanswered request of its
connection (pipelining). It then runs as callbacks, never as a task: pick an
endpoint (:meth:`core.upstream.upstream.Upstream.choose`), take a breaker permit, take
an idle pooled connection or open one, write the request head (one
``bytes.join``) with whatever body has arrived, stream the rest of the body,
and stream the response back as it is parsed.

Retries follow :meth:`core.upstream.upstream.Upstream.retry_allowed`: a connect
failure on any method; a reset, a timeout, or a 502/503/504 only for an
idempotent method, only before the response head was written to the client,
and only while the request body can be sent again (no body, or one that fit
in the replay buffer). Each retry goes to an endpoint not tried yet while
one exists.

Every ``begin`` on the upstream is closed by exactly one of ``succeeded``
(a non-5xx head), ``failed`` (connect, reset, timeout, 5xx) or ``released``
(the client left, or the request was refused for the client's fault).
"""

from __future__ import annotations

import asyncio
import math
import time
from time import perf_counter
from typing import TYPE_CHECKING

from core import log
from core.errors import (
    BadGateway,
    BadRequest,
    GatewayTimeout,
    HTTPProblem,
    InternalError,
    PayloadTooLarge,
    RequestTimeout,
    ServiceUnavailable,
)
from core.proxy.head import RequestHead
from core.proxy.pool import UpstreamConnection
from core.proxy.response import (
    CONNECTING,
    DONE,
    NO_BODY,
    PAUSE_BUFFER,
    PAUSE_UPSTREAM,
    QUEUED,
    STREAMING,
    TUNNEL,
    WAITING,
    ResponseSide,
)
from core.proxy.span import exchange_span
from core.proxy.wire import (
    IDEMPOTENT,
    STATUS_LINES,
    chunk,
    header_value,
    problem_response,
    scan_request,
)
from core.security.relay import SessionPending
from core.security.tokens import UnknownKeyError
from core.upstream.upstream import Endpoint

if TYPE_CHECKING:
    from core.proxy.contract import Client
    from core.proxy.router import Plan
    from core.telemetry.spans import Recorder

logger = log.get("gateway.proxy")

__all__ = ["DONE", "PAUSE_BUFFER", "PAUSE_UPSTREAM", "Exchange"]

_LAST_CHUNK = b"0\r\n\r\n"
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_TRACEPARENT = b"traceparent: 00-"
_CRLF = b"\r\n"
_PATH_END = (b"", b"?")
_LOCAL_PREFIX = b"/-/"
_UP_BODY = b'{"status":"UP"}'
_DRAINING_BODY = b'{"status":"DRAINING"}'
_HEALTH_METHODS = HTTPProblem(
    "the health path answers GET and HEAD", status=405, headers={"Allow": "GET, HEAD"}
)


class Exchange(ResponseSide):
    """The state of one request through the gateway; see the module docstring.

    What comes back from the upstream is handled by the methods of
    :class:`~core.proxy.response.ResponseSide`.
    """

    # Attributes every request sets live in slots (a store costs a few
    # instructions); the rest, set on unusual paths only, default on the class
    # and land in the instance's dict when set. One dict for all of them costs
    # more: past 30 names CPython stops sharing keys between instances.
    __slots__ = (
        "attempt_open",
        "attempts",
        "body_done",
        "bytes_out",
        "chunked",
        "client",
        "close_after",
        "conn",
        "continue_",
        "endpoint",
        "head",
        "head_only",
        "headers",
        "http11",
        "keep_alive",
        "method",
        "method_name",
        "out",
        "path",
        "phase",
        "plan",
        "problem",
        "proxy",
        "request_id",
        "request_line",
        "resp_mode",
        "sent",
        "span_id",
        "started",
        "started_at",
        "status",
        "t0",
        "total_deadline",
        "trace_id",
        "tried",
        "upgrade",
    )

    problem: HTTPProblem | None
    path: str
    plan: Plan | None
    head: RequestHead | None
    endpoint: Endpoint | None
    conn: UpstreamConnection | None
    tried: tuple[str, ...]

    failure: HTTPProblem | None = None
    connecting: asyncio.Task[None] | None = None
    unsent: list[bytes] | None = None
    unsent_size = 0
    body_parts: list[bytes] | None = None
    body_kept = 0
    body_size = 0
    # Set by the route's guard: identity lines for upstream, the user id, rate
    # limit response lines, and whether start() must first await the guard.
    identity = b""
    user_id: str | None = None
    rate_lines = b""
    gated = False
    # The gateway's own health path: answered here, never routed.
    local = False
    # The gateway's session endpoints (core.proxy.bff): the body read here,
    # then answered by a task; never routed.
    session_local = False
    local_body: list[bytes] | None = None
    local_task: asyncio.Task[None] | None = None
    # The plan of the route whose policy refused the request (401, 403): its
    # answer is counted under that route, though nothing is proxied.
    refused_by: Plan | None = None
    # Why the gateway answered itself (a problem's detail), for the access log.
    answered_problem: str | None = None
    # The request was sent again on a new connection after a reused one was
    # lost before answering (the keep-alive race): at most once per request.
    reconnected = False

    def __init__(
        self,
        client: Client,
        method: bytes,
        url: bytes,
        headers: list[tuple[bytes, bytes]],
        keep_alive: bool,
        http11: bool,
        upgrade: bool,
    ) -> None:
        proxy = client.proxy
        self.client = client
        self.proxy = proxy
        # The loop's clock (uvloop: milliseconds, read once per loop iteration)
        # is for deadlines; latency is measured with perf_counter.
        self.started_at = proxy.loop.time()
        self.t0 = perf_counter()
        self.method = method
        self.headers = headers
        self.keep_alive = keep_alive
        self.close_after = not keep_alive
        self.http11 = http11
        self.upgrade = upgrade
        self.head_only = method == b"HEAD"
        self.problem = None
        self.started = False
        self.phase = QUEUED
        self.status = 0
        self.bytes_out = 0
        self.total_deadline = math.inf
        self.attempt_open = False
        self.endpoint = None
        self.attempts = 0
        self.tried = ()
        self.conn = None
        self.sent = False
        self.resp_mode = NO_BODY
        self.out = None
        self.body_done = False
        self.chunked = False
        self.continue_ = False
        # The gateway's own endpoints all live under /-/ (no route may use it):
        # one slice compare is what every other request pays for them.
        if url[:3] == _LOCAL_PREFIX:
            health = proxy.health_path
            if (
                health
                and url.startswith(health)
                and url[len(health) : len(health) + 1] in _PATH_END
            ):
                self._refused(url, headers, _HEALTH_METHODS)
                self.local = True
                return
            bff = proxy.bff
            if bff is not None and bff.owns(url):
                self._refused(url, headers, None)
                self.session_local = True
                self.local_body = []
                if self.problem is None:
                    self.problem = bff.refuse_early(method, self.path, headers)
                return
        try:
            head, request_line, path, method_name = client.heads.prepare(
                method, url, headers, upgrade
            )
        except HTTPProblem as problem:
            self._refused(url, headers, problem)
            return
        guard = head.plan.guard
        if guard is not None:
            # Checked on every request, a reused head included (tokens expire).
            try:
                self.identity, self.user_id = guard.identify(headers, method)
            except (UnknownKeyError, SessionPending):
                # The key set must be refreshed, or the session read: start() awaits it.
                self.gated = True
            except HTTPProblem as problem:
                self._refused(url, headers, problem)
                self.refused_by = head.plan
                return
            if guard.limiter is not None:
                decision = None if self.gated else guard.admit_now(self.user_id, client.peer)
                if decision is None:
                    self.gated = True  # start() awaits Redis' decision
                elif decision.allowed:
                    self.rate_lines = guard.rate_headers(decision)
                else:
                    self.problem = guard.limiter.problem(decision)
        self.head = head
        self.request_line = request_line
        self.plan = head.plan
        self.path = path
        self.method_name = method_name
        self.request_id = proxy.ids.new() if head.client_id is None else head.client_id
        # The gateway's span of the client's trace (or of a trace it starts,
        # sampled or not as --otel-sample says: flags 00 go upstream if not).
        traces = proxy.traces
        if head.trace_id is None:
            self.trace_id = traces.trace()
            if not traces.sampled:
                self.head = head.unsampled()
        else:
            self.trace_id = head.trace_id
        self.span_id = traces.span()
        if head.chunked:
            self.chunked = True
        elif not head.length:
            self.body_done = True
        if head.continue_:
            self.continue_ = True

    def _refused(
        self, url: bytes, headers: list[tuple[bytes, bytes]], problem: HTTPProblem | None
    ) -> None:
        """Set up to answer ``problem``: enough of the head for the answer and the framing."""
        self.head = None
        self.plan = None
        self.request_line = b""
        try:
            _, _, length, chunked, _, rid, _, _, _, _ = scan_request(headers)
        except BadRequest:  # two Host lines: the 400 closes the connection anyway
            length, chunked, rid = None, False, None
        query_at = url.find(b"?")
        self.path = (url if query_at < 0 else url[:query_at]).decode("latin-1")
        self.method_name = self.method.decode("ascii", "replace")
        self.request_id = self.proxy.ids.keep_or_new(rid)
        self.trace_id = self.span_id = b""
        if chunked:
            self.chunked = True
        elif length is None or length.strip() == b"0":
            self.body_done = True
        self.problem = problem

    def refuse(self, problem: HTTPProblem) -> None:
        """Answer ``problem`` instead of proxying (decided before any upstream is involved)."""
        self.problem = problem

    # -- starting ---------------------------------------------------------------------------

    def start(self) -> None:
        """Begin: the exchange is now the oldest unanswered request of its connection."""
        self.started = True
        self.proxy.active += 1
        if self.local:
            self.respond_health()
            return
        if self.session_local:
            if self.problem is not None:
                self.respond_problem(self.problem)
            elif self.body_done:
                self._serve_local()
            else:
                if header_value(self.headers, b"expect").lower() == b"100-continue":
                    self.client.transport.write(_CONTINUE)
                self.client.deadline = self.proxy.loop.time() + self.proxy.limits.body_timeout
            return
        if self.problem is not None:
            self.respond_problem(self.problem)
            return
        if self.gated:
            self.gated = False
            self.proxy.loop.create_task(self._guarded_start())
            return
        self._go()

    async def _guarded_start(self) -> None:
        """Await the route's guard (a key set refresh, the rate limit), then go or refuse."""
        plan = self.plan
        assert plan is not None
        assert plan.guard is not None
        guard = plan.guard
        try:
            if guard.policy.public is False and self.user_id is None:
                self.identity, self.user_id = await guard.identify_async(self.headers, self.method)
            if guard.limiter is not None:
                decision = await guard.admit(self.user_id, self.client.peer.decode("latin-1"))
                if not decision.allowed:
                    if self.phase != DONE:
                        self.respond_problem(guard.limiter.problem(decision))
                    return
                self.rate_lines = guard.rate_headers(decision)
        except HTTPProblem as problem:
            if self.phase != DONE:
                self.respond_problem(problem)
            return
        if self.phase != DONE:
            self._go()

    def _go(self) -> None:
        plan = self.plan
        assert plan is not None
        if self.continue_:
            self.client.transport.write(_CONTINUE)
        plan.upstream.budget.deposit()
        self.total_deadline = self.started_at + plan.total_timeout
        self.attempt()

    def attempt(self) -> None:
        """One try: choose an endpoint, take a permit, then a pooled or new connection."""
        plan = self.plan
        assert plan is not None
        upstream = plan.upstream
        ep = upstream.choose(self.tried)
        if ep is None:
            if self.failure is None:
                self.failure = ServiceUnavailable(
                    f"no instance of {plan.service!r} is available", headers={"Retry-After": "1"}
                )
            self.respond_problem(self.failure)
            return
        if not upstream.breaker.try_acquire():
            if self.failure is None:
                wait = max(1, math.ceil(upstream.breaker.retry_after()))
                self.failure = ServiceUnavailable(
                    f"the circuit breaker of {plan.service!r} is open",
                    headers={"Retry-After": str(wait)},
                )
            self.respond_problem(self.failure)
            return
        upstream.begin(ep)
        self.attempt_open = True
        self.endpoint = ep
        self.attempts += 1
        self.tried += (ep.key,)
        conn = None if self.upgrade else self.proxy.pool.acquire(ep)
        if conn is not None:
            self.attach(conn)
            return
        self._open(ep)

    def _open(self, ep: Endpoint) -> None:
        """Open a new connection to ``ep`` for the current attempt (bounded by the connect timeout)."""
        assert self.plan is not None
        self.phase = CONNECTING
        self.client.deadline = min(
            self.proxy.loop.time() + self.plan.connect_timeout, self.total_deadline
        )
        self.connecting = self.proxy.loop.create_task(self._connect(ep))

    async def _connect(self, ep: Endpoint) -> None:
        try:
            conn = await self.proxy.pool.connect(ep, (ep.host, ep.port, ep.scheme))
        except OSError as exc:
            self.connecting = None
            reason = exc.strerror or str(exc) or type(exc).__name__
            self.attempt_failed(
                "connect", BadGateway(f"cannot connect to {self._service()}: {reason}")
            )
            return
        except Exception as exc:  # a bad address, a TLS setup error: still a connect failure
            self.connecting = None
            logger.warning("connecting to %s failed: %r", self._service(), exc)
            self.attempt_failed("connect", BadGateway(f"cannot connect to {self._service()}"))
            return
        self.connecting = None
        if self.phase != CONNECTING:  # pragma: no cover - the task is cancelled first
            self.proxy.pool.release(conn, self.proxy.loop.time())
            return
        self.attach(conn)

    def attach(self, conn: UpstreamConnection) -> None:
        """Write the request head and the body received so far on ``conn``."""
        assert self.endpoint is not None
        self.conn = conn
        self.phase = WAITING
        head = self.head
        assert head is not None  # an exchange with no head was refused, never attached
        data = [
            self.request_line,
            self.proxy.host_line(self.endpoint),
            _TRACEPARENT,
            self.trace_id,
            b"-",
            self.span_id,
            b"-",
            head.trace_flags,
            _CRLF,
            self.identity,
            head.before_id,
            self.request_id,
            head.after_id,
        ]
        if self.unsent:
            data.extend(self.unsent)
            self.unsent = None
            self.unsent_size = 0
            self.client.pause(PAUSE_BUFFER, False)
        self.sent = True
        conn.send(self, data, self.head_only)
        client = self.client
        if client.write_paused:
            conn.pause_reading(True)
        if self.body_done:
            deadline = self.proxy.loop.time() + self.plan.per_try_timeout  # type: ignore[union-attr]
            total = self.total_deadline
            client.deadline = deadline if deadline < total else total
        else:
            client.deadline = self.proxy.loop.time() + self.proxy.limits.body_timeout

    def _waiting_deadline(self) -> None:
        plan = self.plan
        assert plan is not None
        now = self.proxy.loop.time()
        if self.body_done:
            self.client.deadline = min(now + plan.per_try_timeout, self.total_deadline)
        else:
            self.client.deadline = now + self.proxy.limits.body_timeout

    # -- the request body, from the client connection ----------------------------------------

    def request_body(self, data: bytes) -> None:
        if self.phase == DONE:
            return
        if self.local_body is not None:
            self._local_body(data)
            return
        self.body_size += len(data)
        if self.body_size > self.proxy.limits.max_body:
            self.body_too_large()
            return
        self._forward(chunk(data) if self.chunked else data)

    def request_end(self) -> None:
        self.body_done = True
        if self.phase == DONE:
            return
        if self.session_local:
            if self.started and self.problem is None and self.local_task is None:
                self._serve_local()
            return
        if self.chunked:
            self._forward(_LAST_CHUNK)
        if self.phase == WAITING:
            self._waiting_deadline()

    def _forward(self, piece: bytes) -> None:
        # Kept for a retry while the body fits in the replay buffer; past it,
        # body_kept says that something was dropped.
        kept = self.body_kept = self.body_kept + len(piece)
        if kept <= self.proxy.limits.replay_buffer:
            if self.body_parts is None:
                self.body_parts = [piece]
            else:
                self.body_parts.append(piece)
        else:
            self.body_parts = None
        conn = self.conn
        if conn is not None and (self.phase == WAITING or self.phase == STREAMING):
            conn.write(piece)
            if self.phase == WAITING and not self.body_done:
                self.client.deadline = self.proxy.loop.time() + self.proxy.limits.body_timeout
        elif self.phase != DONE:
            if self.unsent is None:
                self.unsent = [piece]
            else:
                self.unsent.append(piece)
            self.unsent_size += len(piece)
            if self.unsent_size > self.proxy.limits.replay_buffer:
                self.client.pause(PAUSE_BUFFER, True)

    def body_too_large(self) -> None:
        limit = self.proxy.limits.max_body
        problem = PayloadTooLarge(f"the request body is over the limit of {limit} bytes")
        if self.phase == QUEUED:
            self.refuse(problem)
            self.body_parts = None
            self.unsent = None
            return
        self._abandon_attempt()
        self.respond_problem(problem)

    # -- failures and retries ---------------------------------------------------------------

    def _may_retry(self, kind: str, status: int = 0) -> bool:
        plan = self.plan
        assert plan is not None
        if kind != "connect" and self.sent and self.body_kept > self.proxy.limits.replay_buffer:
            return False  # the body went out and was not kept: it can't be sent again
        if self.proxy.loop.time() >= self.total_deadline or self.proxy.draining:
            return False
        return plan.upstream.retry_allowed(
            plan.retry, kind, self.method_name, self.attempts, False, status
        )

    def may_reconnect(self, conn: UpstreamConnection) -> bool:
        """Whether a reused ``conn``, lost before any answer, is the keep-alive race to try again.

        An upstream may close an idle keep-alive connection (its idle timeout,
        its shutdown) just as the gateway sends a request on it: the request
        never reached a handler. Like nginx (a failed cached connection does
        not count as a try) and Go's transport, the gateway sends it again,
        once, on a new connection to the same endpoint, when that is safe: an
        idempotent method and a body it can send again. Not charged to the
        attempts, the retry budget or the endpoint's record.
        """
        if conn.requests < 2 or self.reconnected or self.method not in IDEMPOTENT:
            return False
        if self.sent and self.body_kept > self.proxy.limits.replay_buffer:
            return False
        return self.proxy.loop.time() < self.total_deadline and not self.proxy.draining

    def reconnect(self) -> None:
        """Send the current attempt again on a new connection to the same endpoint (see :meth:`may_reconnect`)."""
        assert self.plan is not None
        assert self.endpoint is not None
        self.reconnected = True
        self.proxy.stats.retry(self.plan.service, "stale")
        if self.sent:
            self.unsent = list(self.body_parts) if self.body_parts else None
            self.unsent_size = self.body_kept
            self.sent = False
        self._open(self.endpoint)

    def _retry(self, kind: str) -> None:
        assert self.plan is not None
        self.proxy.stats.retry(self.plan.service, kind)
        if self.sent:
            self.unsent = list(self.body_parts) if self.body_parts else None
            self.unsent_size = self.body_kept
            self.sent = False
        self.phase = QUEUED
        self.attempt()

    def attempt_failed(self, kind: str, problem: HTTPProblem) -> None:
        """The current attempt failed with ``kind`` before any response byte reached the client."""
        plan = self.plan
        ep = self.endpoint
        assert plan is not None
        assert ep is not None
        conn = self.conn
        self.conn = None
        if conn is not None:
            conn.close()
        if self.attempt_open:
            self.attempt_open = False
            plan.upstream.failed(ep, kind)
        self.proxy.stats.upstream_error(plan.service, kind)
        self.failure = problem
        if self._may_retry(kind):
            self._retry(kind)
        else:
            self.respond_problem(problem)

    def _abandon_attempt(self) -> None:
        """Drop the current attempt without a verdict on the upstream (the client's fault)."""
        if self.connecting is not None:
            self.connecting.cancel()
            self.connecting = None
        conn = self.conn
        self.conn = None
        if conn is not None:
            conn.close()
        if self.attempt_open:
            self.attempt_open = False
            assert self.plan is not None
            assert self.endpoint is not None
            self.plan.upstream.released(self.endpoint)

    def expired(self, now: float) -> None:
        """The client connection's deadline passed while this exchange was current."""
        phase = self.phase
        if self.session_local:
            if self.local_task is not None:
                self.local_task.cancel()
                self.local_task = None
                self.respond_problem(GatewayTimeout("the session endpoint did not answer in time"))
            else:
                self.close_after = True
                self.respond_problem(RequestTimeout("the request body stopped arriving"))
            return
        if phase == CONNECTING:
            if self.connecting is not None:
                self.connecting.cancel()
                self.connecting = None
            self.attempt_failed(
                "connect", GatewayTimeout(f"timed out connecting to {self._service()}")
            )
        elif phase == WAITING:
            if not self.body_done:
                self._abandon_attempt()
                self.close_after = True
                self.respond_problem(RequestTimeout("the request body stopped arriving"))
            else:
                self.attempt_failed(
                    "timeout", GatewayTimeout(f"{self._service()} did not answer in time")
                )
        elif phase in (STREAMING, TUNNEL):
            if phase == STREAMING:
                assert self.plan is not None
                self.proxy.stats.upstream_error(self.plan.service, "timeout")
            self._abandon_attempt()
            self.close_after = True
            self.client.transport.abort()
            self.finish()

    def client_lost(self) -> None:
        """The client connection closed: stop everything, record 499 unless answered."""
        if self.phase == DONE:
            return
        # A session endpoint's task is left to finish (a login half done would
        # leave a session nobody has a cookie for); its answer is dropped.
        self._abandon_attempt()
        if not self.started:
            self.phase = DONE
            return
        if self.phase != STREAMING and self.phase != TUNNEL:
            self.status = 499
        self.close_after = True
        self.finish()

    # -- answering -------------------------------------------------------------------------

    def respond_problem(self, problem: HTTPProblem, extra: tuple[bytes, ...] = ()) -> None:
        """Answer ``problem`` as problem details, or cut the response if one was begun.

        ``extra`` are more header lines (``name: value\\r\\n``), such as cookies to clear.
        """
        if self.phase == STREAMING or self.phase == TUNNEL:
            self.close_after = True
            self.client.transport.abort()
            self.finish()
            return
        self.status = problem.status
        self.answered_problem = problem.detail
        if (
            not self.body_done
            or self.upgrade  # the client's bytes after the head are not HTTP any more
            or problem.status in _CLOSING_STATUSES
            or self.proxy.draining
        ):
            self.close_after = True
        answer = problem_response(
            problem,
            instance=self.path,
            request_id=self.request_id,
            date=self.proxy.clock.date(),
            close=self.close_after,
            head_only=self.head_only,
            extra_headers=extra,
            http11=self.http11,
        )
        self.bytes_out += len(answer)
        self.client.transport.write(answer)
        if problem.status >= 502 and self.proxy.access is None:
            _log_failure(self, problem)
        self.finish()

    def respond_health(self) -> None:
        """Answer the gateway's health path: 200 while serving, 503 once draining."""
        if self.method not in (b"GET", b"HEAD"):
            self.respond_problem(_HEALTH_METHODS)
            return
        draining = self.proxy.draining
        self.status = 503 if draining else 200
        body = _DRAINING_BODY if draining else _UP_BODY
        if draining or not self.body_done:
            self.close_after = True
        head = [
            b"HTTP/1.1 503 Service Unavailable\r\n" if draining else b"HTTP/1.1 200 OK\r\n",
            b"content-type: application/json\r\ncache-control: no-store\r\n",
            b"content-length: %d\r\n" % len(body),
            b"date: " + self.proxy.clock.date() + b"\r\n",
            b"x-request-id: " + self.request_id + b"\r\n",
            b"connection: close\r\n\r\n" if self.close_after else b"\r\n",
        ]
        if not self.head_only:
            head.append(body)
        self.client.transport.write(b"".join(head))
        self.finish()

    # -- the session endpoints -------------------------------------------------------------

    def _local_body(self, data: bytes) -> None:
        """A piece of a session endpoint's body: kept, up to the endpoint's limit."""
        assert self.local_body is not None
        self.body_size += len(data)
        limit = self.proxy.bff.max_body  # type: ignore[union-attr]
        if self.body_size > limit:
            problem = PayloadTooLarge(f"the request body is over the limit of {limit} bytes")
            self.local_body = None
            if not self.started:
                self.refuse(problem)
            elif self.local_task is None:
                self.respond_problem(problem)
            return
        self.local_body.append(data)

    def _serve_local(self) -> None:
        self.client.deadline = self.proxy.loop.time() + self.proxy.bff.timeout  # type: ignore[union-attr]
        self.local_task = self.proxy.loop.create_task(self._local())

    async def _local(self) -> None:
        bff = self.proxy.bff
        assert bff is not None
        body = b"".join(self.local_body or ())
        self.local_body = None
        try:
            answer = await bff.handle(
                self.method, self.path, self.headers, body, self.client.peer, self.request_id
            )
        except asyncio.CancelledError:
            return
        except Exception:
            logger.exception("a session endpoint failed")
            answer = bff.failed(InternalError("the gateway failed to handle this request"))
        self.local_task = None
        if self.phase == DONE:
            return
        if answer.problem is not None:
            self.respond_problem(answer.problem, answer.lines)
        else:
            self.respond_local(answer.status, answer.lines, answer.body)

    def respond_local(self, status: int, lines: tuple[bytes, ...], body: bytes) -> None:
        """Answer with what the gateway made itself: ``status``, header ``lines``, a JSON ``body``."""
        self.status = status
        if self.proxy.draining or not self.body_done:
            self.close_after = True
        head = [
            STATUS_LINES[status],
            b"content-type: application/json\r\ncache-control: no-store\r\n" if body else b"",
            b"content-length: %d\r\n" % len(body) if status != 204 else b"",
            b"date: " + self.proxy.clock.date() + b"\r\n",
            b"x-request-id: " + self.request_id + b"\r\n",
            *lines,
            b"connection: close\r\n\r\n" if self.close_after else b"\r\n",
        ]
        if not self.head_only:
            head.append(body)
        answer = b"".join(head)
        self.bytes_out += len(answer)
        self.client.transport.write(answer)
        self.finish()

    def finish(self) -> None:
        if self.phase == DONE:
            return
        self.phase = DONE
        proxy = self.proxy
        proxy.active -= 1
        plan = self.plan
        if plan is None:
            plan = self.refused_by
        duration = perf_counter() - self.t0
        if plan is not None:
            row = plan.row
            if row is None:
                row = plan.row = proxy.stats.row(plan.route, plan.service)
            row.record(self.status, duration)
        else:
            where = "health" if self.local else "session" if self.session_local else "unmatched"
            proxy.stats.request(where, where, self.status, duration)
        access = proxy.access
        if access is not None:
            if plan is None:
                access.record(self, "unmatched", "unmatched", duration)
            else:
                access.record(self, plan.route, plan.service, duration)
        spans = proxy.spans
        if spans is not None and self.trace_id:
            self._record_span(spans, duration)
        self.client.exchange_done(self, self.close_after or not self.body_done)

    def _record_span(self, spans: Recorder, duration: float) -> None:
        """Hand the request's span to the exporter: the values only (see :mod:`core.proxy.span`).

        A span of an unsampled trace (flags ``00``, the client's or the
        gateway's decision) is not recorded at all.
        """
        head, plan = self.head, self.plan
        assert head is not None  # a traced exchange was routed
        assert plan is not None
        if not int(head.trace_flags, 16) & 1:
            return
        spans.add((
            exchange_span, self.trace_id, self.span_id, head.trace_parent, head.trace_flags,
            time.time_ns(), duration, self.method_name, self.path, plan.route, plan.service,
            self.endpoint, self.status, self.answered_problem, self.attempts, self.client.peer,
        ))  # fmt: skip

    def _service(self) -> str:
        ep = self.endpoint
        name = self.plan.service if self.plan is not None else "the upstream"
        return f"{name} at {ep.host}:{ep.port}" if ep is not None else name


_failure_log = [0.0, 0.0, 0.0]  # the second, lines written in it, lines left out


def _log_failure(ex: Exchange, problem: HTTPProblem) -> None:
    """One warning per gateway-made 502/503/504 (the access log, when on, has it already).

    At most 20 lines a second: an outage answers thousands of requests a
    second the same way; the next line says how many were left out.
    """
    now = time.monotonic()
    second, written, skipped = _failure_log
    if now - second >= 1.0:
        _failure_log[:] = [now, 0.0, 0.0]
        written = 0.0
        if skipped:
            logger.warning("%d more gateway failures were not logged in the last second", skipped)
    if written >= 20:
        _failure_log[2] += 1
        return
    _failure_log[1] += 1
    ep = ex.endpoint
    where = f"{ep.host}:{ep.port}" if ep is not None else "no instance"
    service = ex.plan.service if ex.plan is not None else "unmatched"
    logger.warning(
        "%s %s answered %d for %s (%s): %s [request %s trace %s]",
        ex.method_name, ex.path, problem.status, service, where, problem.detail,
        ex.request_id.decode("latin-1"), ex.trace_id.decode(),
    )  # fmt: skip


# Answers after which the rest of the client's input can't be trusted or read.
_CLOSING_STATUSES = frozenset((400, 408, 413, 431))


def _chunked(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name.lower() == b"transfer-encoding":
            return value.rstrip().lower().endswith(b"chunked")
    return False
