"""What a request head means to the proxy: its route, its upstream head, its body framing.

:meth:`Heads.prepare` turns a parsed request head into a :class:`RequestHead`:
the plan of the route it takes, the request line and headers to send
upstream (all but ``Host``, which depends on the endpoint, and the request
id), and how its body is framed. It raises the
:class:`~core.errors.HTTPProblem` the client must get instead (404, 413...).

One :class:`Heads` per client connection keeps what the connection's last
requests had in common, each piece checked by comparing bytes (a length
check, then ``memcmp``) or identities, and each reused only when what it
was computed from is equal:

- the whole head, when method, target and headers repeat and the router's
  generation (moved by every route table and registry change) has not;
- the :class:`HeaderFacts` (one scan of the headers: forwarded headers,
  framing, request id...), when the headers repeat: a client on a
  keep-alive connection sends the same headers with every request;
- the upstream head around the request id, when the header facts, the
  route and the stripped prefix are the same objects as last time.

The route itself comes from :meth:`core.proxy.router.Router.resolve`, which
has its own cache by method, host and path.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from core.errors import BadRequest, HTTPProblem, PayloadTooLarge
from core.proxy.wire import RequestIds, connection_tokens, header_value, scan_request
from core.routes.path import TARGET_SCAN, normalize_path
from core.trace import parse_traceparent

if TYPE_CHECKING:
    from core.proxy.router import Plan, Router

__all__ = ["HeaderFacts", "Heads", "Prepared", "RequestHead"]

_CRLF = b"\r\n"
_PROTOCOL = {True: b"1.1 essaim", False: b"1.0 essaim"}
_SCAN = TARGET_SCAN.search
# A Host value (RFC 9110 7.2, RFC 3986 3.2.2): an IP literal or a reg-name,
# then an optional port. Empty is valid (RFC 9112 3.2).
_HOST = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]{0,5})?")
# The absolute-form (RFC 9112 3.2.2): scheme, authority, then the rest.
_ABSOLUTE = re.compile(rb"(?i)https?://([^/?#]*)(.*)", re.DOTALL)
_PROTO_AND_ID = b"x-forwarded-proto: http\r\nx-request-id: "
_METHOD_NAMES = {
    m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
}


class RequestHead:
    """What requests that share their headers, route and stripped prefix send upstream.

    ``before_id`` and ``after_id`` are the upstream head after its ``Host``
    line, around the request id's value (the request line comes apart).
    ``client_id`` is the client's ``X-Request-ID`` when usable (else each
    request gets a new one); ``trace_id``, ``trace_parent`` and ``trace_flags``
    those of the client's valid ``traceparent`` (else each request starts a
    trace, and ``trace_parent`` is None).
    """

    __slots__ = (
        "_facts",
        "_unsampled",
        "after_id",
        "before_id",
        "chunked",
        "client_id",
        "continue_",
        "length",
        "plan",
        "trace_flags",
        "trace_id",
        "trace_parent",
    )

    def __init__(self, plan: Plan, before_id: bytes, facts: HeaderFacts) -> None:
        self.plan = plan
        self.before_id = before_id
        self.after_id = facts.after
        self.client_id = facts.client_id
        self.trace_id = facts.trace_id
        self.trace_parent = facts.trace_parent
        self.trace_flags = facts.trace_flags
        self.length = facts.size
        self.chunked = facts.chunked
        self.continue_ = facts.continue_
        self._facts = facts
        self._unsampled: RequestHead | None = None

    def unsampled(self) -> RequestHead:
        """This head for a trace the gateway starts and does not sample: flags ``00``.

        Made once, on the first request that needs it, and kept: the requests
        that share this head and start a trace each take one of the two.
        """
        twin = self._unsampled
        if twin is None:
            twin = self._unsampled = RequestHead(self.plan, self.before_id, self._facts)
            twin.trace_flags = b"00"
            twin._unsampled = twin
        return twin


#: What :meth:`Heads.prepare` gives: the head, the request line, the path, the method's name.
Prepared = tuple[RequestHead, bytes, str, str]


class HeaderFacts:
    """What a request's headers (and the client's address) tell the proxy.

    ``lines`` are the headers forwarded as they are; ``forwarded`` the
    ``X-Forwarded-For`` and ``-Host`` lines; ``after`` the upstream head after
    the request id (``Via``, framing, the blank line); ``listed`` the names
    that ``Connection`` lists (dropped too when a route drops headers).

    ``host`` is what routing sees: ``authority``, the host of an
    absolute-form target, when given (it replaces ``Host``, RFC 9112
    3.2.2), else the ``Host`` header. ``BadRequest`` (RFC 9112 3.2) for an
    HTTP/1.1 request (``http11``) without ``Host``, any request with two,
    or a ``Host`` that is not a valid ``host[:port]``.
    """

    __slots__ = (
        "after",
        "chunked",
        "client_id",
        "continue_",
        "forwarded",
        "headers",
        "host",
        "lines",
        "listed",
        "size",
        "trace_flags",
        "trace_id",
        "trace_parent",
    )

    def __init__(
        self,
        headers: list[tuple[bytes, bytes]],
        upgrade: bool,
        *,
        peer: bytes,
        forwarded_for: bytes,
        max_body: int,
        http11: bool = True,
        authority: bytes | None = None,
    ) -> None:
        lines, host, length, chunked, xff, rid, expect, connection, via, tp = scan_request(headers)
        if host is None:
            if http11:
                raise BadRequest("an HTTP/1.1 request must have a Host header")
        elif _HOST.fullmatch(host) is None:
            raise BadRequest("the Host header is not a valid host[:port]")
        if authority is not None:
            host = authority
        listed = connection_tokens(connection) if connection else frozenset()
        if listed:
            lines, host, length, chunked, xff, rid, expect, _, via, tp = scan_request(
                headers, listed
            )
        size = None
        if length is not None:
            size = int(length)
            if size > max_body:
                raise PayloadTooLarge(f"the request body is {size} bytes; the limit is {max_body}")
        continue_ = False
        if expect is not None:
            if expect.lower() != b"100-continue":
                raise HTTPProblem("only 'Expect: 100-continue' is supported", status=417)
            continue_ = bool(size) or chunked
        self.headers = headers
        self.lines = lines
        self.host = host
        self.size = size
        self.chunked = chunked
        self.continue_ = continue_
        self.listed = listed
        self.client_id = None if rid is None else RequestIds.usable(rid)
        self.trace_id: bytes | None = None
        self.trace_parent: bytes | None = None
        self.trace_flags = b"01"
        if tp is not None:
            parsed = parse_traceparent(tp.decode("latin-1"))
            if parsed is not None:
                self.trace_id, self.trace_parent, self.trace_flags = (p.encode() for p in parsed)
        forwarded = (
            forwarded_for if xff is None else b"x-forwarded-for: " + xff + b", " + peer + _CRLF
        )
        if host is not None:
            forwarded += b"x-forwarded-host: " + host + _CRLF
        self.forwarded = forwarded
        protocol = _PROTOCOL[http11]
        after = [
            _CRLF,
            b"via: " + (protocol if via is None else via + b", " + protocol) + _CRLF,
        ]
        if length is not None:
            after += (b"content-length: ", length, _CRLF)
        elif chunked:
            after.append(b"transfer-encoding: chunked\r\n")
        if upgrade:
            after += (b"connection: upgrade\r\nupgrade: ", header_value(headers, b"upgrade"), _CRLF)
        after.append(_CRLF)
        self.after = b"".join(after)


class Heads:
    """Prepares the request heads of one client connection; see the module docstring."""

    __slots__ = (
        "_assembled",
        "_facts",
        "_last",
        "forwarded_for",
        "http11",
        "max_body",
        "peer",
        "router",
    )

    def __init__(self, router: Router, *, peer: bytes, forwarded_for: bytes, max_body: int) -> None:
        self.router = router
        self.peer = peer
        self.forwarded_for = forwarded_for
        self.max_body = max_body
        # The client's protocol (HTTP/1.1, else 1.0), set by the connection
        # from its first request: Host is required of 1.1, Via names it.
        self.http11 = True
        self._last: tuple[bytes, list[tuple[bytes, bytes]], bytes, int, Prepared] | None = None
        self._facts: HeaderFacts | None = None
        self._assembled: tuple[HeaderFacts, Plan, str, RequestHead] | None = None

    def prepare(
        self, method: bytes, url: bytes, headers: list[tuple[bytes, bytes]], upgrade: bool
    ) -> Prepared:
        """``(head, request line, path, method name)``; the ``HTTPProblem`` to answer instead.

        ``path`` is the normalized public path (:mod:`core.routes.path`):
        the one routed, judged by the route's policy and, after the route's
        own prefix stripping or rewrite, sent upstream. ``url`` is the
        origin-form target (``/path?query``) or the absolute-form
        (``http://host/path?query``), whose host replaces ``Host``. A
        fragment (``#``) is refused: a target has none (RFC 9112 3.2).
        """
        last = self._last
        router = self.router
        if (
            last is not None
            and last[0] == url
            and last[1] == headers
            and last[2] == method
            and last[3] == router.generation
        ):
            return last[4]
        whole = url
        authority = None
        if url[:1] != b"/":
            if method == b"CONNECT":
                raise _connect_refused()
            authority, url = _absolute(url, method)
        facts: HeaderFacts | None
        if upgrade or authority is not None:
            facts = HeaderFacts(
                headers,
                upgrade,
                peer=self.peer,
                forwarded_for=self.forwarded_for,
                max_body=self.max_body,
                http11=self.http11,
                authority=authority,
            )
        else:
            facts = self._facts
            if facts is None or facts.headers != headers:
                facts = self._facts = HeaderFacts(
                    headers,
                    False,
                    peer=self.peer,
                    forwarded_for=self.forwarded_for,
                    max_body=self.max_body,
                    http11=self.http11,
                )
        if upgrade and method == b"CONNECT":
            raise _connect_refused()
        found = _SCAN(url)
        if found is None:  # a normal path and no query: used as it came
            query_at = -1
            raw_path = url
            path = url.decode("latin-1")
        else:
            query_at = found.start()
            if url[query_at] != 63:  # not '?' first: a fragment, or a path that needs work
                if url.find(b"#") >= 0:
                    raise _fragment()
                query_at = url.find(b"?")
                raw_path = url if query_at < 0 else url[:query_at]
                path = normalize_path(raw_path.decode("latin-1"))
                raw_path = path.encode("latin-1")
            else:  # '?' first: the path is normal, and the query is not ours to touch
                if found.end() != len(url):  # the query's scan stopped at a '#'
                    raise _fragment()
                raw_path = url[:query_at]
                path = raw_path.decode("latin-1")
        method_name = _METHOD_NAMES.get(method) or method.decode("ascii")
        generation = router.generation
        plan, upstream_path, prefix = router.resolve(method_name, facts.host, path, headers)
        assembled = self._assembled
        if (
            assembled is not None
            and assembled[0] is facts
            and assembled[1] is plan
            and assembled[2] == prefix
            and not upgrade
        ):
            head = assembled[3]
        else:
            head = RequestHead(plan, self._before_id(facts, headers, plan, prefix), facts)
            if not upgrade:
                self._assembled = (facts, plan, prefix, head)
        target = raw_path if upstream_path == path else upstream_path.encode("latin-1")
        request_line = (
            method + b" " + target + b" HTTP/1.1\r\n"
            if query_at < 0
            else b"".join((method, b" ", target, url[query_at:], b" HTTP/1.1\r\n"))
        )
        prepared = (head, request_line, path, method_name)
        if not upgrade:
            self._last = (whole, headers, method, generation, prepared)
        return prepared

    @staticmethod
    def _before_id(
        facts: HeaderFacts, headers: list[tuple[bytes, bytes]], plan: Plan, prefix: str
    ) -> bytes:
        """The upstream head from after ``Host`` to the request id's value."""
        lines = facts.lines
        if plan.request_drop is not None:
            lines = scan_request(headers, plan.request_drop | facts.listed)[0]
        parts = [*lines, *plan.request_add, facts.forwarded]
        if prefix:
            parts += (b"x-forwarded-prefix: ", prefix.encode("latin-1"), _CRLF)
        parts.append(_PROTO_AND_ID)
        return b"".join(parts)


def _absolute(url: bytes, method: bytes) -> tuple[bytes, bytes]:
    """``(authority, origin-form target)`` of an absolute-form target; ``BadRequest`` otherwise.

    ``http://h:8080/a?b`` is ``(b"h:8080", b"/a?b")``; an empty path is ``/``.
    The authority must be a valid ``host[:port]``, without user info.
    """
    m = _ABSOLUTE.fullmatch(url)
    if m is None:
        if url == b"*" and method == b"OPTIONS":
            raise BadRequest("OPTIONS * (the asterisk-form) is not supported by this gateway")
        raise BadRequest("the request target must be a path (origin-form) or an http(s) URL")
    authority, rest = m.group(1, 2)
    if not authority or _HOST.fullmatch(authority) is None:
        raise BadRequest("the request target's authority is not a valid host[:port]")
    return authority, rest if rest[:1] == b"/" else b"/" + rest


def _connect_refused() -> HTTPProblem:
    return HTTPProblem(
        "CONNECT is not supported by this gateway",
        status=405,
        headers={"Allow": "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"},
    )


def _fragment() -> BadRequest:
    return BadRequest("a request target has no fragment ('#'): RFC 9112 3.2")
