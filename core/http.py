"""Small HTTP helpers shared by the control-plane services (registry, configsvc, services).

Bodies are read with a hard size limit before parsing, so that a client can't
make a service buffer more than it allows, and malformed input becomes a
problem-details error before any state is touched.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from core.errors import BadRequest, PayloadTooLarge

__all__ = ["json_response", "read_body", "read_json"]


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
