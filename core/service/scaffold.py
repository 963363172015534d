"""The scaffold every business service is built on: settings, resources, lifecycle, routes.

A service declares what it is as a :class:`Service` (its name, routes,
database migrations, dynamic-config dataclass, the services it calls and
the events it emits and handles) and its ``__main__`` calls
:func:`run_service`. The scaffold then owns everything else, one aiohttp
``cleanup_ctx`` per resource, opened in this order and closed in reverse:

1. head sampling (``--otel-sample``, :func:`core.trace.sample`) and span export
   to OpenTelemetry, with ``--otel-endpoint`` (:mod:`core.telemetry`);
2. Redis (:func:`core.redis.connect`; it may be away, nothing waits on it);
3. the database: ``{data_dir}/{name}.db``, created and migrated
   (:class:`core.db.Database`);
4. the config client: the service's config from configsvc, kept current;
   the service's dataclass is a typed view of its table (``[billing]`` for
   billing), and the shared ``[http]`` table sets the call timeouts live;
5. the registry watcher and :class:`core.service.calls.Calls`, when the service calls
   others;
6. the outbox relay, when it emits events (its own, or its sagas' commands);
7. the saga runners (:class:`core.events.saga.SagaRunner`), one per saga it
   owns: timeouts, resends, waits;
8. the event consumer (group: the service's name), when it handles events
   (its own handlers, and its sagas' replies).

The instance registers with the registry once its port is listening (so a
port of 0 registers the port the OS picked) and deregisters first at
shutdown, while it still accepts: it waits until no request arrived for
0.1 s (the watchers, the gateway, stopped routing to it; at most
``--deregister-wait``, 1 s), then stops accepting and drains its requests in
flight. A request the gateway sent meanwhile is served, with
``Connection: close`` from the start of shutdown: a keep-alive client moves
off the leaving process on an answer (the gateway's pool keeps routing to an
address that a successor shares, as auth's does when it rolls on the
launcher's socket). An idle connection the process closes at the end may
still cross a request sent on it: the gateway sends such a request again on
a new connection (:meth:`core.proxy.exchange.Exchange.may_reconnect`).

Every service answers ``GET /health`` (200 while it can serve; ``DEGRADED``
when Redis or configsvc is away; 503 when its database fails) and
``GET /metrics``; a service that handles events answers ``GET /events/dead``,
``POST /events/dead/replay`` and ``POST /events/dead/discard``; one that emits
them ``GET /events/outbox`` (:mod:`core.events.http`). Responses carry
``X-Request-ID`` (passed on to the calls made while handling the request) and
``X-Instance-ID``.

Given the auth service's JWKS URL (``--jwks-url``), a service verifies bearer
tokens itself too (defence in depth: the gateway already did), with the
route policies of its :class:`Service` (``access``, ``default_access``) and
:func:`core.security.access.access_middleware`; the identity is in
``request[IDENTITY]``. ``/health`` and ``/metrics`` are always public.
Without a JWKS URL every route is open, as behind a gateway that checks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import importlib.metadata
import inspect
import os
import re
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from core import errors, log, trace
from core.config.client import ConfigClient, TypedView
from core.db import Database, Migration
from core.errors import ServiceUnavailable, SettingsError, problem_middleware
from core.events import http as events_http
from core.events.bus import Event, EventBus, TxHandler
from core.events.consumer import Consumer
from core.events.outbox import OutboxRelay
from core.events.saga import Saga, SagaRunner
from core.http import (
    Check,
    add_health_routes,
    config_check,
    json_response,
    redis_health,
    redis_unavailable,
)
from core.metrics import HTTPMetrics
from core.openapi.spec import Spec
from core.redis import Redis, connect
from core.registry.client import RegistryClient
from core.registry.discovery import Instance, Registration, Watcher
from core.runner import BAD_SETTINGS, Site, configure, run
from core.security.access import IDENTITY, PUBLIC, Policy, access_middleware
from core.security.jwks import KeySet
from core.security.tokens import Verifier
from core.service import openapi as service_openapi
from core.service.access_log import access_log_middleware
from core.service.calls import Calls, Timeouts, dependency_middleware, forwarding_middleware
from core.settings import CommonSettings, Secret, option
from core.tasks import TaskSet
from core.telemetry.export import check_endpoint, check_sample, exporting
from core.upstream.retry import RetryPolicy
from core.upstream.upstream import UpstreamPolicy

logger = log.get("service")

__all__ = [
    "CALLS",
    "CONFIG",
    "DB",
    "DYNAMIC",
    "IDENTITY",
    "REDIS",
    "SAGAS",
    "SETTINGS",
    "VERIFIER",
    "CallConfig",
    "CleanupContext",
    "EventHandler",
    "Service",
    "ServiceSettings",
    "build_app",
    "public_path",
    "run_service",
]

#: The version every instance registers in its metadata (the console shows it).
try:
    _VERSION = importlib.metadata.version("essaim")
except importlib.metadata.PackageNotFoundError:  # run from a tree never installed
    _VERSION = "unknown"

INSTANCE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

#: Handles one event on the database's thread, inside the transaction that
#: records it as handled (see :class:`core.events.consumer.Consumer`); ``app``
#: gives the dynamic config. It must not commit; raising retries the event.
EventHandler = Callable[[web.Application, sqlite3.Connection, Event], None]
#: An aiohttp cleanup context: opens a resource before ``yield``, closes it after.
CleanupContext = Callable[[web.Application], AsyncIterator[None]]


@dataclasses.dataclass(frozen=True)
class ServiceSettings(CommonSettings):
    """Settings of every service (prefix: the service's name, ``INVENTORY_``)."""

    data_dir: str = dataclasses.field(
        default="",
        metadata=option("directory of the service's database and config copy [data/NAME]"),
    )
    config_url: str = dataclasses.field(
        default="", metadata=option("configsvc URL (none: the built-in defaults only)")
    )
    config_profile: str = dataclasses.field(
        default="default", metadata=option("profile of the service's config in configsvc")
    )
    config_token: Secret = dataclasses.field(
        default=Secret(""), metadata=option("bearer token for configsvc, if it wants one")
    )
    registry_url: str = dataclasses.field(
        default="",
        metadata=option(
            "the registry's URL: register through its API with --registry-token "
            "(none: write the registry's Redis keys directly)"
        ),
    )
    registry_token: Secret = dataclasses.field(
        default=Secret(""),
        metadata=option("the registry token of this service (svc.NAME.MAC) or the operator's"),
    )
    advertise_host: str = dataclasses.field(
        default="",
        metadata=option("address registered for others to call [--host; 127.0.0.1 for 0.0.0.0]"),
    )
    instance_id: str = dataclasses.field(
        default="", metadata=option("instance id in the registry and the consumer group [random]")
    )
    ttl: int = dataclasses.field(
        default=10, metadata=option("seconds the registry keeps the instance without a heartbeat")
    )
    deregister_wait: float = dataclasses.field(
        default=1.0,
        metadata=option(
            "on SIGTERM, after deregistering: at most this many seconds until requests stop"
            " arriving (the gateway stops routing here), before it stops accepting"
        ),
    )
    resync_interval: float = dataclasses.field(
        default=30.0, metadata=option("seconds between full re-reads of the registry")
    )
    visibility_timeout: float = dataclasses.field(
        default=30.0,
        metadata=option("seconds before an event left unacknowledged is delivered again"),
    )
    max_deliveries: int = dataclasses.field(
        default=5, metadata=option("failed deliveries of an event before it is a dead letter")
    )
    outbox_poll: float = dataclasses.field(
        default=1.0, metadata=option("seconds between checks of the outbox besides commit wake-ups")
    )
    jwks_url: str = dataclasses.field(
        default="",
        metadata=option(
            "the auth service's JWKS URL; set: bearer tokens are verified here too, "
            "with the service's route policies (none: every route is open)"
        ),
    )
    jwt_issuer: str = dataclasses.field(
        default="essaim-auth", metadata=option("the iss verified tokens must carry")
    )
    jwt_audience: str = dataclasses.field(
        default="essaim", metadata=option("the aud verified tokens must carry")
    )
    access_log: bool = dataclasses.field(
        default=True,
        metadata=option("one log line per request answered (logger essaim.access)"),
    )
    otel_endpoint: str = dataclasses.field(
        default="",
        metadata=option(
            "OpenTelemetry collector's OTLP/HTTP URL (http://HOST:4318): export the spans of "
            "requests, calls and events (needs essaim[otel]; none: no export)",
            env="ESSAIM_OTEL_ENDPOINT",
        ),
    )
    otel_sample: float = dataclasses.field(
        default=1.0,
        metadata=option(
            "share of the traces this service starts (a request or an event without a "
            "traceparent) that are sampled (0.0-1.0, decided from the trace id as "
            "OpenTelemetry's TraceIdRatioBased); a traceparent keeps its own decision",
            env="ESSAIM_OTEL_SAMPLE",
        ),
    )

    def validate(self) -> None:
        super().validate()
        if not 1 <= self.ttl <= 300:
            raise SettingsError(f"ttl: expected 1-300 seconds, got {self.ttl}")
        if self.instance_id and not INSTANCE_ID_RE.match(self.instance_id):
            raise SettingsError(
                f"instance_id: expected {INSTANCE_ID_RE.pattern}, got {self.instance_id!r}"
            )
        if not 0 <= self.deregister_wait <= 60:
            raise SettingsError(
                f"deregister_wait: expected 0-60 seconds, got {self.deregister_wait}"
            )
        for name in ("resync_interval", "visibility_timeout", "outbox_poll"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name}: expected > 0, got {getattr(self, name)}")
        if self.max_deliveries < 1:
            raise SettingsError(f"max_deliveries: expected >= 1, got {self.max_deliveries}")
        if self.registry_url:
            parts = urlsplit(self.registry_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise SettingsError(
                    f"registry_url: expected an http(s) URL, got {self.registry_url!r}"
                )
        check_endpoint("ESSAIM_OTEL_ENDPOINT", self.otel_endpoint)
        check_sample("ESSAIM_OTEL_SAMPLE", self.otel_sample)
        if self.jwks_url:
            parts = urlsplit(self.jwks_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise SettingsError(f"jwks_url: expected an http(s) URL, got {self.jwks_url!r}")


@dataclasses.dataclass(frozen=True)
class CallConfig:
    """The shared ``[http]`` config table: calls to other services (applied live)."""

    connect_timeout: float = 1.0
    request_timeout: float = 10.0
    retries: int = 2

    def __post_init__(self) -> None:
        if not 0 < self.connect_timeout <= self.request_timeout:
            raise ValueError("expected 0 < connect_timeout <= request_timeout")
        if not 0 <= self.retries <= 5:
            raise ValueError(f"retries: expected 0-5, got {self.retries}")

    @property
    def timeouts(self) -> Timeouts:
        return Timeouts(
            self.connect_timeout, self.request_timeout, self.request_timeout * (self.retries + 1)
        )


@dataclasses.dataclass(frozen=True)
class Service:
    """What a service is; :func:`run_service` makes it a running process.

    - ``routes``: its HTTP API (``GET /health``, ``/metrics`` and the event
      routes are added);
    - ``migrations``: its schema, applied in order (see :class:`core.db.Database`);
    - ``config``: a frozen dataclass of the settings configsvc may change
      while it runs, read from the table ``config_section`` (default: the
      service's name) of its config; ``request.app[DYNAMIC].current`` is the
      object in force;
    - ``calls``: the services it calls (``request.app[CALLS]``);
    - ``emits``: the event types it adds to its outbox (a relay publishes them);
    - ``handlers``: event type to :data:`EventHandler`, called as
      ``handler(app, conn, event)`` by one consumer of the group named after
      the service (a handler that can't be called so is refused here);
    - ``sagas``: the sagas it owns (:mod:`core.events.saga`): their replies
      are consumed by the same consumer, their commands and compensations
      go through its outbox, and ``request.app[SAGAS][name]`` is each one's
      :class:`~core.events.saga.SagaRunner`;
    - ``settings``: its settings class, :class:`ServiceSettings` or a subclass
      with settings of its own (``request.app[SETTINGS]`` is the object);
    - ``contexts``: cleanup contexts of its own resources, opened after the
      scaffold's (they may use the database, config, calls) and before the
      instance registers, closed first;
    - ``access``: the policy (``public``, ``authenticated``, ``roles:a,b``) of
      each of its routes, keyed ``"METHOD /path"`` with the path as declared
      (``"GET /products/{id}"``; a ``HEAD`` follows its ``GET``), and
      ``default_access`` for the others. Enforced only when the service is
      given a JWKS URL (``--jwks-url``); they should say what the gateway's
      routes to the service say;
    - ``admin_access``: the policy of the operator's actions the scaffold
      adds, replaying and discarding dead letters (:data:`ADMIN_ROUTES`);
      an ``access`` entry for one of them overrides it;
    - ``openapi``: a function that describes the service's routes in its
      OpenAPI document (``spec.op(...)`` for each), served at
      ``/openapi.json`` with the scaffold's own routes
      (:mod:`core.service.openapi`).
    """

    name: str
    description: str
    routes: web.RouteTableDef
    migrations: Sequence[Migration] = ()
    config: type[Any] | None = None
    config_section: str | None = None
    calls: tuple[str, ...] = ()
    emits: tuple[str, ...] = ()
    handlers: Mapping[str, EventHandler] = dataclasses.field(default_factory=dict)
    sagas: tuple[Saga, ...] = ()
    settings: type[ServiceSettings] = ServiceSettings
    contexts: tuple[CleanupContext, ...] = ()
    access: Mapping[str, str] = dataclasses.field(default_factory=dict)
    default_access: str = "authenticated"
    admin_access: str = "roles:admin"
    openapi: Callable[[Spec], None] | None = None

    def __post_init__(self) -> None:
        Policy.parse(self.default_access)
        Policy.parse(self.admin_access)
        for key, text in self.access.items():
            method, _, path = key.partition(" ")
            if not method.isupper() or not path.startswith("/"):
                raise ValueError(f"access: {key!r}: expected 'METHOD /path'")
            Policy.parse(text)
        for event_type, handler in self.handlers.items():
            _check_handler(event_type, handler)
        for saga in self.sagas:
            for reply in saga.reply_types:
                if reply in self.handlers:
                    raise ValueError(f"{reply!r} is both a handler's and saga {saga.name!r}'s")

    @property
    def publishes(self) -> bool:
        """Whether it needs an outbox relay: it emits events or runs sagas."""
        return bool(self.emits or self.sagas)

    @property
    def consumes(self) -> bool:
        """Whether it needs a consumer: it handles events or runs sagas."""
        return bool(self.handlers or self.sagas)

    @property
    def env_prefix(self) -> str:
        return self.name.upper().replace("-", "_") + "_"


def _check_handler(event_type: str, handler: Any) -> None:
    """Refuse, when the service is declared, a handler the consumer could not call.

    A wrong signature would otherwise show only when the first event comes:
    a ``TypeError`` on every delivery, then a dead letter.
    """
    name = getattr(handler, "__qualname__", repr(handler))
    if inspect.iscoroutinefunction(handler):
        raise ValueError(
            f"handlers[{event_type!r}]: {name} is async; an event handler runs on the "
            "database's thread, inside the transaction: def handler(app, conn, event) -> None"
        )
    try:
        signature = inspect.signature(handler)
    except (TypeError, ValueError):
        return  # no signature to read (a builtin): the first event will tell
    try:
        signature.bind(None, None, None)
    except TypeError:
        raise ValueError(
            f"handlers[{event_type!r}]: {name}{signature} can't be called as "
            "handler(app, conn, event)"
        ) from None


class _Lifecycle:
    """What the app learns after it started: its registration, when a request last arrived."""

    def __init__(self) -> None:
        self.registration: Registration | None = None
        self.last_request = 0.0  # time.monotonic()
        # Set when shutdown begins: answers from then on close their connection.
        self.leaving = False


#: At shutdown, after deregistering: traffic silent this long means the watchers stopped routing.
QUIET = 0.1


async def _deregister_first(app: web.Application) -> None:
    """Deregister, then wait until no request arrived for :data:`QUIET` (``deregister_wait`` at most).

    Under traffic the gateway's requests stop within milliseconds of the
    deregistration; an idle instance waits :data:`QUIET` only.
    """
    lifecycle = app[LIFECYCLE]
    lifecycle.leaving = True
    if lifecycle.registration is None:
        return
    await _deregister(app)
    deadline = time.monotonic() + app[SETTINGS].deregister_wait
    while True:
        # Until QUIET after the last request (which may be later than the one seen now).
        wait = min(deadline, lifecycle.last_request + QUIET) - time.monotonic()
        if wait <= 0:
            return
        await asyncio.sleep(wait)


# Typed application keys.
SERVICE = web.AppKey("service", Service)
SETTINGS = web.AppKey("settings", ServiceSettings)
INSTANCE_ID = web.AppKey("instance_id", str)
METRICS = web.AppKey("metrics", HTTPMetrics)
LIFECYCLE = web.AppKey("lifecycle", _Lifecycle)
REDIS: web.AppKey[Redis] = web.AppKey("redis")
DB = web.AppKey("db", Database)
CONFIG = web.AppKey("config", ConfigClient)
DYNAMIC = web.AppKey("dynamic", TypedView[Any])
HTTP_CONFIG = web.AppKey("http_config", TypedView[CallConfig])
WATCHER = web.AppKey("watcher", Watcher)
CALLS = web.AppKey("calls", Calls)
RELAY = events_http.RELAY
CONSUMER = events_http.CONSUMER
#: The runner of each saga the service owns, by the saga's name.
SAGAS = web.AppKey("sagas", dict[str, SagaRunner])
#: The token verifier, when the service was given a JWKS URL.
VERIFIER = web.AppKey("verifier", Verifier)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# ----------------------------------------------------------------------------- resources


async def _telemetry_ctx(app: web.Application) -> AsyncIterator[None]:
    """Head sampling and span export, when asked for: opened first, closed last.

    The sampling ratio applies to the traces the process starts
    (:func:`core.trace.sample`), with export on or off: a trace's decision
    travels with it, so services downstream that export obey it.
    """
    settings = app[SETTINGS]
    trace.sample(settings.otel_sample)
    try:
        async with exporting(
            settings.otel_endpoint, service=app[SERVICE].name, instance=app[INSTANCE_ID]
        ):
            yield
    finally:
        trace.sample(1.0)


async def _access_ctx(app: web.Application) -> AsyncIterator[None]:
    """The key set's refresh loop, when tokens are verified here."""
    verifier = app.get(VERIFIER)
    if verifier is None:
        yield
        return
    tasks = TaskSet(app[SERVICE].name)
    tasks.spawn(verifier.keys.run(), "jwks")
    yield
    await tasks.stop()
    await verifier.keys.close()


async def _redis_ctx(app: web.Application) -> AsyncIterator[None]:
    client = connect(app[SETTINGS].redis_url)
    app[REDIS] = client
    yield
    await client.aclose()


def data_dir(settings: ServiceSettings, name: str) -> Path:
    """Where the service keeps its database and its last-known config."""
    return Path(settings.data_dir or os.path.join("data", name))


async def _db_ctx(app: web.Application) -> AsyncIterator[None]:
    service = app[SERVICE]
    directory = data_dir(app[SETTINGS], service.name)
    directory.mkdir(parents=True, exist_ok=True)
    # Instances of a service share its database; Database.open migrates under
    # SQLite's write lock, so instances starting together take turns.
    db = await Database.open(directory, service.name, service.migrations)
    app[DB] = db
    logger.info("database %s at schema version %d", db.path, db.version)
    yield
    await db.close()


async def _config_ctx(app: web.Application) -> AsyncIterator[None]:
    settings, service = app[SETTINGS], app[SERVICE]
    client = ConfigClient(
        settings.config_url or None,
        service.name,
        settings.config_profile,
        redis=app[REDIS],
        cache_dir=data_dir(settings, service.name),
        token=settings.config_token or None,
    )
    app[CONFIG] = client
    app[HTTP_CONFIG] = client.typed(CallConfig, "http")
    if service.config is not None:
        app[DYNAMIC] = client.typed(service.config, service.config_section or service.name)
    await client.start()
    yield
    await client.stop()


async def _calls_ctx(app: web.Application) -> AsyncIterator[None]:
    """The registry snapshot and the calls through it; Redis away is not fatal (503 per call)."""
    if not app[SERVICE].calls:
        yield
        return
    watcher = Watcher(app[REDIS], resync_interval=app[SETTINGS].resync_interval)
    app[WATCHER] = watcher
    http = app[HTTP_CONFIG]
    calls = Calls(
        watcher,
        policy=UpstreamPolicy(retry=RetryPolicy(attempts=http.current.retries + 1)),
        timeouts=http.current.timeouts,
    )
    app[CALLS] = calls

    def follow(config: Mapping[str, Any], changed: set[str]) -> None:
        if any(key.startswith("http.") for key in changed):
            calls.timeouts = http.current.timeouts
            calls.policy = dataclasses.replace(
                calls.policy, retry=RetryPolicy(attempts=http.current.retries + 1)
            )

    app[CONFIG].on_change(follow)
    await watcher.start(wait=3.0)
    if not watcher.connected:
        logger.warning("Redis unreachable at start: calls answer 503 until it is back")
    yield
    await calls.close()
    await watcher.stop()


async def _relay_ctx(app: web.Application) -> AsyncIterator[None]:
    if not app[SERVICE].publishes:
        yield
        return
    relay = OutboxRelay(app[DB], EventBus(app[REDIS]), poll_interval=app[SETTINGS].outbox_poll)
    app[RELAY] = relay
    await relay.start()
    yield
    await relay.stop()


async def _sagas_ctx(app: web.Application) -> AsyncIterator[None]:
    """A runner per saga: started before the consumer hands it replies, stopped after it."""
    runners = {saga.name: SagaRunner(saga, app[DB]) for saga in app[SERVICE].sagas}
    app[SAGAS] = runners
    for runner in runners.values():
        await runner.start()
    yield
    for runner in runners.values():
        await runner.stop()


async def _consumer_ctx(app: web.Application) -> AsyncIterator[None]:
    service, settings = app[SERVICE], app[SETTINGS]
    if not service.consumes:
        yield
        return
    handlers: dict[str, TxHandler] = {
        type: functools.partial(handler, app) for type, handler in service.handlers.items()
    }
    for runner in app[SAGAS].values():
        handlers.update(dict.fromkeys(runner.saga.reply_types, runner.handle))

    def dispatch(conn: sqlite3.Connection, event: Event) -> None:
        handler = handlers.get(event.type)
        if handler is None:
            raise LookupError(f"{service.name} has no handler for events of type {event.type!r}")
        handler(conn, event)

    consumer = Consumer(
        app[REDIS],
        app[DB],
        group=service.name,
        consumer=app[INSTANCE_ID],
        types=sorted(handlers),
        handler=dispatch,
        visibility_timeout=settings.visibility_timeout,
        max_deliveries=settings.max_deliveries,
        block_ms=1000,
    )
    app[CONSUMER] = consumer
    await consumer.start(wait=2.0)
    yield
    await consumer.stop()


async def _registration_ctx(app: web.Application) -> AsyncIterator[None]:
    """Nothing to open (registration starts once listening); stops it if shutdown did not."""
    yield
    await _deregister(app)


async def _deregister(app: web.Application) -> None:
    lifecycle = app[LIFECYCLE]
    registration, lifecycle.registration = lifecycle.registration, None
    if registration is not None:
        await registration.stop(deregister=True)
        logger.info("deregistered %s/%s", registration.instance.service, registration.instance.id)


async def start_registration(app: web.Application, host: str, port: int) -> Registration:
    """Register the instance listening on ``host:port`` and keep it registered.

    Called once the port listens. It doesn't wait for Redis (or the registry,
    with ``--registry-url``): the registration keeps trying in the background.
    """
    settings = app[SETTINGS]
    advertise = settings.advertise_host or ("127.0.0.1" if host in ("", "0.0.0.0", "::") else host)
    instance = Instance(
        service=app[SERVICE].name,
        id=app[INSTANCE_ID],
        host=advertise,
        port=port,
        ttl=settings.ttl,
        metadata={"pid": str(os.getpid()), "version": _VERSION},
    )
    target: Redis | RegistryClient = app[REDIS]
    if settings.registry_url:
        target = RegistryClient(settings.registry_url, settings.registry_token)
    # The registry's Redis (the watcher reads it too): when it comes back, perhaps
    # emptied, the registration checks its instance at once.
    registration = Registration(target, instance, redis=app[REDIS])
    app[LIFECYCLE].registration = registration
    await registration.start(wait=2.0)
    if not registration.registered.is_set():
        logger.warning(
            "not registered yet (%s); retrying in the background",
            registration.refusal or "the registry is unreachable",
        )
    return registration


# ----------------------------------------------------------------------------- routes


def public_path(request: web.Request, path: str) -> str:
    """``path`` as the client reaches it: behind the gateway's prefix (``X-Forwarded-Prefix``).

    For ``Location`` headers: ``/customers/7`` answered through the gateway's
    discovery route is ``/customers/customers/7`` for the client.
    """
    return errors.public_path(request, path)


async def health(request: web.Request) -> web.Response:
    """``GET /health``: what the instance depends on and how it is doing."""
    app = request.app
    service = app[SERVICE]
    redis_ok = await redis_health(app[REDIS])
    try:
        await asyncio.wait_for(app[DB].run(lambda c: c.execute("SELECT 1").fetchone()), 2.0)
        db_ok = True
    except (sqlite3.Error, TimeoutError):
        db_ok = False
    config = app[CONFIG]
    registration = app[LIFECYCLE].registration
    config_ok = config.source == "server" or config.url is None
    status = "UP" if redis_ok and config_ok else "DEGRADED"
    if not db_ok:
        status = "DOWN"
    body: dict[str, Any] = {
        "status": status,
        "service": service.name,
        "instance": app[INSTANCE_ID],
        "redis": "UP" if redis_ok else "DOWN",
        "database": {"status": "UP" if db_ok else "DOWN", "path": str(app[DB].path)},
        "config": config.describe(),
        "registered": registration is not None and registration.registered.is_set(),
    }
    if WATCHER in app:
        body["registry"] = app[WATCHER].describe()
    if VERIFIER in app:
        keys = app[VERIFIER].keys
        body["tokens"] = {"jwks_url": keys.url, "keys": len(keys.keys), "fetches": keys.fetches,
                          "failures": keys.failures}  # fmt: skip
    body["events"] = await events_http.describe(app.get(CONSUMER), app.get(RELAY))
    if app.get(SAGAS):
        body["events"]["sagas"] = {name: r.describe() for name, r in app[SAGAS].items()}
    return json_response(body, status=200 if db_ok else 503)


def readiness(app: web.Application) -> dict[str, Check]:
    """Ready while the database answers and no config version was rejected.

    Redis away is not unready: the service answers from its database, its
    events wait in the outbox and it registers again once Redis is back.
    """

    async def database() -> tuple[bool, Any]:
        try:
            await app[DB].run(lambda c: c.execute("SELECT 1").fetchone())
        except sqlite3.Error as exc:
            return False, str(exc)
        return True, str(app[DB].path)

    return {"database": database, "config": config_check(app[CONFIG])}


class _EventMetrics(Collector):
    """The consumer's and the relay's counters, read at scrape time."""

    def __init__(self, app: web.Application, namespace: str) -> None:
        self.app = app
        self.namespace = namespace

    def collect(self) -> Iterator[Metric]:
        consumer = self.app.get(CONSUMER)
        if consumer is not None:
            family = CounterMetricFamily(
                f"{self.namespace}_events",
                "events taken from the bus, by outcome",
                labels=["outcome"],
            )
            for outcome in ("handled", "duplicates", "failures", "dead_lettered"):
                family.add_metric([outcome], getattr(consumer, outcome))
            yield family
        runners = self.app.get(SAGAS)
        if runners:
            family = CounterMetricFamily(
                f"{self.namespace}_saga_events",
                "what came of the sagas' replies, timeouts and resends, by saga",
                labels=["saga", "outcome"],
            )
            for name, runner in runners.items():
                for outcome, count in runner.describe().items():
                    family.add_metric([name, outcome], count)
            yield family
        relay = self.app.get(RELAY)
        if relay is not None:
            yield CounterMetricFamily(
                f"{self.namespace}_events_published",
                "events the outbox relay published",
                value=relay.published,
            )
            yield GaugeMetricFamily(
                f"{self.namespace}_events_relay_connected",
                "1 while the relay can publish",
                value=1 if relay.connected.is_set() else 0,
            )


@web.middleware
async def _database_busy(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The database locked by another writer for too long: 503 with ``Retry-After``, not a 500."""
    try:
        return await handler(request)
    except sqlite3.OperationalError as exc:
        if "locked" not in str(exc) and "busy" not in str(exc):
            raise
        raise ServiceUnavailable(
            f"the database is busy: {exc}", headers={"Retry-After": "1"}
        ) from None


OPEN_PATHS = ("/health", "/health/live", "/health/ready", "/metrics")
#: The scaffold's routes that change what a service will do, for admins only by
#: default (:attr:`Service.admin_access`): a replay re-runs events, a discard loses them.
ADMIN_ROUTES = (("POST", "/events/dead/replay"), ("POST", "/events/dead/discard"))


def route_policies(service: Service, app: web.Application) -> Callable[[web.Request], Policy]:
    """The policy of each request: by its route's method and path, else the default.

    Raises ``ValueError`` for an ``access`` key that names no route of ``app``.
    """
    declared = {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource}
    policies: dict[tuple[str, str], Policy] = {
        route: Policy.parse(service.admin_access) for route in ADMIN_ROUTES if route in declared
    }
    for key, text in service.access.items():
        method, _, path = key.partition(" ")
        if (method, path) not in declared:
            raise ValueError(f"access: {key!r}: {service.name} has no such route")
        policies[(method, path)] = Policy.parse(text)
    for path in OPEN_PATHS:
        policies[("GET", path)] = PUBLIC
    default = Policy.parse(service.default_access)

    def policy_for(request: web.Request) -> Policy:
        resource = request.match_info.route.resource
        if resource is None:
            return default
        path = resource.canonical
        method = request.method
        found = policies.get((method, path))
        if found is None and method == "HEAD":
            found = policies.get(("GET", path))
        return default if found is None else found

    return policy_for


def build_app(service: Service, settings: ServiceSettings) -> web.Application:
    """The service's application; its resources open in its cleanup contexts."""
    metrics = HTTPMetrics(service.name.replace("-", "_"))
    instance_id = settings.instance_id or f"{service.name}-{secrets.token_hex(4)}"
    lifecycle = _Lifecycle()

    @web.middleware
    async def identify(request: web.Request, handler: Handler) -> web.StreamResponse:
        lifecycle.last_request = time.monotonic()
        response = await handler(request)
        response.headers["X-Instance-ID"] = instance_id
        if lifecycle.leaving:
            # Keep-alive clients move to another process now, on an answer,
            # rather than have an idle connection closed under their next request.
            response.force_close()
        return response

    # The access log sits inside the request's span (its ids) and outside the
    # problem middleware (the status the client gets).
    access = [access_log_middleware(service.name, instance_id)] if settings.access_log else []
    app = web.Application(
        middlewares=[metrics.middleware, identify, forwarding_middleware, *access,
                     problem_middleware, dependency_middleware, redis_unavailable(service.name),
                     _database_busy],
        client_max_size=1024 * 1024,
    )  # fmt: skip
    app[SERVICE] = service
    app[SETTINGS] = settings
    app[INSTANCE_ID] = instance_id
    app[METRICS] = metrics
    app[LIFECYCLE] = lifecycle
    metrics.registry.register(_EventMetrics(app, metrics.namespace))
    for ctx in (_telemetry_ctx, _access_ctx, _redis_ctx, _db_ctx, _config_ctx, _calls_ctx, _relay_ctx,
                _sagas_ctx, _consumer_ctx, *service.contexts, _registration_ctx):  # fmt: skip
        app.cleanup_ctx.append(ctx)
    app.on_shutdown.append(_deregister)
    app.router.add_get("/health", health)
    add_health_routes(app, readiness)
    app.router.add_get("/metrics", metrics.handle)
    app.router.add_get("/openapi.json", service_openapi.build(service).handle)
    events_http.add_routes(app, consumes=service.consumes, emits=service.publishes)
    app.add_routes(service.routes)
    policy_for = route_policies(service, app)
    if settings.jwks_url:
        verifier = Verifier(
            KeySet(settings.jwks_url), issuer=settings.jwt_issuer, audience=settings.jwt_audience
        )
        app[VERIFIER] = verifier
        # After problem_middleware, so that refusals are problem details.
        after = app.middlewares.index(problem_middleware) + 1
        app.middlewares.insert(after, access_middleware(verifier, policy_for))
    return app


def run_service(service: Service, argv: Sequence[str] | None = None) -> int:
    """Run ``service`` until SIGTERM/SIGINT; the process's exit code (2: bad settings, 3: failed start)."""
    settings = configure(
        service.settings,
        name=service.name,
        prefix=service.env_prefix,
        argv=argv,
        prog=f"python -m services.{service.name}",
        description=service.description,
    )
    if settings is None:
        return BAD_SETTINGS
    app = build_app(service, settings)

    async def on_started(bound: list[tuple[str, str, int]]) -> None:
        _, host, port = bound[0]
        await start_registration(app, host, port)
        logger.info("%s ready as %s", service.name, app[INSTANCE_ID])

    return run(
        [Site(app, settings.host, settings.port, service.name, fd=settings.listen_fd)],
        shutdown_timeout=settings.shutdown_timeout,
        on_started=on_started,
        before_stop=functools.partial(_deregister_first, app),
    )
