"""The API gateway: ``python -m gateway``.

Two listeners. The traffic port (``--port``, 8080) is the data plane, a raw
asyncio protocol server (:mod:`core.proxy`) that routes each request by the
static route table, else by service name (``/{service}/rest``), to an
instance from the in-memory registry snapshot. The admin port
(``--admin-port``, 8081, loopback by default) is a small aiohttp app:
``/routes``, ``/upstreams``, ``/health``, ``/health/live``, ``/health/ready``,
``/metrics``. The traffic port answers ``--health-path`` (``/-/health``)
itself, for load balancers.

Only Redis is needed to start (for the registry snapshot); the config
service is optional. With ``--config-url`` the routes come from the
``gateway`` config document and follow its changes; else from ``--routes``
(a TOML file, checked every second); else there are only discovery routes.
Nothing on the request path awaits Redis or the config service: with either
away the gateway routes on what it last knew.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import itertools
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest

from core import log
from core.config.client import ConfigClient
from core.errors import SettingsError, StartupError, problem_middleware
from core.http import Check, add_health_routes, config_check, json_response, redis_health
from core.metrics import new_registry
from core.native import loader as native
from core.proxy import openapi as admin_openapi
from core.proxy.access import AccessLog, parse_mode
from core.proxy.bff import SessionEndpoints
from core.proxy.pool import Pool
from core.proxy.router import Router
from core.proxy.server import Limits, ProxyServer
from core.proxy.stats import StatsCollector
from core.proxy.wire import SampledTraceIds
from core.redis import Redis, connect
from core.registry.discovery import Watcher
from core.registry.store import SERVICE_RE
from core.routes.sources import ConfigRoutes, RouteFile, read_route_file
from core.routes.table import Timeouts
from core.runner import BAD_SETTINGS, STARTUP_FAILURE, ProtocolSite, Site, configure, run
from core.security.access import AUTH_VIA, Policy
from core.security.csrf import Origins
from core.security.jwks import KeySet
from core.security.ratelimit import StoreHealth
from core.security.relay import SessionGate
from core.security.resp import RespClient
from core.security.sessions import SessionStore
from core.security.synced import Syncer, limiter_factory
from core.security.tokens import Verifier
from core.service.issuer import AuthService
from core.settings import CommonSettings, Secret, option
from core.tasks import TaskSet
from core.telemetry.export import check_endpoint, check_sample, exporting
from core.upstream.retry import RetryPolicy
from core.upstream.upstream import UpstreamPolicy
from core.workers.admin import build_admin
from core.workers.handover import HandoverServer, Takeover, take_over
from core.workers.sockets import ensure_free, listen
from core.workers.supervisor import Supervisor, WorkerSpec, notify_ready

logger = log.get("gateway")

Balancer = Literal["round_robin", "least_request", "weighted"]


@dataclasses.dataclass(frozen=True)
class Settings(CommonSettings):
    """The gateway's settings (prefix ``GATEWAY_``).

    The traffic port listens on every interface by default: it is the edge
    that clients must reach. The admin port, which tells everything about
    the system behind, listens on loopback only unless told otherwise.
    """

    host: str = dataclasses.field(
        default="0.0.0.0", metadata=option("address of the traffic port (all interfaces)")
    )
    port: int = dataclasses.field(default=8080, metadata=option("traffic port"))
    admin_host: str = dataclasses.field(
        default="127.0.0.1", metadata=option("address of the admin port (loopback)")
    )
    admin_port: int = dataclasses.field(
        default=8081, metadata=option("admin port: /routes, /upstreams, /health, /metrics")
    )
    config_url: str = dataclasses.field(
        default="",
        metadata=option("config service URL; routes then come from its 'gateway' document"),
    )
    config_token: Secret = dataclasses.field(
        default=Secret(""), metadata=option("bearer token for the config service, if it wants one")
    )
    profile: str = dataclasses.field(default="default", metadata=option("config profile"))
    config_cache_dir: str = dataclasses.field(
        default="",
        metadata=option("directory for the last-known config (used when configsvc is away)"),
    )
    routes: str = dataclasses.field(
        default="",
        metadata=option("TOML route file, used without --config-url; reloaded on change"),
    )
    routes_poll: float = dataclasses.field(
        default=1.0, metadata=option("seconds between checks of the route file for changes")
    )
    max_body: int = dataclasses.field(
        default=10 * 1024 * 1024, metadata=option("largest request body in bytes (413 beyond)")
    )
    max_header: int = dataclasses.field(
        default=16 * 1024, metadata=option("largest request head in bytes (431 beyond)")
    )
    head_timeout: float = dataclasses.field(
        default=10.0, metadata=option("seconds for a client to send a request head (408 after)")
    )
    body_timeout: float = dataclasses.field(
        default=30.0,
        metadata=option("seconds a request body may pause before 408 (between two reads)"),
    )
    keepalive_timeout: float = dataclasses.field(
        default=60.0, metadata=option("seconds an idle client connection is kept open")
    )
    stream_idle_timeout: float = dataclasses.field(
        default=300.0,
        metadata=option("seconds a response or upgraded stream may stay silent before it is cut"),
    )
    connect_timeout: float = dataclasses.field(
        default=1.0, metadata=option("discovery routes: seconds to connect to an instance")
    )
    per_try_timeout: float = dataclasses.field(
        default=10.0,
        metadata=option("discovery routes: seconds for one try to get a response head (504 after)"),
    )
    total_timeout: float = dataclasses.field(
        default=30.0, metadata=option("discovery routes: seconds for all tries together")
    )
    retry_attempts: int = dataclasses.field(
        default=3, metadata=option("discovery routes: tries per request, the first included")
    )
    balancer: Balancer = dataclasses.field(
        default="round_robin", metadata=option("discovery routes: how instances share the load")
    )
    pool_max_idle: int = dataclasses.field(
        default=64, metadata=option("idle keep-alive connections kept per upstream instance")
    )
    pool_idle_timeout: float = dataclasses.field(
        default=4.0,
        metadata=option(
            "seconds an idle upstream connection is kept; below the upstreams' own keep-alive"
        ),
    )
    replay_buffer: int = dataclasses.field(
        default=64 * 1024,
        metadata=option("request body bytes kept to retry with; a larger body is not retried"),
    )
    max_pipeline: int = dataclasses.field(
        default=16, metadata=option("pipelined requests queued per connection before reading stops")
    )
    resync_interval: float = dataclasses.field(
        default=30.0, metadata=option("seconds between full re-reads of the registry")
    )
    registry_grace: float = dataclasses.field(
        default=5.0,
        metadata=option(
            "seconds instances missing after Redis came back empty stay routable while they"
            " register again"
        ),
    )
    jwks_url: str = dataclasses.field(
        default="",
        metadata=option(
            "the auth service's JWKS URL; without it, routes needing a token answer 503"
        ),
    )
    jwt_issuer: str = dataclasses.field(
        default="essaim-auth", metadata=option("the 'iss' that access tokens must carry")
    )
    jwt_audience: str = dataclasses.field(
        default="essaim", metadata=option("the 'aud' that access tokens must carry")
    )
    health_path: str = dataclasses.field(
        default="/-/health",
        metadata=option(
            "path the traffic port answers itself for load balancers (under /-/; empty: none)"
        ),
    )
    discovery_auth: str = dataclasses.field(
        default="public",
        metadata=option("policy of discovery routes: public, authenticated or roles:a,b"),
    )
    discovery_auth_via: str = dataclasses.field(
        default="token",
        metadata=option("what discovery routes' policy accepts: token, session or either"),
    )
    session_idle_timeout: float = dataclasses.field(
        default=1800.0,
        metadata=option("seconds a session (POST /-/session) lives without a request"),
    )
    session_absolute_timeout: float = dataclasses.field(
        default=8 * 3600.0,
        metadata=option("seconds a session lives at most, however busy (log in again after)"),
    )
    session_cache: float = dataclasses.field(
        default=1.0,
        metadata=option(
            "seconds a worker trusts a session it read from Redis (0: ask Redis on every "
            "request); a logout elsewhere takes effect within this"
        ),
    )
    session_secure: bool = dataclasses.field(
        default=False,
        metadata=option(
            "clients reach the gateway over TLS (a terminator in front): session cookies get Secure"
        ),
    )
    session_origins: str = dataclasses.field(
        default="",
        metadata=option(
            "origins besides the gateway's own allowed to send state-changing session requests "
            "(comma-separated scheme://host[:port])"
        ),
    )
    session_auth_service: str = dataclasses.field(
        default="auth",
        metadata=option("the auth service sessions log in with (its name in the registry)"),
    )
    session_refresh_margin: float = dataclasses.field(
        default=60.0,
        metadata=option(
            "seconds before a session's access token expires that the gateway renews it"
        ),
    )
    access_log: str = dataclasses.field(
        default="off",
        metadata=option(
            "one access-log line per request on stderr: off, on, or N (one request in N, "
            "and every answer of 400 or more)"
        ),
    )
    otel_endpoint: str = dataclasses.field(
        default="",
        metadata=option(
            "OpenTelemetry collector's OTLP/HTTP URL (http://HOST:4318): export a span per "
            "proxied request (needs essaim[otel]; none: no export)",
            env="ESSAIM_OTEL_ENDPOINT",
        ),
    )
    otel_sample: float = dataclasses.field(
        default=1.0,
        metadata=option(
            "share of the traces the gateway starts that are sampled (0.0-1.0, decided from "
            "the trace id as OpenTelemetry's TraceIdRatioBased); a client's traceparent "
            "keeps its own decision; unsampled traces are exported by no component",
            env="ESSAIM_OTEL_SAMPLE",
        ),
    )
    workers: int = dataclasses.field(
        default=0,
        metadata=option(
            "worker processes sharing the traffic port (SO_REUSEPORT) under one parent; "
            "0: one per CPU; 1: a single process"
        ),
    )
    control_socket: str = dataclasses.field(
        default="",
        metadata=option(
            "Unix socket where a new gateway started with --takeover takes this one's "
            "listening sockets over (a restart that refuses no connection)"
        ),
    )
    takeover: bool = dataclasses.field(
        default=False,
        metadata=option(
            "take the listening sockets of the gateway running at --control-socket; "
            "it stops accepting and drains once this one is ready"
        ),
    )

    def validate(self) -> None:
        super().validate()
        if self.listen_fd != -1:
            raise SettingsError(
                "GATEWAY_LISTEN_FD: the gateway takes inherited sockets over --control-socket"
                " with --takeover, not --listen-fd"
            )
        try:
            parse_mode(self.access_log)
        except ValueError as exc:
            raise SettingsError(f"GATEWAY_ACCESS_LOG: {exc}") from None
        for name in ("admin_port",):
            value = getattr(self, name)
            if not 0 <= value <= 65535:
                raise SettingsError(f"GATEWAY_{name.upper()}: expected 0-65535, got {value}")
        positive = (
            "routes_poll", "head_timeout", "body_timeout", "keepalive_timeout",
            "stream_idle_timeout", "connect_timeout", "per_try_timeout", "total_timeout",
            "pool_idle_timeout", "resync_interval", "registry_grace",
        )  # fmt: skip
        for name in positive:
            if getattr(self, name) <= 0:
                raise SettingsError(
                    f"GATEWAY_{name.upper()}: expected > 0, got {getattr(self, name)}"
                )
        for name in ("max_body", "max_header", "retry_attempts", "max_pipeline"):
            if getattr(self, name) < 1:
                raise SettingsError(
                    f"GATEWAY_{name.upper()}: expected >= 1, got {getattr(self, name)}"
                )
        for name in ("pool_max_idle", "replay_buffer", "workers"):
            if getattr(self, name) < 0:
                raise SettingsError(
                    f"GATEWAY_{name.upper()}: expected >= 0, got {getattr(self, name)}"
                )
        if self.health_path and (
            not self.health_path.startswith("/-/")
            or len(self.health_path) < 4
            or any(c in self.health_path for c in "?# ")
        ):
            raise SettingsError(
                f"GATEWAY_HEALTH_PATH: expected a path under /-/ (or empty), got {self.health_path!r}"
            )
        check_endpoint("ESSAIM_OTEL_ENDPOINT", self.otel_endpoint)
        check_sample("ESSAIM_OTEL_SAMPLE", self.otel_sample)
        try:
            Policy.parse(self.discovery_auth)
        except ValueError as exc:
            raise SettingsError(f"GATEWAY_DISCOVERY_AUTH: {exc}") from None
        if self.discovery_auth_via not in AUTH_VIA:
            raise SettingsError(
                f"GATEWAY_DISCOVERY_AUTH_VIA: expected one of {', '.join(AUTH_VIA)}, "
                f"got {self.discovery_auth_via!r}"
            )
        if not 0 < self.session_idle_timeout <= self.session_absolute_timeout:
            raise SettingsError(
                "0 < GATEWAY_SESSION_IDLE_TIMEOUT <= GATEWAY_SESSION_ABSOLUTE_TIMEOUT expected"
            )
        for name in ("session_cache", "session_refresh_margin"):
            if getattr(self, name) < 0:
                raise SettingsError(
                    f"GATEWAY_{name.upper()}: expected >= 0, got {getattr(self, name)}"
                )
        try:
            Origins.parse(self.session_origins)
        except ValueError as exc:
            raise SettingsError(f"GATEWAY_SESSION_ORIGINS: {exc}") from None
        if not SERVICE_RE.match(self.session_auth_service):
            raise SettingsError(
                f"GATEWAY_SESSION_AUTH_SERVICE: not a service name: {self.session_auth_service!r}"
            )
        if self.takeover and not self.control_socket:
            raise SettingsError(
                "GATEWAY_TAKEOVER needs GATEWAY_CONTROL_SOCKET (where to take over)"
            )
        if not self.connect_timeout <= self.per_try_timeout <= self.total_timeout:
            raise SettingsError(
                "GATEWAY_CONNECT_TIMEOUT <= GATEWAY_PER_TRY_TIMEOUT <= GATEWAY_TOTAL_TIMEOUT expected"
            )

    @property
    def limits(self) -> Limits:
        return Limits(
            max_head=self.max_header,
            max_body=self.max_body,
            head_timeout=self.head_timeout,
            body_timeout=self.body_timeout,
            keepalive_timeout=self.keepalive_timeout,
            stream_idle_timeout=self.stream_idle_timeout,
            replay_buffer=self.replay_buffer,
            max_pipeline=self.max_pipeline,
        )


# Typed application keys.
SETTINGS = web.AppKey("settings", Settings)
REDIS: web.AppKey[Redis] = web.AppKey("redis")
WATCHER = web.AppKey("watcher", Watcher)
ROUTER = web.AppKey("router", Router)
PROXY = web.AppKey("proxy", ProxyServer)
CONFIG = web.AppKey("config", ConfigClient)
METRICS = web.AppKey("metrics", CollectorRegistry)
#: The rate limiters' shared view of their Redis: outages, logged once, and counts.
RATELIMIT = web.AppKey("ratelimit", StoreHealth)

# ----------------------------------------------------------------------------- admin handlers


async def routes(request: web.Request) -> web.Response:
    """``GET /routes``: the static table in force, its version and source, discovery routes."""
    doc = request.app[ROUTER].describe_routes()
    config = request.app.get(CONFIG)
    if config is not None:
        doc["config"] = config.describe()
    return json_response(doc)


async def upstreams(request: web.Request) -> web.Response:
    """``GET /upstreams``: every upstream's endpoints, ejections, breaker, outstanding, counts."""
    doc = request.app[ROUTER].describe_upstreams()
    doc["pool"] = request.app[PROXY].pool.describe()
    return json_response(doc)


