"""One access-log line per request a service answers (logger ``essaim.access``).

Text: ``127.0.0.1 "GET /customers/7" 200 61B 1.4ms route=/customers/{id}``
followed, like every line written while the request is handled, by its
request id and trace id. JSON (``--log-format json``): the same as fields:
``client``, ``method``, ``path``, ``route``, ``status``, ``duration_ms``,
``bytes_in``, ``bytes_out``, ``service``, ``instance``, ``request_id``,
``trace_id``, ``span_id``.

Only the path is logged, never the query string, the headers or the body:
they may hold secrets (tokens in a query, ``Authorization``, cookies,
passwords in a login body).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from core import log

__all__ = ["access_log_middleware"]

logger = log.get("access")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def access_log_middleware(service: str, instance: str) -> Middleware:
    """A middleware that logs each request after it is answered.

    Place it inside the middleware that starts the request's span (so the
    line carries its ids) and outside the one that turns errors into
    problem details (so it logs the status the client gets).
    """

    @web.middleware
    async def access_log(request: web.Request, handler: Handler) -> web.StreamResponse:
        start = time.perf_counter()
        status = 500
        response: web.StreamResponse | None = None
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            duration = (time.perf_counter() - start) * 1000
            resource = request.match_info.route.resource
            route = resource.canonical if resource is not None else "unmatched"
            out = _bytes_out(response)
            logger.info(
                '%s "%s %s" %d %dB %.1fms route=%s',
                request.remote, request.method, request.path, status, out, duration, route,
                extra={
                    "client": request.remote, "method": request.method, "path": request.path,
                    "route": route, "status": status, "duration_ms": round(duration, 3),
                    "bytes_in": request.content_length or 0, "bytes_out": out,
                    "service": service, "instance": instance,
                },
            )  # fmt: skip

    return access_log


def _bytes_out(response: web.StreamResponse | None) -> int:
    if response is None:
        return 0
    if response.prepared:  # a stream: what it wrote
        return response.body_length
    if isinstance(response, web.Response) and isinstance(response.body, bytes | bytearray):
        return len(response.body)
    return response.content_length or 0
