"""The discovery service: ``python -m registry``.

An HTTP API over the registry's Redis state (:mod:`core.registry_store`):
register, heartbeat, change, deregister and list instances, and a
Server-Sent Events stream of changes. The process holds no state of its own:
restarting it loses nothing. It also runs the expirer, which turns an expired
instance key into a ``down`` event within a second, from keyspace
notifications when the server allows them and from a periodic sweep always.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import ipaddress
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import orjson
from aiohttp import web
from prometheus_client import Counter, Gauge

from core import log
from core.config_client import ConfigClient, TypedView
from core.errors import (
    BadRequest,
    NotFound,
    ServiceUnavailable,
    SettingsError,
    Unauthorized,
    problem_middleware,
)
from core.http import json_response, read_json
from core.metrics import HTTPMetrics
from core.redis import REDIS_ERRORS, UNAVAILABLE, Backoff, Redis, RedisError, Subscription, connect
from core.registry_store import (
    CHANNEL,
    INSTANCE_PREFIX,
    RegistryStore,
    check_instance_id,
    check_service,
    parse_instance_key,
    parse_patch,
    parse_registration,
)
from core.runner import Site, run
from core.settings import CommonSettings, Secret, load, option
from core.tasks import TaskSet

logger = log.get("registry")

BODY_LIMIT = 64 * 1024
SSE_QUEUE = 1000
SSE_KEEPALIVE = 15.0


@dataclasses.dataclass(frozen=True)
class Settings(CommonSettings):
    """The registry's settings (prefix ``REGISTRY_``)."""

    port: int = dataclasses.field(default=8761, metadata=option("TCP port to listen on"))
    token: Secret = dataclasses.field(
        default=Secret(""),
        metadata=option("bearer token required for writes; required off loopback"),
    )
    default_ttl: int = dataclasses.field(
        default=10, metadata=option("TTL in seconds of an instance that gives none")
    )
    sweep_interval: float = dataclasses.field(
        default=0.5, metadata=option("seconds between sweeps for expired instances")
    )
    config_url: str | None = dataclasses.field(
        default=None,
        metadata=option("configsvc URL; default_ttl and sweep_interval then follow it live"),
    )
    config_profile: str = dataclasses.field(
        default="default", metadata=option("profile of the registry's config in configsvc")
    )
    config_cache_dir: str | None = dataclasses.field(
        default=None, metadata=option("directory for the last-known config copy (none: no copy)")
    )

    def validate(self) -> None:
        super().validate()
        if not 1 <= self.default_ttl <= 300:
            raise SettingsError(f"REGISTRY_DEFAULT_TTL: expected 1-300, got {self.default_ttl}")
        if self.sweep_interval <= 0:
            raise SettingsError(f"REGISTRY_SWEEP_INTERVAL: expected > 0, got {self.sweep_interval}")
        if not self.token and not _is_loopback(self.host):
            raise SettingsError(
                f"REGISTRY_TOKEN: required when listening on {self.host} (not loopback): "
                "anyone who can register can steal a service's traffic"
            )


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


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class EventHub:
    """One subscription to the change channel, fanned out to every SSE client's queue.

    A client whose queue overflows is dropped (its stream ends); it reconnects
    with ``Last-Event-ID`` and reads what it missed from the retained events.
    """

    def __init__(self, redis: Redis) -> None:
        self.queues: set[asyncio.Queue[str | None]] = set()
        self.subscription = Subscription(redis, [CHANNEL], self._on_message, name="registry:events")

    async def _on_message(self, channel: str, data: str) -> None:
        for queue in list(self.queues):
            try:
                queue.put_nowait(data)
            except asyncio.QueueFull:
                # Too slow: end its stream; it resumes from Last-Event-ID.
                self.queues.discard(queue)
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait(None)

    def open(self) -> asyncio.Queue[str | None]:
        queue: asyncio.Queue[str | None] = asyncio.Queue(SSE_QUEUE)
        self.queues.add(queue)
        return queue

    def close(self, queue: asyncio.Queue[str | None]) -> None:
        self.queues.discard(queue)

    def shutdown(self) -> None:
        """End every open stream (graceful stop)."""
        for queue in list(self.queues):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)
        self.queues.clear()


