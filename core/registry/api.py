"""The registry's HTTP API: handlers, application keys and the dynamic settings.

The handlers are thin: validation and every read and write are in
:mod:`core.registry.store`; the SSE stream in :mod:`core.registry.events`.
``registry.py`` (the entry point) builds the application around them.
"""

from __future__ import annotations

import dataclasses
import re

from aiohttp import web
from prometheus_client import Gauge

from core.config.client import ConfigClient, TypedView
from core.errors import Forbidden, NotFound
from core.http import json_response, read_json, redis_health
from core.metrics import HTTPMetrics
from core.redis import Redis
from core.registry import openapi
from core.registry.credentials import Credentials, Grant
from core.registry.events import EventHub, stream_events
from core.registry.expiry import Expirer
from core.registry.store import (
    Instance,
    RegistryStore,
    check_instance_id,
    check_service,
    parse_patch,
    parse_registration,
)
from core.registry.targets import TargetPolicy

BODY_LIMIT = 64 * 1024


@dataclasses.dataclass(frozen=True)
class Dynamic:
    """The settings that configsvc may change while the registry runs (document ``registry``)."""

    default_ttl: int = 10
    sweep_interval: float = 0.5

    def __post_init__(self) -> None:
        if not 1 <= self.default_ttl <= 300:
            raise ValueError(f"default_ttl: expected 1-300, got {self.default_ttl}")
        if not 0 < self.sweep_interval <= 60:
            raise ValueError(f"sweep_interval: expected (0, 60] seconds, got {self.sweep_interval}")


# Typed application keys, set by ``registry.build_app`` and its cleanup contexts.
CREDENTIALS = web.AppKey("credentials", Credentials)
TARGETS = web.AppKey("targets", TargetPolicy)
REDIS: web.AppKey[Redis] = web.AppKey("redis")
STORE = web.AppKey("store", RegistryStore)
HUB = web.AppKey("hub", EventHub)
METRICS = web.AppKey("metrics", HTTPMetrics)
EXPIRER = web.AppKey("expirer", Expirer)
SSE_CLIENTS = web.AppKey("sse_clients", Gauge)
CONFIG = web.AppKey("config", ConfigClient)
DYNAMIC = web.AppKey("dynamic", TypedView[Dynamic])


def authorize_write(
    request: web.Request, service: str, *, status_change: bool = False
) -> Grant | None:
    """The one check of a write to ``service``'s instances, whatever the API (native, Eureka).

    401 unless the request carries the operator token, a service token or
    (for a change of status, ``status_change``) a status token
    (:mod:`core.registry.credentials`), as a bearer or as the password of
    HTTP Basic; 403 when its token may write another service only, or
    status only. The grant (None while writes are open).
    """
    return request.app[CREDENTIALS].authorize(request, service, status_change=status_change)


async def check_target(request: web.Request, instance: Instance) -> None:
    """422 when ``instance``'s address is one the registry refuses (:mod:`core.registry.targets`)."""
    await request.app[TARGETS].check(instance.host, instance.port)


def _names(request: web.Request, *, authorized: bool = False) -> tuple[str, str]:
    """The service and instance id of a write, once its token may write that service.

    401/403 come first, so that a client without the right token learns
    nothing about the names it tried (``authorized``: the caller checked).
    """
    service = request.match_info["service"]
    if not authorized:
        authorize_write(request, service)
    return check_service(service), check_instance_id(request.match_info["id"])


async def register(request: web.Request) -> web.Response:
    service, instance_id = _names(request)
    body = await read_json(request, BODY_LIMIT)
    default_ttl = request.app[DYNAMIC].current.default_ttl
    instance = parse_registration(service, instance_id, body, default_ttl)
    await check_target(request, instance)
    rev, created = await request.app[STORE].register(instance)
    request.app[EXPIRER].poke()  # its deadline may come before the one the expirer waits for
    stored = await request.app[STORE].get(service, instance_id)
    doc = (stored or instance).to_dict()
    return json_response({"rev": rev, "instance": doc}, status=201 if created else 200)


async def heartbeat(request: web.Request) -> web.Response:
    service, instance_id = _names(request)
    if not await request.app[STORE].heartbeat(service, instance_id):
        raise NotFound(
            f"instance {service}/{instance_id} is not registered (unknown or expired): register again"
        )
    return web.Response(status=204)


