"""HTTP/1.1 on the wire: heads as bytes, hop-by-hop and forwarded headers, problem responses.

Everything here works on ``bytes`` as httptools hands them over, so that a
proxied request costs one pass over its headers and one ``bytes.join`` per
head. Header names are compared lower-cased; values are passed through
unchanged.
"""

from __future__ import annotations

import functools
import os
import re
import time
from collections.abc import Iterable
from email.utils import formatdate
from http import HTTPStatus

import orjson

from core.errors import BadRequest, HTTPProblem

__all__ = [
    "HOP_BY_HOP",
    "IDEMPOTENT",
    "STATUS_LINES",
    "STATUS_PREFIXES",
    "Clock",
    "RequestIds",
    "TraceIds",
    "chunk",
    "connection_tokens",
    "header_pattern",
    "header_value",
    "problem_response",
    "scan_request",
    "scan_response",
    "status_line",
    "without_own_cookies",
]

#: Headers that describe one connection, never forwarded (RFC 9110 7.6.1).
HOP_BY_HOP = frozenset(
    (
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    )
)

#: Request headers the gateway sets itself or reads for framing (besides hop-by-hop).
_REQUEST_SPECIAL = HOP_BY_HOP | frozenset(
    (
        b"host",
        b"content-length",
        b"expect",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-prefix",
        b"x-request-id",
        b"via",
        # The gateway's span is the parent of what it sends upstream (W3C Trace Context).
        b"traceparent",
        # The identity is the gateway's to assert (core.proxy.guard): a
        # client's own claim never reaches a service, on any route.
        b"x-user-id",
        b"x-user-roles",
        # Read for the gateway's own cookies (core.security.sessions), which
        # never reach a service: the rest of the header is forwarded.
        b"cookie",
    )
)
#: The gateway's cookies (a session id, its CSRF token): kept from upstreams.
_OWN_COOKIES = (b"essaim_session", b"essaim_csrf")


