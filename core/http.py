"""Small HTTP helpers shared by the control-plane services (registry, configsvc, services).

Bodies are read with a hard size limit before parsing, so that a client can't
make a service buffer more than it allows, and malformed input becomes a
problem-details error before any state is touched.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware

from core.errors import BadRequest, PayloadTooLarge, ServiceUnavailable, Unauthorized
from core.redis import REDIS_ERRORS, Redis
from core.settings import Secret

__all__ = [
    "json_response",
    "presented_secret",
    "read_body",
    "read_json",
    "redis_health",
    "redis_unavailable",
    "require_bearer",
]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def read_body(request: web.Request, max_bytes: int) -> bytes:
    """The whole request body; :class:`PayloadTooLarge` past ``max_bytes``."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise PayloadTooLarge(
            f"the body is {request.content_length} bytes; the limit is {max_bytes}"
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(65536):
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"the body is over the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: web.Request, max_bytes: int, *, empty: Any = ...) -> Any:
    """The request body parsed as JSON.

    Raises :class:`PayloadTooLarge` past ``max_bytes`` and :class:`BadRequest`
    for malformed JSON. An empty body returns ``empty`` when given, else is a
    :class:`BadRequest`.
    """
    raw = await read_body(request, max_bytes)
    if not raw.strip():
        if empty is not ...:
            return empty
        raise BadRequest("the request body is empty; a JSON document is expected")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None


def json_response(
    data: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """``data`` as an ``application/json`` response, serialised by orjson."""
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=headers
    )


def presented_secret(request: web.Request) -> str | None:
    """The credential a request carries: a bearer token, or the password of HTTP Basic.

    Basic is how Eureka and Spring Cloud Config clients authenticate (the
    user and password in the service URL, ``http://user:TOKEN@host/eureka/``);
    the user name is not checked. None when there is no usable credential.
    """
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        return given.strip()
    if scheme == "basic":
        try:
            decoded = base64.b64decode(given.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        _, sep, password = decoded.partition(":")
        return password if sep else None
    return None


def require_bearer(request: web.Request, token: Secret, what: str) -> None:
    """:class:`Unauthorized` unless ``token`` is empty or the request carries it.

    The token is accepted as a bearer (``Authorization: Bearer <token>``) or
    as the password of HTTP Basic (:func:`presented_secret`). ``what`` names
    the variable holding the token in the error, e.g. ``REGISTRY_TOKEN``. The
    comparison takes the same time whatever the token.
    """
    if not token:
        return
    given = presented_secret(request)
    if given is None or not hmac.compare_digest(given.encode(), token.reveal().encode()):
        realm = what.split("_")[0].lower()
        raise Unauthorized(
            f"this request requires 'Authorization: Bearer <{what}>'",
            headers={"WWW-Authenticate": f'Bearer realm="essaim-{realm}"'},
        )


def redis_unavailable(owner: str) -> Middleware:
    """Middleware: a Redis error escaping a handler becomes 503 with ``Retry-After: 1``.

    ``owner`` names the component in the detail ("the registry's Redis is
    unavailable: ..."), so the client knows what to wait for, not a 500.
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except REDIS_ERRORS as exc:
            raise ServiceUnavailable(
                f"the {owner}'s Redis is unavailable: {exc}", headers={"Retry-After": "1"}
            ) from None

    return middleware


async def redis_health(redis: Redis, timeout: float = 1.0) -> bool:
    """Whether ``redis`` answers PING within ``timeout`` seconds."""
    try:
        await asyncio.wait_for(redis.ping(), timeout)
        return True
    except REDIS_ERRORS:
        return False
