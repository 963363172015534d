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

from typing import TYPE_CHECKING

from core.errors import BadRequest, HTTPProblem, PayloadTooLarge
from core.proxy.wire import RequestIds, connection_tokens, header_value, scan_request

if TYPE_CHECKING:
    from core.proxy.router import Plan, Router

__all__ = ["HeaderFacts", "Heads", "Prepared", "RequestHead"]

_CRLF = b"\r\n"
_VIA = b"via: 1.1 essaim\r\n"
_PROTO_AND_ID = b"x-forwarded-proto: http\r\nx-request-id: "
_METHOD_NAMES = {
    m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
}


class RequestHead:
    """What requests that share their headers, route and stripped prefix send upstream.

    ``before_id`` and ``after_id`` are the upstream head after its ``Host``
    line, around the request id's value (the request line comes apart).
    ``client_id`` is the client's ``X-Request-ID`` when usable (else each
    request gets a new one).
    """

    __slots__ = ("after_id", "before_id", "chunked", "client_id", "continue_", "length", "plan")

    def __init__(self, plan: Plan, before_id: bytes, facts: HeaderFacts) -> None:
        self.plan = plan
        self.before_id = before_id
        self.after_id = facts.after
        self.client_id = facts.client_id
        self.length = facts.size
        self.chunked = facts.chunked
        self.continue_ = facts.continue_


#: What :meth:`Heads.prepare` gives: the head, the request line, the path, the method's name.
Prepared = tuple[RequestHead, bytes, str, str]


class HeaderFacts:
    """What a request's headers (and the client's address) tell the proxy.

    ``lines`` are the headers forwarded as they are; ``forwarded`` the
    ``X-Forwarded-For`` and ``-Host`` lines; ``after`` the upstream head after
    the request id (``Via``, framing, the blank line); ``listed`` the names
    that ``Connection`` lists (dropped too when a route drops headers).
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
    )

    def __init__(
        self,
        headers: list[tuple[bytes, bytes]],
        upgrade: bool,
        *,
        peer: bytes,
        forwarded_for: bytes,
        max_body: int,
    ) -> None:
        lines, host, length, chunked, xff, rid, expect, connection, via = scan_request(headers)
        listed = connection_tokens(connection) if connection else frozenset()
        if listed:
            lines, host, length, chunked, xff, rid, expect, _, via = scan_request(headers, listed)
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
        forwarded = (
            forwarded_for if xff is None else b"x-forwarded-for: " + xff + b", " + peer + _CRLF
        )
        if host is not None:
            forwarded += b"x-forwarded-host: " + host + _CRLF
        self.forwarded = forwarded
        after = [_CRLF, _VIA if via is None else b"via: " + via + b", 1.1 essaim\r\n"]
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
        "max_body",
        "peer",
        "router",
    )

    def __init__(self, router: Router, *, peer: bytes, forwarded_for: bytes, max_body: int) -> None:
        self.router = router
        self.peer = peer
        self.forwarded_for = forwarded_for
        self.max_body = max_body
        self._last: tuple[bytes, list[tuple[bytes, bytes]], bytes, int, Prepared] | None = None
        self._facts: HeaderFacts | None = None
        self._assembled: tuple[HeaderFacts, Plan, str, RequestHead] | None = None

    def prepare(
        self, method: bytes, url: bytes, headers: list[tuple[bytes, bytes]], upgrade: bool
    ) -> Prepared:
        """``(head, request line, path, method name)``; the ``HTTPProblem`` to answer instead."""
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
        if upgrade:
            facts = HeaderFacts(
                headers,
                True,
                peer=self.peer,
                forwarded_for=self.forwarded_for,
                max_body=self.max_body,
            )
        else:
            facts = self._facts  # type: ignore[assignment]
            if facts is None or facts.headers != headers:
                facts = self._facts = HeaderFacts(
                    headers,
                    False,
                    peer=self.peer,
                    forwarded_for=self.forwarded_for,
                    max_body=self.max_body,
                )
        if upgrade and method == b"CONNECT":
            raise HTTPProblem(
                "CONNECT is not supported by this gateway",
                status=405,
                headers={"Allow": "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"},
            )
        query_at = url.find(b"?")
        raw_path = url if query_at < 0 else url[:query_at]
        if raw_path[:1] != b"/":
            raise BadRequest("the request target must be a path (origin-form)")
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
            self._last = (url, headers, method, generation, prepared)
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
