"""What a request head means to the proxy: its route, its upstream head, its body framing.

:func:`prepare` turns a parsed request head into a :class:`RequestHead`: the
plan of the route it takes, the request line and headers to send upstream
(all but ``Host``, which depends on the endpoint, and the request id), and
how its body is framed. It raises the :class:`~core.errors.HTTPProblem` the
client must get instead (404, 413, ...).

A prepared head depends only on the method, target and headers, the
client's address and the router's generation (which moves with the route
table and the registry). A keep-alive client that repeats its last request
head byte for byte (pollers, health checks, load generators) reuses it:
checking costs two byte-string and one list comparison, preparing costs the
header scan, the route match and the joins.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.errors import BadRequest, HTTPProblem, PayloadTooLarge
from core.proxy.wire import RequestIds, connection_tokens, scan_request

if TYPE_CHECKING:
    from core.proxy.router import Plan, Router

__all__ = ["RequestHead", "prepare"]

_CRLF = b"\r\n"
_VIA = b"via: 1.1 essaim\r\n"
_PROTO_AND_ID = b"x-forwarded-proto: http\r\nx-request-id: "


class RequestHead:
    """A request head checked and routed, ready to go upstream.

    ``before_id`` and ``after_id`` are the upstream head after its ``Host``
    line, around the request id's value. ``client_id`` is the client's
    ``X-Request-ID`` when usable (else each request gets a new one).
    """

    __slots__ = (
        "after_id",
        "before_id",
        "chunked",
        "client_id",
        "continue_",
        "generation",
        "headers",
        "length",
        "method",
        "method_name",
        "path",
        "plan",
        "request_line",
        "url",
    )

    def __init__(
        self,
        method: bytes,
        url: bytes,
        headers: list[tuple[bytes, bytes]],
        generation: int,
        method_name: str,
        path: str,
        plan: Plan,
        request_line: bytes,
        before_id: bytes,
        after_id: bytes,
        client_id: bytes | None,
        length: int | None,
        chunked: bool,
        continue_: bool,
    ) -> None:
        self.method = method
        self.url = url
        self.headers = headers
        self.generation = generation
        self.method_name = method_name
        self.path = path
        self.plan = plan
        self.request_line = request_line
        self.before_id = before_id
        self.after_id = after_id
        self.client_id = client_id
        self.length = length
        self.chunked = chunked
        self.continue_ = continue_


def prepare(
    method: bytes,
    url: bytes,
    headers: list[tuple[bytes, bytes]],
    upgrade: bool,
    *,
    peer: bytes,
    forwarded_for: bytes,
    router: Router,
    max_body: int,
) -> RequestHead:
    """Check and route one request head; the ``HTTPProblem`` to answer instead if it can't go."""
    lines, host, length, chunked, xff, rid, expect, connection, via = scan_request(headers)
    if connection:
        drop = connection_tokens(connection)
        if drop:
            lines, host, length, chunked, xff, rid, expect, _, via = scan_request(headers, drop)
    query_at = url.find(b"?")
    raw_path = url if query_at < 0 else url[:query_at]
    path = raw_path.decode("latin-1")
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
    if upgrade and method == b"CONNECT":
        raise HTTPProblem(
            "CONNECT is not supported by this gateway",
            status=405,
            headers={"Allow": "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"},
        )
    if not raw_path.startswith(b"/"):
        raise BadRequest("the request target must be a path (origin-form)")
    method_name = method.decode("ascii")
    plan, upstream_path, prefix = router.resolve(method_name, host, path, headers)
    if plan.request_drop is not None:
        drop = plan.request_drop | (connection_tokens(connection) if connection else frozenset())
        lines = scan_request(headers, drop)[0]
    target = upstream_path.encode("latin-1")
    if query_at >= 0:
        target += url[query_at:]
    # The pieces are joined once, without intermediate bytes objects.
    parts = lines
    if plan.request_add:
        parts.extend(plan.request_add)
    if xff is None:
        parts.append(forwarded_for)
    else:
        parts += (b"x-forwarded-for: ", xff, b", ", peer, _CRLF)
    if host is not None:
        parts += (b"x-forwarded-host: ", host, _CRLF)
    if prefix:
        parts += (b"x-forwarded-prefix: ", prefix.encode("latin-1"), _CRLF)
    parts.append(_PROTO_AND_ID)
    after = [_CRLF, _VIA if via is None else b"via: " + via + b", 1.1 essaim\r\n"]
    if length is not None:
        after += (b"content-length: ", length, _CRLF)
    elif chunked:
        after.append(b"transfer-encoding: chunked\r\n")
    if upgrade:
        after += (b"connection: upgrade\r\nupgrade: ", _find(headers, b"upgrade"), _CRLF)
    after.append(_CRLF)
    return RequestHead(
        method,
        url,
        headers,
        router.generation,
        method_name,
        path,
        plan,
        method + b" " + target + b" HTTP/1.1\r\n",
        b"".join(parts),
        b"".join(after),
        None if rid is None else RequestIds.usable(rid),
        size,
        chunked,
        continue_,
    )


def _find(headers: list[tuple[bytes, bytes]], wanted: bytes) -> bytes:
    for name, value in headers:
        if name.lower() == wanted:
            return value
    return b""
