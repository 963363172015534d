"""The discovery service: ``python -m registry``.

An HTTP API over the registry's Redis state (:mod:`core.registry.store`):
register, heartbeat, change, deregister and list instances, and a
Server-Sent Events stream of changes (:mod:`core.registry.events`). The
process holds no state of its own: restarting it loses nothing. It also runs
the expirer (:mod:`core.registry.expiry`), which turns an instance whose
deadline passed into a ``down`` event within milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web
from prometheus_client import Counter, Gauge

from core import log
from core.config.client import ConfigClient
from core.errors import SettingsError, problem_middleware
from core.http import Check, add_health_routes, config_check, redis_check, redis_unavailable
from core.metrics import HTTPMetrics
from core.redis import connect
from core.registry import eureka
from core.registry.api import (
    BODY_LIMIT,
    CONFIG,
    CREDENTIALS,
    DYNAMIC,
    EXPIRER,
    HUB,
    METRICS,
    REDIS,
    SSE_CLIENTS,
    STORE,
    TARGETS,
    Dynamic,
    add_routes,
)
from core.registry.credentials import Credentials, service_token, status_token
from core.registry.events import EventHub
from core.registry.expiry import Expirer
from core.registry.store import RegistryStore
from core.registry.targets import (
    DEFAULT_DENIED,
    DEFAULT_RESERVED_PORTS,
    TargetPolicy,
    local_addresses,
    parse_networks,
    parse_ports,
)
from core.runner import BAD_SETTINGS, Site, configure, run
from core.settings import CommonSettings, Secret, is_loopback, load, option
from core.tasks import TaskSet

logger = log.get("registry")

__all__ = ["Dynamic", "Settings", "build_app", "main"]


@dataclasses.dataclass(frozen=True)
class Settings(CommonSettings):
    """The registry's settings (prefix ``REGISTRY_``)."""

    port: int = dataclasses.field(default=8761, metadata=option("TCP port to listen on"))
    token: Secret = dataclasses.field(
        default=Secret(""),
        metadata=option(
            "the operator's bearer token: every write; it also issues the per-service tokens "
            "(python -m registry token NAME); required off loopback"
        ),
    )
    deny_networks: str = dataclasses.field(
        default=DEFAULT_DENIED,
        metadata=option("networks (CIDR, comma-separated) no instance may be registered in"),
    )
    allow_networks: str = dataclasses.field(
        default="",
        metadata=option("networks (CIDR, comma-separated) allowed even inside a denied one"),
    )
    reserved_ports: str = dataclasses.field(
        default=DEFAULT_RESERVED_PORTS,
        metadata=option(
            "control-plane ports (comma-separated) no instance on this host may use, besides "
            "the registry's own and those of REDIS_URL and --config-url"
        ),
    )
    default_ttl: int = dataclasses.field(
        default=10, metadata=option("TTL in seconds of an instance that gives none")
    )
    sweep_interval: float = dataclasses.field(
        default=0.5,
        metadata=option("longest wait, in seconds, between two checks for expired instances"),
    )
    config_url: str | None = dataclasses.field(
        default=None,
        metadata=option("configsvc URL; default_ttl and sweep_interval then follow it live"),
    )
    config_profile: str = dataclasses.field(
        default="default", metadata=option("profile of the registry's config in configsvc")
    )
    config_token: Secret = dataclasses.field(
        default=Secret(""),
        metadata=option("CONFIGSVC_TOKEN to send to configsvc (needed for configs with secrets)"),
    )
    config_cache_dir: str | None = dataclasses.field(
        default=None, metadata=option("directory for the last-known config copy (none: no copy)")
    )

    def validate(self) -> None:
        super().validate()
        try:
            Dynamic(self.default_ttl, self.sweep_interval)  # the bounds live in one place
        except ValueError as exc:
            field, _, reason = str(exc).partition(": ")
            raise SettingsError(f"REGISTRY_{field.upper()}: {reason}") from None
        for name, parse in (("deny_networks", parse_networks), ("allow_networks", parse_networks),
                            ("reserved_ports", parse_ports)):  # fmt: skip
            try:
                parse(getattr(self, name))
            except ValueError as exc:
                raise SettingsError(f"REGISTRY_{name.upper()}: {exc}") from None
        if not self.token and not is_loopback(self.host):
            raise SettingsError(
                f"REGISTRY_TOKEN: required when listening on {self.host} (not loopback): "
                "anyone who can register can steal a service's traffic"
            )


