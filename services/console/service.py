"""The console service: the page, its JSON and Server-Sent Events API, and the admin actions.

| method and path | answer | who |
|---|---|---|
| ``GET /`` | the page (HTML; its assets are under ``/assets/``) | anyone |
| ``GET /assets/{name}`` | ``console.css``, ``console.js``, ``icon.svg`` | anyone |
| ``GET /api/me`` | ``{user, roles, admin, actions}``: who the token names, whether they may act | a login |
| ``GET /api/state`` | every section (``services``, ``gateway``, ``config``, ``events``, ``audit``) | a login |
| ``GET /api/stream`` | Server-Sent Events: ``hello``, then each section as it changes | a login |
| ``GET /api/config/{name}/versions/{version}`` | ``{name, version, toml}`` | a login |
| ``GET /api/config/{name}/diff?from=A&to=B`` | ``{name, from, to, diff: [unified diff lines]}`` | a login |
| ``POST /api/config/{name}/rollback`` | ``{version}``: configsvc's answer | admin |
| ``POST /api/services/{service}/instances/{id}/status`` | ``{status: OUT_OF_SERVICE or UP}``: the instance | admin |
| ``POST /api/events/{group}/dead/replay`` | ``{ids}``: ``{replayed}`` | admin |
| ``POST /api/events/{group}/dead/discard`` | ``{ids}``: ``{discarded}`` | admin |

Behind the gateway the console is ``/console/``: a browser logs in with a
session there (``/-/session``), and the gateway relays a short-lived access
token to the console with each request. That token is what authorizes: the
scaffold verifies it (``--jwks-url``) against each route's policy, and each
action (:mod:`services.console.actions`) checks again that it names an
admin, records who it was (:mod:`services.console.audit`), and acts:

- an instance's status goes to the registry with the console's registry
  token (``CONSOLE_REGISTRY_TOKEN``, the operator's: only the console's
  check stands between a user and it);
- a rollback goes to configsvc with the console's configsvc token;
- a replay or discard goes to the service that owns the dead letters,
  called by name with the **user's** token relayed (``core.service.calls``),
  so that the service checks the admin role itself too.

Without ``--jwks-url`` the console verifies nobody: it shows everything and
refuses every action (403), since it would not know who acts.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import html
import re
import time
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from core import log
from core.errors import (
    BadRequest,
    NotFound,
    SettingsError,
)
from core.http import json_response, open_stream
from core.registry.client import RegistryClient
from core.registry.discovery import Watcher
from core.security.access import IDENTITY
from core.service.calls import Calls
from core.service.scaffold import (
    DB,
    INSTANCE_ID,
    REDIS,
    SETTINGS,
    VERIFIER,
    Service,
    ServiceSettings,
)
from core.settings import Secret, option
from core.upstream.retry import RetryPolicy
from core.upstream.upstream import UpstreamPolicy
from services.console import actions, openapi
from services.console.actions import ADMIN, ADMIN_ROLE, DOCUMENT_RE, user_of
from services.console.audit import MIGRATIONS, Audit
from services.console.configs import Configs
from services.console.hub import Hub
from services.console.instances import Instances
from services.console.keys import (
    AUDIT,
    CONFIGS,
    HUB,
    INSTANCES,
    OWNER_CALLS,
    POLLED,
    STREAMS,
    Polled,
)
from services.console.streams import Streams
from services.console.traffic import Traffic

logger = log.get("console")

__all__ = ["SERVICE", "ConsoleSettings"]

#: Seconds between keep-alive comments on a browser's stream.
KEEPALIVE = 15.0
#: What may precede /console/ in the page's <base href>: a path the gateway stripped.
PREFIX_RE = re.compile(r"^(/[A-Za-z0-9._~-]+)*\Z")


@dataclasses.dataclass(frozen=True)
class ConsoleSettings(ServiceSettings):
    """The console's settings (prefix ``CONSOLE_``): where the parts of the system answer.

    ``registry_url`` (the scaffold's) is also what the console reads and
    watches; ``status_token`` is the registry's status token (it may change
    instances' status, nothing else), which the status action needs;
    ``config_url`` and ``config_token`` are configsvc's, which the rollback
    action needs. A source whose URL is unset is shown as not configured.
    """

    status_token: Secret = dataclasses.field(
        default=Secret(""),
        metadata=option(
            "the registry's status token (ops.status.MAC: python -m registry token --status), "
            "for the instance status action"
        ),
    )
    gateway_admin_url: str = dataclasses.field(
        default="",
        metadata=option("the gateway's admin API (routes, upstreams, metrics; unset: not shown)"),
    )
    poll_interval: float = dataclasses.field(
        default=1.0,
        metadata=option("seconds between reads of the gateway and the event bus while watched"),
    )

    def validate(self) -> None:
        super().validate()
        if not 0.1 <= self.poll_interval <= 60:
            raise SettingsError(f"poll_interval: expected 0.1-60 seconds, got {self.poll_interval}")
        if self.gateway_admin_url and not re.match(r"^https?://", self.gateway_admin_url):
            raise SettingsError(
                f"gateway_admin_url: expected an http(s) URL, got {self.gateway_admin_url!r}"
            )


routes = web.RouteTableDef()
actions.add_routes(routes)


# ----------------------------------------------------------------------------- the page


@dataclasses.dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def _load_assets() -> dict[str, Asset]:
    types = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml",
             ".html": "text/html"}  # fmt: skip
    found = {}
    for entry in resources.files("services.console").joinpath("static").iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.is_file() and suffix in types:
            body = entry.read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
            found[entry.name] = Asset(body, types[suffix], etag)
    return found


ASSETS = _load_assets()
#: The page's policy: its own scripts and styles only, no framing, no other origin.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; base-uri 'self'; form-action 'self'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def _asset_response(request: web.Request, asset: Asset, body: bytes | None = None) -> web.Response:
    headers = {**PAGE_HEADERS, "ETag": asset.etag, "Cache-Control": "no-cache"}
    if body is None and asset.etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    if body is not None:
        headers.pop("ETag")
    return web.Response(
        body=asset.body if body is None else body,
        content_type=asset.content_type,
        charset="utf-8",
        headers=headers,
    )


@routes.get("/")
async def page(request: web.Request) -> web.Response:
    """The page, its ``<base href>`` the path the browser reached it by (``/console/``)."""
    prefix = request.headers.get("X-Forwarded-Prefix", "").rstrip("/")
    if not PREFIX_RE.match(prefix):
        prefix = ""
    asset = ASSETS["index.html"]
    body = asset.body.replace(b"{{BASE}}", html.escape(prefix + "/").encode())
    return _asset_response(request, asset, body)


@routes.get("/assets/{name}")
async def asset(request: web.Request) -> web.Response:
    found = ASSETS.get(request.match_info["name"])
    if found is None or request.match_info["name"] == "index.html":
        raise NotFound(f"no asset named {request.match_info['name'][:60]!r}")
    return _asset_response(request, found)


@routes.get("/api/me")
async def me(request: web.Request) -> web.Response:
    identity = request.get(IDENTITY)
    verified = VERIFIER in request.app
    if identity is None:
        return json_response({"user": None, "roles": [], "admin": False, "actions": False,
                              "verified": verified})  # fmt: skip
    admin = ADMIN_ROLE in identity.roles
    return json_response({
        "user": user_of(identity), "roles": list(identity.roles), "admin": admin,
        "actions": admin and verified, "verified": verified, "expires_at": identity.exp,
    })  # fmt: skip


# ----------------------------------------------------------------------------- the state


@routes.get("/api/state")
async def state(request: web.Request) -> web.Response:
    """Every section now; a section not read for a while is read first."""
    hub = request.app[HUB]
    hub.touch()
    await _refresh_stale(request.app)
    return json_response({"now": time.time(), **hub.snapshot()})


async def _refresh_stale(app: web.Application) -> None:
    hub = app[HUB]
    now = time.monotonic()
    stale = [s for s in app[POLLED] if now - hub.sections[s.section].updated > 2.0]
    await asyncio.gather(*(s.refresh() for s in stale))


@routes.get("/api/stream")
async def stream(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: ``hello`` (who, when), then each section whenever it changes.

    Each event's data is ``{"now": SECONDS, "doc": SECTION}`` (the server's
    clock, so that the page shows ages right whatever the browser's clock
    says). The stream ends when the relayed token expires: the browser
    reconnects (``retry:``), and the gateway checks the session again.
    """
    hub = request.app[HUB]
    identity = request.get(IDENTITY)
    ends = identity.exp if identity is not None else None
    response = await open_stream(request, "essaim console")
    user = None if identity is None else user_of(identity)
    hello = {"user": user, "ends_at": ends, "instance": request.app[INSTANCE_ID]}
    await response.write(_frame("hello", hello))
    with hub.watch():
        await _refresh_stale(request.app)
        sent = hub.marks()
        with contextlib.suppress(ConnectionResetError):
            while True:
                wait = KEEPALIVE if ends is None else min(KEEPALIVE, ends - time.time())
                if wait <= 0:
                    break
                changed = await hub.next_changes(sent, wait)
                if changed is None:
                    break
                if not changed:
                    await response.write(b": keepalive\n\n")
                for section in changed:
                    await response.write(_frame(section.name, section.body))
    return response


def _frame(event: str, doc: Any) -> bytes:
    """One event whose data is ``{"now": SECONDS, "doc": DOC}`` (``doc``: JSON bytes or a value)."""
    body = doc if isinstance(doc, bytes) else orjson.dumps(doc)
    now = orjson.dumps(time.time())
    return b'event: %s\ndata: {"now":%s,"doc":%s}\n\n' % (event.encode(), now, body)


# ----------------------------------------------------------------------------- config


def _document(request: web.Request) -> str:
    name = request.match_info["name"]
    if not DOCUMENT_RE.match(name):
        raise NotFound(f"no document named {name[:70]!r}")
    return name


def _version(raw: str | None, what: str) -> int:
    if raw is None or not raw.isascii() or not raw.isdigit() or len(raw) > 9 or int(raw) < 1:
        raise BadRequest(
            f"{what} must be a version number >= 1, got {(raw or '')[:20]!r}",
            errors=[{"field": what, "reason": "expected a version number >= 1"}],
        )
    return int(raw)


def _configs(request: web.Request) -> Configs:
    configs = request.app.get(CONFIGS)
    if configs is None:
        raise NotFound("this console was given no configsvc (--config-url)")
    return configs


@routes.get("/api/config/{name}/versions/{version}")
async def config_version(request: web.Request) -> web.Response:
    name = _document(request)
    version = _version(request.match_info["version"], "version")
    toml = await _configs(request).content(name, version)
    return json_response({"name": name, "version": version, "toml": toml})


@routes.get("/api/config/{name}/diff")
async def config_diff(request: web.Request) -> web.Response:
    name = _document(request)
    old = _version(request.query.get("from"), "from")
    new = _version(request.query.get("to"), "to")
    lines = await _configs(request).diff(name, old, new)
    return json_response({"name": name, "from": old, "to": new, "diff": lines})


# ----------------------------------------------------------------------------- lifecycle


async def sources_ctx(app: web.Application) -> AsyncIterator[None]:
    """The hub and every source (each only when its URL is set), and the calls to owners."""
    settings = app[SETTINGS]
    assert isinstance(settings, ConsoleSettings)
    hub = app[HUB] = Hub()
    session = aiohttp.ClientSession()
    audit = app[AUDIT] = Audit(hub, app[DB])
    streams = app[STREAMS] = Streams(hub, app[REDIS], interval=settings.poll_interval)
    polled: list[Polled] = [streams]
    if settings.registry_url:
        writer = RegistryClient(settings.registry_url, settings.status_token)
        app[INSTANCES] = Instances(hub, session, settings.registry_url, writer,
                                   interval=max(2.0, settings.poll_interval))  # fmt: skip
        polled.append(app[INSTANCES])
    else:
        await hub.set("services", _unconfigured("the registry", "--registry-url"))
    if settings.gateway_admin_url:
        polled.append(
            Traffic(hub, session, settings.gateway_admin_url, interval=settings.poll_interval)
        )
    else:
        await hub.set("gateway", _unconfigured("the gateway's admin API", "--gateway-admin-url"))
    started: list[Polled | Configs] = list(polled)
    if settings.config_url:
        app[CONFIGS] = Configs(hub, session, settings.config_url, settings.config_token)
        started.append(app[CONFIGS])
    else:
        await hub.set("config", _unconfigured("configsvc", "--config-url"))
    app[POLLED] = polled
    watcher = Watcher(app[REDIS], resync_interval=settings.resync_interval)
    await watcher.start(wait=3.0)
    # Replays and discards are not retried: a 5xx after the owner acted would repeat it.
    app[OWNER_CALLS] = Calls(watcher, policy=UpstreamPolicy(retry=RetryPolicy(attempts=1)))
    await audit.publish()
    for source in started:
        await source.start()

    async def end_streams(app: web.Application) -> None:
        await hub.close()

    app.on_shutdown.append(end_streams)
    yield
    for source in reversed(started):
        await source.stop()
    await app[OWNER_CALLS].close()
    await watcher.stop()
    if INSTANCES in app:
        await app[INSTANCES].writer.close()
    await session.close()


def _unconfigured(what: str, flag: str) -> dict[str, Any]:
    return {"reachable": False, "configured": False,
            "error": f"this console was not told where {what} is ({flag})"}  # fmt: skip


SERVICE = Service(
    name="console",
    description="The whole system at a glance: the registry, the gateway, configsvc and the "
    "event bus, live in a browser, with an admin's actions on them (audited).",
    routes=routes,
    migrations=MIGRATIONS,
    settings=ConsoleSettings,
    contexts=(sources_ctx,),
    default_access="authenticated",
    access={
        "GET /": "public",
        "GET /assets/{name}": "public",
        "POST /api/config/{name}/rollback": ADMIN,
        "POST /api/services/{service}/instances/{id}/status": ADMIN,
        "POST /api/events/{group}/dead/replay": ADMIN,
        "POST /api/events/{group}/dead/discard": ADMIN,
    },
    openapi=openapi.describe,
)
