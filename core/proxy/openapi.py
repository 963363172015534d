"""The gateway's OpenAPI documents, both served on the admin port.

:func:`build`, ``GET /openapi.json``: the admin API, one document for both
shapes of the admin port: a single gateway process, and the parent of
``--workers N`` processes, whose answers merge its workers' (it adds
``/workers`` and ``?per_worker=1``).

:func:`traffic`, ``GET /openapi-traffic.json``: what the traffic port
answers itself under ``/-/`` (the health check for load balancers, the
session endpoints of :mod:`core.proxy.bff`), for the clients that use them;
everything else on that port is routed to services, which document their own.
"""

from __future__ import annotations

from core.openapi.schemas import ANY, NUMBER, STRING, Schema, array_of, json, obj, problem
from core.openapi.spec import Spec

__all__ = ["build", "traffic"]


def build(*, workers: bool) -> Spec:
    """The admin API; ``workers``: as the parent of several worker processes serves it."""
    spec = Spec(
        "Essaim gateway admin",
        "What the gateway routes to, how its upstreams are doing, its metrics. Loopback only.",
    )
    per_worker = (
        {"per_worker": ({"type": "string", "enum": ["0", "1"]}, "1: each worker's own answer")}
        if workers
        else None
    )
    spec.op("GET", "/routes", "The route table in force, its version and source",
            query=per_worker, redis=False, responses=[(200, json(ANY))])  # fmt: skip
    spec.op("GET", "/upstreams", "Every upstream: endpoints, ejections, breaker, counts",
            query=per_worker, redis=False, responses=[(200, json(ANY))])  # fmt: skip
    # build: which build of the hot path runs (mypyc or interpreted) and why (core/native/loader.py).
    build_ = obj(build={"type": "string", "enum": ["mypyc", "interpreted"]}, reason=STRING)
    health = obj(required=("status",), status=STRING, build=build_)
    spec.operations(
        "Serving, and how Redis, the registry and config are doing",
        health,
        (health, "no worker answers"),
        metrics="Prometheus metrics (summed over the workers)",
    )
    spec.op("GET", "/openapi-traffic.json", "The traffic port's own endpoints (/-/)",
            tags=["operations"], redis=False, responses=[(200, json(ANY))])  # fmt: skip
    if workers:
        spec.op(
            "GET",
            "/workers",
            "The worker processes: slot, pid, state, restarts",
            redis=False,
            responses=[(200, json(obj(required=(), workers=ANY)))],
        )
    return spec


#: A session as the session endpoints answer it (core.security.sessions.Session.document).
SESSION = obj(
    user=STRING,
    sub=STRING,
    roles=array_of(STRING),
    expires_at={**NUMBER, "description": "Unix time at which the session ends unless used again"},
    absolute_expires_at={**NUMBER, "description": "Unix time at which it ends however busy"},
    csrf={**STRING, "description": "echo in X-CSRF-Token on state-changing requests"},
)
_COOKIES = {
    "Set-Cookie": "essaim_session (HttpOnly) and essaim_csrf; SameSite=Strict; Path=/",
}
_CSRF_REFUSED = problem(403, "the CSRF checks failed: X-CSRF-Token and an own Origin are needed")


def _logged_out(description: str) -> tuple[int, Schema]:
    """A 204 answer that clears both session cookies."""
    cleared = {"description": "both cookies cleared (Max-Age=0)", "schema": STRING}
    return 204, {"description": description, "headers": {"Set-Cookie": cleared}}


def traffic(health_path: str) -> Spec:
    """The traffic port's own endpoints: ``health_path`` (none when empty) and ``/-/session``."""
    spec = Spec(
        "Essaim gateway edge",
        "What the gateway's traffic port answers itself, under /-/ (no route or service name "
        "can take it). Every other path is routed to a service. Sessions: the browser holds "
        "only an HttpOnly cookie; the gateway keeps the auth service's tokens in Redis.",
    )
    if health_path:
        status = obj(status={"type": "string", "enum": ["UP", "DRAINING"]})
        spec.op("GET", health_path, "For load balancers: 200 while serving, 503 once draining",
                tags=["operations"], redis=False,
                responses=[(200, json(status)), (503, json(status, "draining: stop sending"))],
                description="Checks neither Redis nor the route table (a bad config push must "
                            "not take every gateway out of rotation). HEAD too.")  # fmt: skip
    login = obj(
        username={**STRING, "minLength": 1, "maxLength": 128},
        password={**STRING, "minLength": 1, "maxLength": 1024},
    )
    spec.op("POST", "/-/session", "Log in: a session and its cookies",
            tags=["sessions"],
            body={"application/json": login, "application/x-www-form-urlencoded": login},
            responses=[(200, json(SESSION, "logged in", headers=_COOKIES)),
                       problem(400, "malformed JSON or form, or a missing or empty field"),
                       problem(401, "wrong credentials (no cookie is set)"),
                       problem(403, "a cross-origin Origin"),
                       problem(413, "a body over 16 KiB"),
                       problem(415, "neither JSON nor a form"),
                       problem(429, "the auth service throttles this user or address "
                                    "(Retry-After)"),
                       problem(503, "Redis or the auth service is away")])  # fmt: skip
    spec.op("GET", "/-/session", "The current session (renews its idle timeout)",
            tags=["sessions"],
            responses=[(200, json(SESSION)),
                       problem(401, "no session, or one that ended (its cookies cleared)")])  # fmt: skip
    spec.op("DELETE", "/-/session", "Log out: the session deleted, its refresh token revoked",
            tags=["sessions"],
            headers={"X-CSRF-Token": (STRING, "the session's csrf value")},
            responses=[_logged_out("logged out (also when there was no session)"),
                       _CSRF_REFUSED])  # fmt: skip
    spec.op("POST", "/-/session/logout", "Log out from an HTML form (as DELETE /-/session)",
            tags=["sessions"],
            body={"application/x-www-form-urlencoded": obj(required=(), csrf=STRING)},
            body_required=False,
            headers={"X-CSRF-Token": (STRING, "the session's csrf value, or a csrf form field")},
            responses=[_logged_out("logged out"), _CSRF_REFUSED])  # fmt: skip
    return spec