async def patch(request: web.Request) -> web.Response:
    grant = authorize_write(request, request.match_info["service"], status_change=True)
    service, instance_id = _names(request, authorized=True)
    changes = parse_patch(await read_json(request, BODY_LIMIT))
    if grant is not None and grant.status_only and set(changes) != {"status"}:
        raise Forbidden(f"{grant.describe()}: not {', '.join(sorted(set(changes) - {'status'}))}")
    updated = await request.app[STORE].update(service, instance_id, changes)
    if updated is None:
        raise NotFound(f"instance {service}/{instance_id} is not registered")
    current = await request.app[STORE].get(service, instance_id)
    return json_response({"instance": (current or updated).to_dict()})


async def deregister(request: web.Request) -> web.Response:
    service, instance_id = _names(request)
    if not await request.app[STORE].deregister(service, instance_id):
        raise NotFound(f"instance {service}/{instance_id} is not registered")
    return web.Response(status=204)


async def list_services(request: web.Request) -> web.Response:
    store = request.app[STORE]
    rev, snapshot = await store.snapshot()
    services = {
        name: {
            "instances": len(insts),
            "up": sum(1 for i in insts.values() if i.status == "UP"),
        }
        for name, insts in sorted(snapshot.items())
    }
    return json_response({"rev": rev, "services": services})


async def list_instances(request: web.Request) -> web.Response:
    service = check_service(request.match_info["service"])
    store = request.app[STORE]
    everything = request.query.get("all", "") not in ("", "0", "false")
    rev, instances = await store.listing(service)
    if not instances and not await store.known(service):
        raise NotFound(f"no service named {service!r} is registered")
    if not everything:
        instances = [i for i in instances if i.status == "UP"]
    return json_response(
        {
            "service": service,
            "rev": rev,
            "instances": [i.to_dict() for i in instances],
        }
    )


_LABEL_UNSAFE = re.compile(r"[^a-zA-Z0-9_]")


async def prometheus_targets(request: web.Request) -> web.Response:
    """``GET /v1/prometheus/targets``: every UP instance, in Prometheus's HTTP SD format.

    One target group per instance (``http_sd_configs``): ``targets`` is its
    ``host:port``; ``labels`` carry ``service`` and ``instance_id`` (kept on
    every series scraped), ``__scheme__``, and the instance's metadata as
    ``__meta_essaim_metadata_<key>`` for relabelling.
    """
    _, snapshot = await request.app[STORE].snapshot()
    groups = []
    for name, instances in sorted(snapshot.items()):
        for inst in sorted(instances.values(), key=lambda i: i.id):
            if inst.status != "UP":
                continue
            host = f"[{inst.host}]" if ":" in inst.host else inst.host
            labels = {"service": name, "instance_id": inst.id, "__scheme__": inst.scheme}
            for key, value in inst.metadata.items():
                labels[f"__meta_essaim_metadata_{_LABEL_UNSAFE.sub('_', key)}"] = str(value)
            groups.append({"targets": [f"{host}:{inst.port}"], "labels": labels})
    return json_response(groups)


async def events(request: web.Request) -> web.StreamResponse:
    """``GET /v1/events?since=REV``: see :func:`core.registry.events.stream_events`."""
    app = request.app
    gauge = app[SSE_CLIENTS]
    gauge.inc()
    try:
        return await stream_events(request, app[STORE], app[HUB])
    finally:
        gauge.dec()


async def health(request: web.Request) -> web.Response:
    app = request.app
    redis_ok = await redis_health(app[REDIS])
    body = {
        "status": "UP" if redis_ok else "DEGRADED",
        "redis": "UP" if redis_ok else "DOWN",
        "config": app[CONFIG].describe(),
    }
    return json_response(body, status=200 if redis_ok else 503)


def add_routes(app: web.Application, metrics: HTTPMetrics) -> None:
    """The registry's routes, as in DESIGN.md's Registry section."""
    base = "/v1/services/{service}/instances/{id}"
    app.router.add_put(base, register)
    app.router.add_put(base + "/heartbeat", heartbeat)
    app.router.add_patch(base, patch)
    app.router.add_delete(base, deregister)
    app.router.add_get("/v1/services", list_services)
    app.router.add_get("/v1/services/{service}", list_instances)
    app.router.add_get("/v1/events", events)
    app.router.add_get("/v1/prometheus/targets", prometheus_targets)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics.handle)
    app.router.add_get("/openapi.json", openapi.build().handle)