class Expirer:
    """Publishes ``down`` for expired instances: keyspace notifications plus a sweep."""

    def __init__(
        self,
        redis: Redis,
        store: RegistryStore,
        sweep_interval: Callable[[], float],
        expired: Counter,
    ) -> None:
        self.redis = redis
        self.store = store
        self._sweep_interval = sweep_interval
        self.expired = expired
        self.notifications = False
        self._warned = False
        db = int(redis.connection_pool.connection_kwargs.get("db", 0))
        self.subscription = Subscription(
            redis,
            [f"__keyevent@{db}__:expired"],
            self._on_expired,
            on_connect=self._enable_notifications,
            name="registry:expiry",
        )

    async def _enable_notifications(self) -> None:
        """Turn on expired-key events (``Ex``) unless the server refuses CONFIG."""
        try:
            reply = await self.redis.config_get("notify-keyspace-events")
            current = str(reply.get("notify-keyspace-events") or "")
            if "E" not in current or ("x" not in current and "A" not in current):
                await self.redis.config_set("notify-keyspace-events", current + "".join(
                    c for c in "Ex" if c not in current
                ))  # fmt: skip
            self.notifications = True
        except RedisError as exc:
            if isinstance(exc, UNAVAILABLE):
                raise
            if not self._warned:
                logger.warning(
                    "keyspace notifications unavailable (%s); expiry relies on the %.1fs sweep",
                    exc, self._sweep_interval(),
                )  # fmt: skip
                self._warned = True
            self.notifications = False

    async def _on_expired(self, channel: str, key: str) -> None:
        if not key.startswith(INSTANCE_PREFIX):
            return
        parsed = parse_instance_key(key)
        if parsed is not None and await self.store.expire(*parsed):
            self.expired.inc()
            logger.info("instance %s/%s expired: down", *parsed)

    async def sweep_forever(self) -> None:
        backoff = Backoff()
        while True:
            try:
                count = await self.store.sweep()
                if count:
                    self.expired.inc(count)
                    logger.info("sweep: %d expired instance(s) published down", count)
                backoff.reset()
                await asyncio.sleep(self._sweep_interval())
            except REDIS_ERRORS as exc:
                if backoff.attempt == 0:
                    logger.warning("sweep: Redis unavailable (%s)", exc)
                await backoff.sleep()


# Typed application keys.
SETTINGS = web.AppKey("settings", Settings)
REDIS = web.AppKey("redis", Redis)
STORE = web.AppKey("store", RegistryStore)
HUB = web.AppKey("hub", EventHub)
METRICS = web.AppKey("metrics", HTTPMetrics)
EXPIRER = web.AppKey("expirer", Expirer)
SSE_CLIENTS = web.AppKey("sse_clients", Gauge)
CONFIG = web.AppKey("config", ConfigClient)
DYNAMIC = web.AppKey("dynamic", TypedView[Dynamic])

# ----------------------------------------------------------------------------- handlers


def _require_token(request: web.Request) -> None:
    token = request.app[SETTINGS].token
    if not token:
        return
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), token.reveal().encode()
    ):
        raise Unauthorized(
            "this write requires 'Authorization: Bearer <REGISTRY_TOKEN>'",
            headers={"WWW-Authenticate": 'Bearer realm="essaim-registry"'},
        )


def _names(request: web.Request) -> tuple[str, str]:
    return (
        check_service(request.match_info["service"]),
        check_instance_id(request.match_info["id"]),
    )


async def register(request: web.Request) -> web.Response:
    _require_token(request)
    service, instance_id = _names(request)
    body = await read_json(request, BODY_LIMIT)
    default_ttl = request.app[DYNAMIC].current.default_ttl
    instance = parse_registration(service, instance_id, body, default_ttl)
    rev, created = await request.app[STORE].register(instance)
    stored = await request.app[STORE].get(service, instance_id)
    doc = (stored or instance).to_dict()
    return json_response({"rev": rev, "instance": doc}, status=201 if created else 200)