SETTINGS = web.AppKey("settings", Settings)
#: The expirer's task (it ends once :func:`_on_shutdown` stopped the expirer).
EXPIRY_TASK: web.AppKey[asyncio.Task[None]] = web.AppKey("expiry_task")


def target_policy(settings: Settings) -> TargetPolicy:
    """The target rule of ``settings``: its networks, and every control-plane port it knows."""
    ports = set(parse_ports(settings.reserved_ports))
    for url in (settings.redis_url, settings.config_url):
        with contextlib.suppress(ValueError):
            port = urlsplit(url or "").port
            if port:
                ports.add(port)
    if settings.port:
        ports.add(settings.port)
    return TargetPolicy(
        denied=parse_networks(settings.deny_networks),
        allowed=parse_networks(settings.allow_networks),
        reserved_ports=frozenset(ports),
        local=local_addresses([settings.host]),
    )


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
        token=settings.config_token or None,
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
    expirer = Expirer(app[STORE], lambda: dynamic.current.sweep_interval, expired)
    app[HUB] = hub
    app[EXPIRER] = expirer
    tasks = TaskSet("registry")
    tasks.spawn(hub.subscription.run(), "events")
    app[EXPIRY_TASK] = tasks.spawn(expirer.run(), "expiry")
    yield
    hub.subscription.stop()
    await tasks.stop()


async def _on_shutdown(app: web.Application) -> None:
    """First thing at a stop: expire no more, and end the event streams.

    A stopping registry no longer answers heartbeats; expiring the instances
    that could not send one meanwhile would take them out of routing for
    its own stop (another registry, or the next process, expires what is
    really gone).
    """
    if EXPIRER in app:
        # Not a cancellation: a Redis call cancelled half way can leave the
        # client unusable for the requests still being served (Cluster).
        app[EXPIRER].stop()
    app[HUB].shutdown()


def build_app(settings: Settings) -> web.Application:
    """The registry application; Redis is connected in its cleanup context."""
    metrics = HTTPMetrics("registry")
    app = web.Application(
        middlewares=[metrics.middleware, problem_middleware, redis_unavailable("registry")],
        client_max_size=BODY_LIMIT,
    )
    app[SETTINGS] = settings
    app[CREDENTIALS] = Credentials(settings.token)
    app[TARGETS] = target_policy(settings)
    app[METRICS] = metrics
    app[SSE_CLIENTS] = Gauge(
        "registry_sse_clients", "open /v1/events streams", registry=metrics.registry
    )
    app.cleanup_ctx.append(_redis_ctx)
    app.cleanup_ctx.append(_config_ctx)
    app.cleanup_ctx.append(_background_ctx)
    app.on_shutdown.append(_on_shutdown)
    add_routes(app, metrics)
    eureka.add_routes(app)  # after _background_ctx: its delta listens to the hub
    add_health_routes(app, readiness)
    return app


def readiness(app: web.Application) -> dict[str, Check]:
    """Ready while Redis answers and no config version was rejected."""
    return {"redis": redis_check(app[REDIS]), "config": config_check(app[CONFIG])}


def print_token(argv: Sequence[str]) -> int:
    """``python -m registry token SERVICE``: print the token that may write SERVICE only.

    ``python -m registry token --status``: the token that may change any
    instance's status only (a console's, an operator tool's).
    """
    if not argv or (argv[0].startswith("-") and argv[0] != "--status"):
        print(
            "usage: python -m registry token SERVICE|--status [--token OPERATOR_TOKEN]",
            file=sys.stderr,
        )
        return BAD_SETTINGS
    try:
        settings = load(
            Settings, prefix="REGISTRY_", argv=argv[1:], prog="python -m registry token"
        )
        if argv[0] == "--status":
            print(status_token(settings.token))
        else:
            print(service_token(settings.token, argv[0]))
    except (SettingsError, ValueError) as exc:
        print(f"registry token: {exc}", file=sys.stderr)
        return BAD_SETTINGS
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "token":
        return print_token(argv[1:])
    settings = configure(
        Settings,
        name="registry",
        prefix="REGISTRY_",
        argv=argv,
        description="Essaim discovery service: where every service records its address.",
    )
    if settings is None:
        return BAD_SETTINGS
    if not settings.token:
        logger.warning(
            "no REGISTRY_TOKEN: anyone who can reach %s:%d can register, change and deregister "
            "any service's instances (set one to require it for writes)",
            settings.host, settings.port,
        )  # fmt: skip
    return run([Site(build_app(settings), settings.host, settings.port, "registry",
                     fd=settings.listen_fd)],
               shutdown_timeout=settings.shutdown_timeout)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