async def health_page(request: web.Request) -> web.Response:
    """``GET /health``: 200 while serving; ``DEGRADED`` when Redis or the config service is away."""
    app = request.app
    redis_ok = await redis_health(app[REDIS])
    watcher = app[WATCHER]
    router = app[ROUTER]
    body: dict[str, Any] = {
        "status": "UP" if redis_ok else "DEGRADED",
        "redis": "UP" if redis_ok else "DOWN",
        "registry": watcher.describe(),
        "routes": {"version": router.table.version, "count": len(router.table)},
        "proxy": app[PROXY].describe(),
        "build": native.BUILD.as_dict(),
    }
    config = app.get(CONFIG)
    if config is not None:
        body["config"] = {"version": config.version, "source": config.source}
        if config.source != "server":
            body["status"] = "DEGRADED"
    return json_response(body)


def readiness(app: web.Application) -> dict[str, Check]:
    """Ready once it has a registry snapshot and while no route table or config was rejected.

    Redis away is not unready: the gateway routes on the snapshot it has.
    """
    watcher, router = app[WATCHER], app[ROUTER]

    async def registry() -> tuple[bool, Any]:
        return watcher.relists > 0, watcher.describe()

    async def routes() -> tuple[bool, Any]:
        rejected = router.rejected
        detail: dict[str, Any] = {"version": router.table.version, "source": router.source}
        if rejected is not None and rejected["at"] >= router.installed_at:
            detail["rejected"] = rejected
            return False, detail
        return True, detail

    checks: dict[str, Check] = {"registry": registry, "routes": routes}
    config = app.get(CONFIG)
    if config is not None:
        checks["config"] = config_check(config)
    return checks