async def heartbeat(request: web.Request) -> web.Response:
    _require_token(request)
    service, instance_id = _names(request)
    if not await request.app[STORE].heartbeat(service, instance_id):
        raise NotFound(
            f"instance {service}/{instance_id} is not registered (unknown or expired): register again"
        )
    return web.Response(status=204)


async def patch(request: web.Request) -> web.Response:
    _require_token(request)
    service, instance_id = _names(request)
    changes = parse_patch(await read_json(request, BODY_LIMIT))
    updated = await request.app[STORE].update(service, instance_id, changes)
    if updated is None:
        raise NotFound(f"instance {service}/{instance_id} is not registered")
    current = await request.app[STORE].get(service, instance_id)
    return json_response({"instance": (current or updated).to_dict()})


async def deregister(request: web.Request) -> web.Response:
    _require_token(request)
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
    instances = await store.instances(service)
    if not instances and not await store.known(service):
        raise NotFound(f"no service named {service!r} is registered")
    if not everything:
        instances = [i for i in instances if i.status == "UP"]
    return json_response(
        {
            "service": service,
            "rev": await store.rev(),
            "instances": [i.to_dict() for i in instances],
        }
    )


def _sse(event: str | None, data: str, event_id: int | None = None) -> bytes:
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    if event:
        lines.append(f"event: {event}")
    lines.append(f"data: {data}")
    return ("\n".join(lines) + "\n\n").encode()


async def events(request: web.Request) -> web.StreamResponse:
    """``GET /v1/events?since=REV``: retained events after REV, then live ones, as SSE.

    ``Last-Event-ID`` (sent by EventSource on reconnect) takes the place of
    ``since``. When what follows REV is no longer retained, a ``resync`` event
    (data: the current revision) tells the client to list everything again.
    """
    raw = request.query.get("since") or request.headers.get("Last-Event-ID")
    store = request.app[STORE]
    hub = request.app[HUB]
    try:
        since = int(raw) if raw is not None else None
    except ValueError:
        raise BadRequest(f"'since' must be a revision number, got {str(raw)[:40]!r}") from None
    if since is not None and since < 0:
        raise BadRequest("'since' must be >= 0")
    queue = hub.open()
    request.app[SSE_CLIENTS].inc()
    try:
        if since is None:
            since = await store.rev()
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        await response.write(f": essaim registry events after rev {since}\n\n".encode())
        last = await _catch_up(response, store, since)
        while True:
            try:
                data = await asyncio.wait_for(queue.get(), SSE_KEEPALIVE)
            except TimeoutError:
                await response.write(b": keepalive\n\n")
                continue
            if data is None:
                break
            rev = int(orjson.loads(data)["rev"])
            if rev <= last:
                continue
            if rev != last + 1:
                last = await _catch_up(response, store, last)
                if rev <= last:
                    continue
            await response.write(_sse("change", data, rev))
            last = rev
        return response
    finally:
        request.app[SSE_CLIENTS].dec()
        hub.close(queue)


async def _catch_up(response: web.StreamResponse, store: RegistryStore, since: int) -> int:
    """Write retained events after ``since``; return the revision reached."""
    while True:
        backlog, resync = await store.events_since(since)
        if resync:
            current = await store.rev()
            await response.write(_sse("resync", orjson.dumps({"rev": current}).decode(), current))
            return current
        if not backlog:
            return since
        for data in backlog:
            since = int(orjson.loads(data)["rev"])
            await response.write(_sse("change", data, since))


async def health(request: web.Request) -> web.Response:
    app = request.app
    try:
        await asyncio.wait_for(app[REDIS].ping(), 1.0)
        redis_ok = True
    except REDIS_ERRORS:
        redis_ok = False
    body = {
        "status": "UP" if redis_ok else "DEGRADED",
        "redis": "UP" if redis_ok else "DOWN",
        "keyspace_notifications": app[EXPIRER].notifications,
        "config": app[CONFIG].describe(),
    }
    return json_response(body, status=200 if redis_ok else 503)


