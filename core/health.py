"""Liveness and readiness, apart: ``/health/live`` and ``/health/ready`` beside ``/health``.

- ``GET /health/live``: 200 ``{"status": "UP"}`` whenever the process answers
  at all. It checks nothing else on purpose: a liveness probe restarts what
  fails it, and restarting the registry because Redis is away would only add
  a second outage to the first.
- ``GET /health/ready``: whether the component can do its job now. Each
  :data:`Check` of the component gives ``(ok, detail)``; 200 with
  ``{"status": "UP", "checks": {...}}`` when all pass, else 503 with
  ``{"status": "DOWN", "failing": [names], "checks": {...}}``. A check that
  raises or takes longer than ``timeout`` seconds fails.
- ``GET /health`` stays each component's own detailed page.

:func:`config_check` is the readiness check of a component following
configsvc: a version it rejected (and the last good one still in force) fails
it until a valid version is applied.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from aiohttp import web

from core import log
from core.http import json_response, redis_health
from core.redis import Redis

__all__ = ["Check", "add_routes", "config_check", "live", "redis_check"]

logger = log.get("health")

Check = Callable[[], Awaitable[tuple[bool, Any]]]
"""A readiness check: ``(ok, detail)``; the detail is shown under the check's name."""


async def live(request: web.Request) -> web.Response:
    """``GET /health/live``: 200 while the process answers."""
    return json_response({"status": "UP"})


def ready_handler(
    checks: Callable[[web.Application], Mapping[str, Check]], timeout: float = 2.0
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The ``/health/ready`` handler running ``checks(app)`` concurrently."""

    async def ready(request: web.Request) -> web.Response:
        named = checks(request.app)
        results = await asyncio.gather(
            *(_run(name, check, timeout) for name, check in named.items())
        )
        report = dict(zip(named, results, strict=True))
        failing = [name for name, (ok, _) in report.items() if not ok]
        body: dict[str, Any] = {"status": "DOWN" if failing else "UP"}
        if failing:
            body["failing"] = failing
        body["checks"] = {
            name: {"status": "UP" if ok else "DOWN", "detail": detail}
            for name, (ok, detail) in report.items()
        }
        return json_response(body, status=503 if failing else 200)

    return ready


async def _run(name: str, check: Check, timeout: float) -> tuple[bool, Any]:
    try:
        return await asyncio.wait_for(check(), timeout)
    except TimeoutError:
        return False, f"no answer within {timeout:g}s"
    except Exception as exc:
        logger.exception("readiness check %s failed", name)
        return False, f"{type(exc).__name__}: {exc}"


def add_routes(
    app: web.Application, checks: Callable[[web.Application], Mapping[str, Check]]
) -> None:
    """Add ``/health/live`` and ``/health/ready`` (with ``checks(app)``, read per request)."""
    app.router.add_get("/health/live", live)
    app.router.add_get("/health/ready", ready_handler(checks))


def redis_check(redis: Redis) -> Check:
    """Ready while ``redis`` answers PING."""

    async def check() -> tuple[bool, Any]:
        ok = await redis_health(redis)
        return ok, "reachable" if ok else "unreachable"

    return check


class Configured(Protocol):
    """What :func:`config_check` reads of a :class:`core.config.client.ConfigClient`."""

    @property
    def version(self) -> str | None: ...
    @property
    def source(self) -> str: ...
    @property
    def last_rejection(self) -> dict[str, Any] | None: ...


def config_check(client: Configured) -> Check:
    """Ready unless the last config version offered was rejected (the last good one kept).

    Being on a cached copy or on defaults because configsvc is away is not
    unready: the component works on what it last knew (it shows on ``/health``).
    """

    async def check() -> tuple[bool, Any]:
        rejection = client.last_rejection
        detail: dict[str, Any] = {"version": client.version, "source": client.source}
        if rejection is not None:
            detail["rejected"] = rejection
            return False, detail
        return True, detail

    return check