async def metrics(request: web.Request) -> web.Response:
    return web.Response(
        body=generate_latest(request.app[METRICS]), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


# ----------------------------------------------------------------------------- resources


async def _redis_ctx(app: web.Application) -> AsyncIterator[None]:
    client = connect(app[SETTINGS].redis_url)
    app[REDIS] = client
    yield
    await client.aclose()


async def _watcher_ctx(app: web.Application) -> AsyncIterator[None]:
    """The registry snapshot: started here; Redis away is not fatal (the router says 503)."""
    settings = app[SETTINGS]
    watcher = Watcher(
        app[REDIS], resync_interval=settings.resync_interval, grace=settings.registry_grace
    )
    app[WATCHER] = watcher
    router = app[ROUTER]
    router.watcher = watcher
    watcher.on_change(router.registry_changed)
    await watcher.start(wait=3.0)
    if not watcher.connected:
        logger.warning("Redis unreachable at start: serving static routes; discovery waits for it")
    yield
    await watcher.stop()


async def _access_ctx(app: web.Application) -> AsyncIterator[None]:
    """Token verification (the auth service's key set) and rate limits, before routes install."""
    settings = app[SETTINGS]
    router = app[ROUTER]
    router.discovery_access = Policy.parse(settings.discovery_auth)
    router.discovery_via = settings.discovery_auth_via  # type: ignore[assignment]
    resp = RespClient(settings.redis_url)
    syncer = Syncer()
    router.limiter_for = limiter_factory(resp, syncer, app[RATELIMIT])
    syncer.start()
    tasks = TaskSet("gateway")
    keys = None
    if settings.jwks_url:
        keys = KeySet(settings.jwks_url)
        router.verifier = Verifier(keys, issuer=settings.jwt_issuer, audience=settings.jwt_audience)
        tasks.spawn(keys.run(), "jwks")
    issuer = AuthService(app[WATCHER], settings.session_auth_service, lambda: router.verifier)
    gate = SessionGate(
        SessionStore(
            resp,
            idle=settings.session_idle_timeout,
            absolute=settings.session_absolute_timeout,
            cache=settings.session_cache,
        ),
        issuer,
        origins=Origins.parse(settings.session_origins),
        refresh_margin=settings.session_refresh_margin,
    )
    router.sessions = gate
    app[PROXY].bff = SessionEndpoints(
        gate,
        issuer,
        secure=settings.session_secure,
        ready=lambda: (
            None
            if router.verifier is not None
            else "sessions need the auth service's key set: start the gateway with --jwks-url"
        ),
    )
    yield
    app[PROXY].bff = None
    await issuer.close()
    await tasks.stop()
    await syncer.stop()
    if keys is not None:
        await keys.close()
    await resp.close()


async def _routes_ctx(app: web.Application) -> AsyncIterator[None]:
    """The static route table: from the config service, or a file, or none."""
    settings = app[SETTINGS]
    router = app[ROUTER]
    if settings.config_url:
        client = ConfigClient(
            settings.config_url,
            "gateway",
            settings.profile,
            redis=app[REDIS],
            cache_dir=Path(settings.config_cache_dir) if settings.config_cache_dir else None,
            token=settings.config_token or None,
        )
        source = ConfigRoutes(client, router)
        source.attach()
        app[CONFIG] = client
        await client.start()
        source.install_current()
        yield
        await client.stop()
    elif settings.routes:
        route_file = RouteFile(settings.routes, router, interval=settings.routes_poll)
        await route_file.start()
        yield
        await route_file.stop()
    else:
        router.source = "discovery only"
        yield


async def _telemetry_ctx(app: web.Application) -> AsyncIterator[None]:
    """Span export, when asked for: first opened, last closed (after the requests drained)."""
    instance = f"gateway-{socket.gethostname()}-{os.getpid()}"
    async with exporting(
        app[SETTINGS].otel_endpoint, service="gateway", instance=instance
    ) as spans:
        app[PROXY].spans = spans
        yield
        app[PROXY].spans = None


def _ratelimit_metrics(health: StoreHealth) -> Iterator[Metric]:
    """What the rate limiters decided without Redis, and whether it answers."""
    yield CounterMetricFamily(
        "gateway_ratelimit_fail_open",
        "requests on rate-limited routes let through unchecked while Redis was unreachable",
        value=health.failed_open,
    )
    yield CounterMetricFamily(
        "gateway_ratelimit_fail_closed",
        "requests on fail-closed rate-limited routes refused (503) while Redis was unreachable",
        value=health.failed_closed,
    )
    yield CounterMetricFamily(
        "gateway_ratelimit_outages", "times the rate limiters lost Redis", value=health.outages
    )
    yield GaugeMetricFamily(
        "gateway_ratelimit_redis_up",
        "1 while the rate limiters' Redis answers (as of the last limited request)",
        value=1 if health.up else 0,
    )


def build_app(settings: Settings) -> tuple[web.Application, ProxyServer]:
    """The admin application and the data plane's protocol factory, sharing one router.

    Redis, the watcher and the route source start in the admin app's cleanup
    contexts, before the traffic port opens (see :mod:`core.runner`).
    """
    router = Router(
        None,
        policy=UpstreamPolicy(balancer=settings.balancer),
        retry=RetryPolicy(attempts=settings.retry_attempts),
        timeouts=Timeouts(
            settings.connect_timeout, settings.per_try_timeout, settings.total_timeout
        ),
    )
    pool = Pool(max_idle=settings.pool_max_idle, idle_timeout=settings.pool_idle_timeout)
    proxy = ProxyServer(
        router, settings.limits, pool=pool, health_path=settings.health_path.encode("ascii")
    )
    if settings.otel_sample < 1.0:
        # Head sampling: each trace it starts is sampled or not (the default samples all).
        proxy.traces = SampledTraceIds(settings.otel_sample)
    every = parse_mode(settings.access_log)
    if every:
        proxy.access = AccessLog(every, json=settings.log_format == "json")
    store_health = StoreHealth()
    registry = new_registry()
    registry.register(
        StatsCollector(
            proxy.stats,
            gauges=lambda: {
                "client_connections": ("open client connections", len(proxy.connections)),
                "requests_in_flight": ("requests being answered", proxy.active),
                "upstream_connections": ("open upstream connections", proxy.pool.open),
                "upstream_connections_idle": (
                    "idle pooled upstream connections",
                    sum(len(c) for c in proxy.pool.idle.values()),
                ),
            },
            extra=lambda: itertools.chain(router.metrics(), _ratelimit_metrics(store_health)),
        )
    )
    app = web.Application(middlewares=[problem_middleware])
    app[SETTINGS] = settings
    app[ROUTER] = router
    app[PROXY] = proxy
    app[METRICS] = registry
    app[RATELIMIT] = store_health
    app.cleanup_ctx.append(_telemetry_ctx)
    app.cleanup_ctx.append(_redis_ctx)
    app.cleanup_ctx.append(_watcher_ctx)
    app.cleanup_ctx.append(_access_ctx)
    app.cleanup_ctx.append(_routes_ctx)
    app.router.add_get("/routes", routes)
    app.router.add_get("/upstreams", upstreams)
    app.router.add_get("/health", health_page)
    add_health_routes(app, readiness)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", admin_openapi.build(workers=False).handle)
    app.router.add_get("/openapi-traffic.json", admin_openapi.traffic(settings.health_path).handle)
    return app, proxy


_DESCRIPTION = (
    "Essaim API gateway: routes requests to services by the static route table,\n"
    "else by name (/{service}/rest), with load balancing, outlier ejection,\n"
    "circuit breakers, retries and timeouts. Needs Redis; configsvc is optional.\n"
    "SIGHUP (with --workers > 1) replaces the workers one by one; --takeover\n"
    "replaces a running gateway; neither refuses a connection."
)


def cpu_count() -> int:
    """The CPUs this process may run on (its affinity), the default number of workers."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--worker"] and len(args) >= 2:
        return _worker_main(WorkerSpec.from_json(args[1]), args[2:])
    settings = configure(
        Settings, name="gateway", prefix="GATEWAY_", argv=args, description=_DESCRIPTION
    )
    if settings is None:
        return BAD_SETTINGS
    workers = settings.workers or cpu_count()
    try:
        if settings.routes and not settings.config_url:
            read_route_file(settings.routes)
        if workers == 1:
            return _single(settings)
        return _parent(settings, workers, args)
    except StartupError as exc:
        logger.error("failed to start: %s", exc)
        return STARTUP_FAILURE


def _sockets(
    settings: Settings, takeover: Takeover | None
) -> tuple[list[socket.socket], socket.socket]:
    """The traffic sockets and the admin socket: taken over, or bound here (checked free first)."""
    if takeover is not None:
        traffic = takeover.take("traffic")
        admin = takeover.take("admin")
        if not traffic or len(admin) != 1:
            raise StartupError("the old gateway handed over no traffic socket or no admin socket")
        return traffic, admin[0]
    ensure_free(settings.host, settings.port)
    ensure_free(settings.admin_host, settings.admin_port)
    return [listen(settings.host, settings.port)], listen(settings.admin_host, settings.admin_port)


def _handover(
    settings: Settings,
    app: web.Application,
    takeover: Takeover | None,
    named: Callable[[], list[tuple[str, socket.socket]]],
    stop: asyncio.Event,
) -> Callable[[], Awaitable[None]]:
    """What to do once serving: let the predecessor go, then offer our sockets to a successor."""

    server = (
        HandoverServer(settings.control_socket, named, lambda pid: stop.set())
        if settings.control_socket
        else None
    )

    async def ready() -> None:
        if takeover is not None:
            await asyncio.to_thread(takeover.ready)
        if server is not None:
            await server.start()

    async def close(_: web.Application) -> None:
        if server is not None:
            await server.stop()

    app.on_cleanup.append(close)
    return ready


def _single(settings: Settings) -> int:
    """One process: the admin app and the traffic port, as before workers existed."""
    takeover = take_over(settings.control_socket) if settings.takeover else None
    traffic, admin = _sockets(settings, takeover)
    app, proxy = build_app(settings)
    started = time.monotonic()
    stop = asyncio.Event()
    handover = _handover(
        settings,
        app,
        takeover,
        lambda: [*(("traffic", s) for s in traffic), ("admin", admin)],
        stop,
    )

    async def on_started(bound: list[tuple[str, str, int]]) -> None:
        # What exists now lives as long as the process: out of the collector's
        # sight, a full collection under load takes a millisecond, not twenty.
        gc.collect()
        gc.freeze()
        await handover()
        # SIGHUP's default action would end the process: say what reloads instead.
        asyncio.get_running_loop().add_signal_handler(
            signal.SIGHUP,
            lambda: logger.warning(
                "SIGHUP ignored: a single process has no workers to replace; run with "
                "--workers 2 or more, or restart with --control-socket and --takeover"
            ),
        )
        logger.info(
            "gateway ready in %.2fs (hot path: %s)", time.monotonic() - started, native.BUILD
        )

    return run(
        [
            Site(app, settings.admin_host, settings.admin_port, "admin", sock=admin),
            ProtocolSite(
                proxy,
                settings.host,
                settings.port,
                "gateway",
                start=proxy.start,
                drain=proxy.drain,
                socks=tuple(traffic),
            ),
        ],
        shutdown_timeout=settings.shutdown_timeout,
        on_started=on_started,
        stop=stop,
    )


def _worker_main(spec: WorkerSpec, argv: list[str]) -> int:
    """A worker: the data plane on the inherited sockets, its admin app on a private Unix socket."""
    settings = configure(
        Settings, name="gateway", prefix="GATEWAY_", argv=argv, description=_DESCRIPTION
    )
    if settings is None:
        return BAD_SETTINGS
    app, proxy = build_app(settings)
    socks = tuple(socket.socket(fileno=fd) for fd in spec.fds)
    stop = asyncio.Event()

    async def on_started(bound: list[tuple[str, str, int]]) -> None:
        gc.collect()
        gc.freeze()
        loop = asyncio.get_running_loop()

        def parent_gone() -> None:
            loop.remove_reader(spec.life_fd)
            logger.warning("worker %d: the parent is gone; stopping", spec.slot)
            stop.set()

        # The parent holds the write end: end of file means it died.
        loop.add_reader(spec.life_fd, parent_gone)
        notify_ready(spec.ready_fd)

    return run(
        [
            Site(app, "", 0, "admin", unix=spec.admin),
            ProtocolSite(
                proxy,
                settings.host,
                settings.port,
                f"gateway worker {spec.slot}",
                start=proxy.start,
                drain=proxy.drain,
                socks=socks,
            ),
        ],
        shutdown_timeout=settings.shutdown_timeout,
        on_started=on_started,
        stop=stop,
    )


def _parent(settings: Settings, workers: int, argv: list[str]) -> int:
    """``workers`` processes on the traffic port, supervised; the merged admin view here."""
    takeover = take_over(settings.control_socket) if settings.takeover else None
    traffic, admin = _sockets(settings, takeover)
    # One socket per slot: received ones first (several per slot when the
    # predecessor had more), new ones on the same port for the rest.
    port = traffic[0].getsockname()[1]
    slots: list[list[socket.socket]] = [[] for _ in range(workers)]
    for i, sock in enumerate(traffic):
        slots[i % workers].append(sock)
    for slot in slots:
        if not slot:
            sock = listen(settings.host, port)
            traffic.append(sock)
            slot.append(sock)
    workdir = Path(tempfile.mkdtemp(prefix="essaim-gateway-"))
    supervisor = Supervisor(
        lambda spec: [sys.executable, "-m", "gateway", "--worker", spec.to_json(), *argv],
        slots,
        workdir=workdir,
        ready_timeout=30.0,
        stop_timeout=settings.shutdown_timeout + 5.0,
    )
    app = build_admin(supervisor, [problem_middleware], health_path=settings.health_path)
    started = time.monotonic()
    stop = asyncio.Event()

    async def workers_ctx(app: web.Application) -> AsyncIterator[None]:
        await supervisor.start()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, supervisor.reload)
        yield
        loop.remove_signal_handler(signal.SIGHUP)
        await supervisor.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    app.cleanup_ctx.append(workers_ctx)
    handover = _handover(
        settings,
        app,
        takeover,
        lambda: [*(("traffic", s) for s in traffic), ("admin", admin)],
        stop,
    )

    async def on_started(bound: list[tuple[str, str, int]]) -> None:
        await handover()
        logger.info(
            "gateway ready in %.2fs: %d workers on port %d (hot path: %s)",
            time.monotonic() - started,
            workers,
            port,
            native.BUILD,
        )

    try:
        return run(
            [Site(app, settings.admin_host, settings.admin_port, "admin", sock=admin)],
            shutdown_timeout=settings.shutdown_timeout,
            on_started=on_started,
            stop=stop,
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