@web.middleware
async def redis_unavailable(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Redis away: 503 with ``Retry-After`` rather than a 500."""
    try:
        return await handler(request)
    except REDIS_ERRORS as exc:
        raise ServiceUnavailable(
            f"the registry's Redis is unavailable: {exc}", headers={"Retry-After": "1"}
        ) from None


# ----------------------------------------------------------------------------- app


async def _redis_ctx(app: web.Application) -> AsyncIterator[None]:
    client = connect(app[SETTINGS].redis_url)
    app[REDIS] = client
    app[STORE] = RegistryStore(client)
    yield
    await client.aclose()


async def _config_ctx(app: web.Application) -> AsyncIterator[None]:
    """The dynamic settings: the flags' values, overridden live by configsvc when configured."""
    settings = app[SETTINGS]
    client = ConfigClient(
        settings.config_url,
        "registry",
        settings.config_profile,
        redis=app[REDIS],
        cache_dir=Path(settings.config_cache_dir) if settings.config_cache_dir else None,
        defaults={"default_ttl": settings.default_ttl, "sweep_interval": settings.sweep_interval},
    )
    app[CONFIG] = client
    app[DYNAMIC] = client.typed(Dynamic)
    await client.start()
    yield
    await client.stop()


async def _background_ctx(app: web.Application) -> AsyncIterator[None]:
    """The expirer and the event hub: started here, stopped and awaited at stop."""
    hub = EventHub(app[REDIS])
    expired = Counter(
        "registry_instances_expired",
        "instances that stopped heartbeating and were published down",
        registry=app[METRICS].registry,
    )
    dynamic = app[DYNAMIC]
    expirer = Expirer(app[REDIS], app[STORE], lambda: dynamic.current.sweep_interval, expired)
    app[HUB] = hub
    app[EXPIRER] = expirer
    tasks = TaskSet("registry")
    tasks.spawn(hub.subscription.run(), "events")
    tasks.spawn(expirer.subscription.run(), "expiry")
    tasks.spawn(expirer.sweep_forever(), "sweep")
    yield
    hub.subscription.stop()
    expirer.subscription.stop()
    await tasks.stop()


async def _on_shutdown(app: web.Application) -> None:
    app[HUB].shutdown()


def build_app(settings: Settings) -> web.Application:
    """The registry application; Redis is connected in its cleanup context."""
    metrics = HTTPMetrics("registry")
    app = web.Application(
        middlewares=[metrics.middleware, problem_middleware, redis_unavailable],
        client_max_size=BODY_LIMIT,
    )
    app[SETTINGS] = settings
    app[METRICS] = metrics
    app[SSE_CLIENTS] = Gauge(
        "registry_sse_clients", "open /v1/events streams", registry=metrics.registry
    )
    app.cleanup_ctx.append(_redis_ctx)
    app.cleanup_ctx.append(_config_ctx)
    app.cleanup_ctx.append(_background_ctx)
    app.on_shutdown.append(_on_shutdown)
    base = "/v1/services/{service}/instances/{id}"
    app.router.add_put(base, register)
    app.router.add_put(base + "/heartbeat", heartbeat)
    app.router.add_patch(base, patch)
    app.router.add_delete(base, deregister)
    app.router.add_get("/v1/services", list_services)
    app.router.add_get("/v1/services/{service}", list_instances)
    app.router.add_get("/v1/events", events)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics.handle)
    return app


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = load(
            Settings,
            prefix="REGISTRY_",
            argv=argv,
            prog="python -m registry",
            description="Essaim discovery service: where every service records its address.",
        )
    except SettingsError as exc:
        print(f"registry: {exc}", file=sys.stderr)
        return 2
    log.configure(settings.log_format, settings.log_level)
    return run([Site(build_app(settings), settings.host, settings.port, "registry")],
               shutdown_timeout=settings.shutdown_timeout)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
