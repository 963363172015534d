"""The error tree and RFC 9457 problem details.

Every error Essaim raises derives from :class:`EssaimError`. Errors that a
client sees derive from :class:`HTTPProblem`, carry ``status``, ``title`` and
``detail``, and render as ``application/problem+json``. :func:`problem_middleware`
turns any exception escaping an aiohttp handler into problem details, so that a
client never sees a traceback or an HTML error page.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web

log = logging.getLogger("essaim.errors")

PROBLEM_JSON = "application/problem+json"


class EssaimError(Exception):
    """Root of every error raised by Essaim."""


class SettingsError(EssaimError, ValueError):
    """A setting is missing or malformed; the message is one line naming it."""


class StartupError(EssaimError, RuntimeError):
    """A component could not start (port taken, dependency refused, bad config)."""


class UpstreamError(EssaimError, ConnectionError):
    """An upstream service could not be reached or failed to answer."""


class HTTPProblem(EssaimError):
    """An error answered to an HTTP client as RFC 9457 problem details.

    ``type`` defaults to ``about:blank`` (the title is then the status phrase);
    ``extra`` members are added to the JSON body, ``headers`` to the response.
    """

    status: int = 500

    def __init__(
        self,
        detail: str = "",
        *,
        title: str | None = None,
        type: str = "about:blank",
        headers: Mapping[str, str] | None = None,
        status: int | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        if status is not None:
            self.status = status
        self.detail = detail
        self.title = title or HTTPStatus(self.status).phrase
        self.type = type
        self.headers = dict(headers or {})
        self.extra = extra

    def body(self, instance: str | None = None) -> dict[str, Any]:
        doc: dict[str, Any] = {"type": self.type, "title": self.title, "status": self.status}
        if self.detail:
            doc["detail"] = self.detail
        if instance:
            doc["instance"] = instance
        doc.update(self.extra)
        return doc

    def to_response(self, instance: str | None = None) -> web.Response:
        return web.Response(
            status=self.status,
            body=orjson.dumps(self.body(instance)),
            content_type=PROBLEM_JSON,
            headers=self.headers,
        )


class BadRequest(HTTPProblem):
    status = 400


class Unauthorized(HTTPProblem):
    status = 401


class Forbidden(HTTPProblem):
    status = 403


class NotFound(HTTPProblem):
    status = 404


class MethodNotAllowed(HTTPProblem):
    status = 405


class RequestTimeout(HTTPProblem, asyncio.TimeoutError):
    status = 408


class Conflict(HTTPProblem):
    status = 409


class PreconditionFailed(HTTPProblem):
    status = 412


class PayloadTooLarge(HTTPProblem):
    status = 413


class UnsupportedMediaType(HTTPProblem):
    status = 415


class Unprocessable(HTTPProblem):
    """The request was well-formed but a value is invalid (422)."""

    status = 422


class TooManyRequests(HTTPProblem):
    status = 429


class HeaderTooLarge(HTTPProblem):
    status = 431


class InternalError(HTTPProblem):
    status = 500


class BadGateway(HTTPProblem, UpstreamError):
    status = 502


class ServiceUnavailable(HTTPProblem):
    status = 503


class GatewayTimeout(HTTPProblem, UpstreamError):
    status = 504


FAILURE_HEADER = "Essaim-Failure"
"""Response header that says whose failure a 5xx is; ``dependency``: not the answering service's.

The gateway and service calls read it on 5xx answers only, so that a
service reporting that a service *it* calls is down does not count against
its own breaker and ejection. One header, checked as bytes, is what the
gateway's data plane can afford on its hot path; the problem ``type`` says
the same thing to people.
"""

DEPENDENCY_FAILURE = "dependency"
"""The value of :data:`FAILURE_HEADER` on a dependency's failure."""

DEPENDENCY_UNAVAILABLE_TYPE = "urn:essaim:problem:dependency-unavailable"
"""The problem ``type`` of a 503 caused by a dependency's failure."""


class DependencyUnavailable(ServiceUnavailable):
    """503: a service this one depends on failed or could not be reached.

    Marked with ``Essaim-Failure: dependency`` and the problem type
    :data:`DEPENDENCY_UNAVAILABLE_TYPE`; ``dependency`` names the service. A
    ``Retry-After`` of 1 second is sent unless one is given.
    """

    def __init__(
        self,
        dependency: str,
        detail: str = "",
        *,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        merged = {"Retry-After": "1", **(headers or {}), FAILURE_HEADER: DEPENDENCY_FAILURE}
        super().__init__(
            detail,
            title="Dependency Unavailable",
            type=DEPENDENCY_UNAVAILABLE_TYPE,
            headers=merged,
            dependency=dependency,
            **extra,
        )
        self.dependency = dependency

    @classmethod
    def from_problem(cls, problem: HTTPProblem) -> DependencyUnavailable:
        """The 503 to answer for ``problem``, a failure of the dependency named in its ``dependency``."""
        extra = {k: v for k, v in problem.extra.items() if k != "dependency"}
        retry_after = problem.headers.get("Retry-After")
        return cls(
            str(problem.extra["dependency"]),
            problem.detail,
            headers={"Retry-After": retry_after} if retry_after else None,
            **extra,
        )


def problem_from_http_exception(exc: web.HTTPException) -> HTTPProblem:
    """Problem details for one of aiohttp's own HTTP exceptions (404 no route, 405...)."""
    detail = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else ""
    headers = {k: v for k, v in exc.headers.items() if k.lower() in {"allow", "retry-after"}}
    return HTTPProblem(detail, status=exc.status, headers=headers)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def public_path(request: web.Request, path: str | None = None) -> str:
    """``path`` (default: the request's) as the client reaches it, behind the gateway's prefix.

    The gateway says in ``X-Forwarded-Prefix`` what it stripped (``/customers``
    of ``/customers/customers/7`` on a discovery route); a value that is not
    a path is ignored.
    """
    prefix = request.headers.get("X-Forwarded-Prefix", "").rstrip("/")
    if prefix and not prefix.startswith("/"):
        prefix = ""
    return prefix + (request.path if path is None else path)


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render every error as problem details; log unexpected ones with their traceback.

    The ``instance`` is the public path (:func:`public_path`): the one the
    client asked for, through the gateway or not.
    """
    try:
        return await handler(request)
    except HTTPProblem as exc:
        return exc.to_response(public_path(request))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return problem_from_http_exception(exc).to_response(public_path(request))
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        problem = InternalError("the server failed to handle this request")
        return problem.to_response(public_path(request))