#: Methods a retry may repeat (RFC 9110 9.2.2).
IDEMPOTENT = frozenset((b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"))

_CONNECTION_OPTIONS = frozenset((b"close", b"keep-alive", b"upgrade"))
_PLAIN_CONNECTION = frozenset(
    (b"close", b"keep-alive", b"Keep-Alive", b"Close", b"upgrade", b"Upgrade", b"")
)


def status_line(status: int) -> bytes:
    """``HTTP/1.1 <status> <reason>\\r\\n`` (an empty reason for an unknown status)."""
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = ""
    return f"HTTP/1.1 {status} {reason}\r\n".encode()


#: Status lines for every status code 100-599, computed once.
STATUS_LINES: dict[int, bytes] = {code: status_line(code) for code in range(100, 600)}
#: The same without their CRLF, to be followed by a header block that starts with one.
STATUS_PREFIXES: dict[int, bytes] = {code: line[:-2] for code, line in STATUS_LINES.items()}


def header_value(headers: list[tuple[bytes, bytes]], wanted: bytes) -> bytes:
    """The value of the first header named ``wanted`` (lower-case), or ``b""``."""
    for name, value in headers:
        if name.lower() == wanted:
            return value
    return b""


def connection_tokens(value: bytes) -> frozenset[bytes]:
    """The header names listed in a ``Connection`` value, besides close/keep-alive/upgrade."""
    if value in _PLAIN_CONNECTION:
        return frozenset()
    tokens = {t.strip().lower() for t in value.split(b",")}
    tokens.discard(b"")
    return frozenset(tokens - _CONNECTION_OPTIONS)


def scan_request(
    headers: list[tuple[bytes, bytes]], drop: frozenset[bytes] | None = None
) -> tuple[
    list[bytes],
    bytes | None,
    bytes | None,
    bool,
    bytes | None,
    bytes | None,
    bytes | None,
    bytes,
    bytes | None,
    bytes | None,
]:
    """One pass over a request's headers.

    Returns ``(lines, host, content_length, chunked, x_forwarded_for,
    x_request_id, expect, connection, via, traceparent)``: ``lines`` are the
    ``name: value\r\n`` lines to forward as they are (hop-by-hop headers,
    the ones the gateway sets itself and the names in ``drop`` left out;
    ``Cookie`` without the gateway's own cookies); the
    others are what the gateway needs (None when absent). Repeated
    ``X-Forwarded-For`` and ``Via`` values are joined with ``", "``,
    ``Connection`` values with ``","``. Two ``Host`` lines are a
    ``BadRequest``: which one would the route and the upstream each believe?
    """
    lines: list[bytes] = []
    host = length = xff = rid = expect = via = traceparent = None
    chunked = False
    connection = b""
    special = _REQUEST_SPECIAL if drop is None else _REQUEST_SPECIAL | drop
    for name, value in headers:
        low = name.lower()
        if low not in special:
            lines.append(name + b": " + value + b"\r\n")
        elif low == b"host":
            if host is not None:
                raise BadRequest("a request must not have two Host headers (RFC 9112 3.2)")
            host = value
        elif low == b"content-length":
            length = value
        elif low == b"transfer-encoding":
            chunked = value.rstrip().lower().endswith(b"chunked")
        elif low == b"x-forwarded-for":
            xff = value if xff is None else xff + b", " + value
        elif low == b"x-request-id":
            rid = value
        elif low == b"connection":
            connection = value if not connection else connection + b"," + value
        elif low == b"expect":
            expect = value
        elif low == b"via":
            via = value if via is None else via + b", " + value
        elif low == b"traceparent":
            traceparent = value
        elif low == b"cookie":
            if drop is not None and low in drop:
                continue
            if b"essaim_" in value:
                value = without_own_cookies(value)
                if not value:
                    continue
            lines.append(name + b": " + value + b"\r\n")
    return lines, host, length, chunked, xff, rid, expect, connection, via, traceparent


def without_own_cookies(value: bytes) -> bytes:
    """A ``Cookie`` value without the gateway's own cookies (``b""`` when none is left)."""
    kept = [
        part
        for part in (p.strip() for p in value.split(b";"))
        if part and part.partition(b"=")[0].strip() not in _OWN_COOKIES
    ]
    return b"; ".join(kept)


#: Response header lines the gateway removes, or reads (Content-Length stays).
# Alternatives grouped by first letter: the regex engine tries them in order at
# each line, and this halves the scan.
_RESPONSE_SPECIAL = re.compile(
    rb"\r\n(c(?:ontent-length|onnection)|keep-alive|proxy-(?:connection|authenticate"
    rb"|authorization)|t(?:e|railer|ransfer-encoding)|upgrade|x-request-id|via):[ \t]*([^\r]*)"
)


@functools.lru_cache(maxsize=256)
def header_pattern(names: frozenset[bytes]) -> re.Pattern[bytes]:
    """A pattern matching the lines of a head block that carry one of ``names`` (any case)."""
    alternatives = b"|".join(re.escape(n) for n in sorted(names))
    return re.compile(rb"\r\n(?:" + alternatives + rb"):[^\r]*", re.IGNORECASE)


def scan_response(
    block: bytes, drop: re.Pattern[bytes] | None = None
) -> tuple[bytes, bytes | None, bool, bytes, bytes | None]:
    """The header block of a response, filtered, and what the gateway needs of it.

    ``block`` is the head from the end of the status line to the end of the
    last header line (``\r\nName: value\r\n...\r\n``, as llhttp accepted
    it). Returns ``(kept, content_length, chunked, upgrade, via)``: ``kept``
    is the block without hop-by-hop headers, headers listed in
    ``Connection``, ``X-Request-ID`` (the gateway sets its own), ``Via`` (its
    values are returned joined, for the gateway to append itself) and the
    lines ``drop`` matches; ``Content-Length`` stays as it was. Working on
    the raw block (one ``lower()``, one regex scan, one join) instead of
    header by header is what keeps this cheap: a response costs no Python
    call per header.
    """
    low = block.lower()
    length = via = None
    chunked = False
    upgrade = b""
    listed: frozenset[bytes] | None = None
    parts = []
    at = 0
    for m in _RESPONSE_SPECIAL.finditer(low):
        name, value = m.group(1, 2)
        if name == b"content-length":
            length = value.rstrip()
            continue
        start, end = m.span()
        parts.append(block[at:start])
        at = end
        if name == b"connection":
            if value != b"keep-alive" and value != b"close":
                listed = connection_tokens(value.rstrip()) | (listed or frozenset())
        elif name == b"transfer-encoding":
            chunked = value.rstrip().endswith(b"chunked")
        elif name == b"via":
            original = block[m.start(2) : end].rstrip()
            via = original if via is None else via + b", " + original
        elif name == b"upgrade":
            upgrade = block[m.start(2) : end].rstrip()
    if parts:
        parts.append(block[at:])
        block = b"".join(parts)
    if listed:
        block = header_pattern(listed).sub(b"", block)
    if drop is not None:
        block = drop.sub(b"", block)
    return block, length, chunked, upgrade, via


_DEPENDENCY_FAILURE = re.compile(rb"\r\nessaim-failure:[ \t]*dependency[ \t]*\r", re.IGNORECASE)


def marks_dependency_failure(block: bytes) -> bool:
    """Whether a response head block carries ``Essaim-Failure: dependency``.

    Read on 5xx answers only: such an answer is the failure of a service the
    upstream depends on, passed to the client but not held against the
    upstream (see :data:`core.errors.FAILURE_HEADER`).
    """
    return _DEPENDENCY_FAILURE.search(block) is not None


def chunk(data: bytes) -> bytes:
    """``data`` as one chunk of a chunked body (never empty: that would end the body)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


class RequestIds:
    """Request ids for requests that come without a usable ``X-Request-ID``.

    An id is a random per-process prefix and a counter (``3f9a0c2e71b4-1a``):
    unique across processes with overwhelming probability, and ten times
    cheaper than a UUID. A client's id is kept when it is 1 to 200 visible
    ASCII characters.
    """

    __slots__ = ("_next", "_prefix")

    def __init__(self) -> None:
        self._prefix = os.urandom(6).hex().encode() + b"-"
        self._next = 0

    def new(self) -> bytes:
        self._next += 1
        return self._prefix + b"%x" % self._next

    def keep_or_new(self, given: bytes | None) -> bytes:
        kept = None if given is None else self.usable(given)
        return self.new() if kept is None else kept

    @staticmethod
    def usable(given: bytes) -> bytes | None:
        """``given`` (stripped) if it can serve as a request id, else None."""
        if 0 < len(given) <= 200 and given.isascii():
            stripped = given.strip()
            if stripped and b" " not in stripped and b"\t" not in stripped:
                return stripped
        return None


class TraceIds:
    """Trace and span ids for W3C Trace Context, as lower-case hex bytes.

    A span id is a random per-process prefix (8 hex digits) and a counter
    (8 more); a new trace id, a random 16-digit prefix and a 16-digit
    counter: unique across processes with overwhelming probability, never
    all zeros, and several times cheaper than asking the OS for 16 random
    bytes per request.
    """

    __slots__ = ("_next", "_span", "_trace")

    def __init__(self) -> None:
        self._span = os.urandom(4).hex().encode()
        self._trace = os.urandom(8).hex().encode()
        self._next = 0

    def span(self) -> bytes:
        self._next += 1
        return self._span + b"%08x" % (self._next & 0xFFFFFFFF)

    def trace(self) -> bytes:
        self._next += 1
        return self._trace + b"%016x" % self._next


class Clock:
    """The ``Date`` header value, formatted at most once a second."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def date(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = formatdate(now, usegmt=True).encode()
        return self._value


def problem_response(
    problem: HTTPProblem,
    *,
    instance: str,
    request_id: bytes,
    date: bytes,
    close: bool,
    head_only: bool = False,
    extra_headers: Iterable[bytes] = (),
    http11: bool = True,
) -> bytes:
    """A whole problem-details response (RFC 9457) as bytes.

    The body has the problem's members, ``instance`` (the request path) and
    ``request_id``; the head has the problem's own headers (``Retry-After``),
    ``X-Request-ID``, ``Via`` (naming the client's protocol: ``1.0 essaim``
    unless ``http11``) and ``Connection: close`` when ``close``.
    ``head_only`` leaves the body out (a HEAD request) but keeps its length.
    """
    doc = problem.body(instance)
    doc["request_id"] = request_id.decode("ascii", "replace")
    body = orjson.dumps(doc)
    parts = [
        STATUS_LINES.get(problem.status) or status_line(problem.status),
        b"content-type: application/problem+json\r\ncontent-length: %d\r\n" % len(body),
        b"date: " + date + b"\r\n",
        b"x-request-id: " + request_id + b"\r\n",
        b"via: 1.1 essaim\r\n" if http11 else b"via: 1.0 essaim\r\n",
    ]
    for name, value in problem.headers.items():
        parts.append(f"{name}: {value}\r\n".encode("latin-1"))
    parts.extend(extra_headers)
    parts.append(b"connection: close\r\n\r\n" if close else b"\r\n")
    if not head_only:
        parts.append(body)
    return b"".join(parts)
