"""The console's actions: an admin's, each checked where it acts and audited.

| method and path | body | does |
|---|---|---|
| ``POST /api/services/{service}/instances/{id}/status`` | ``{status}`` | the registry sets it (operator token) |
| ``POST /api/config/{name}/rollback`` | ``{version}`` | configsvc rolls back (its token) |
| ``POST /api/events/{group}/dead/replay`` | ``{ids}`` | the owning service replays (the user's token) |
| ``POST /api/events/{group}/dead/discard`` | ``{ids}`` | the owning service discards (the user's token) |

:func:`actor` is the check (a verified token holding :data:`ADMIN_ROLE`),
:func:`audited` runs an action and records it with its outcome, refusals
included.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from aiohttp import web

from core.errors import BadGateway, Conflict, Forbidden, HTTPProblem, NotFound, Unauthorized
from core.events.dead_letters import is_stream_id
from core.http import json_response, read_json
from core.registry.client import RegistrationRefused, RegistryUnavailable
from core.registry.model import SERVICE_RE
from core.security.access import IDENTITY
from core.security.tokens import Identity
from core.service.scaffold import INSTANCE_ID, VERIFIER
from core.validation import Fields
from services.console.audit import Entry
from services.console.keys import AUDIT, CONFIGS, INSTANCES, OWNER_CALLS, STREAMS

__all__ = ["ADMIN", "ADMIN_ROLE", "actor", "add_routes", "audited", "user_of"]

BODY_LIMIT = 64 * 1024
STATUSES = ("OUT_OF_SERVICE", "UP")
#: The role of the console's actions, as of the scaffold's own admin routes (dead letters).
ADMIN_ROLE = "admin"
ADMIN = f"roles:{ADMIN_ROLE}"
DOCUMENT_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}\Z")
INSTANCE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
GROUP_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}\Z")
#: The console's own name in the registry.
CONSOLE = "console"


def user_of(identity: Identity) -> str:
    """The name an identity goes by in the audit: its ``preferred_username``, else ``sub``."""
    name = identity.claims.get("preferred_username")
    return str(name) if isinstance(name, str) and name else identity.sub


def actor(request: web.Request) -> Identity:
    """The verified identity of an admin making this request; else 401 or 403 problem details.

    The scaffold's access middleware already enforced the route's policy;
    this is the same check made where the action is, and the only one when
    the console verifies no tokens (it then refuses every action).
    """
    if VERIFIER not in request.app:
        raise Forbidden(
            "this console verifies no tokens (it was started without --jwks-url), so it would "
            "not know who acts: its actions are disabled"
        )
    identity: Identity | None = request.get(IDENTITY)
    if identity is None:
        raise Unauthorized(
            "this action needs a login", headers={"WWW-Authenticate": 'Bearer realm="essaim"'}
        )
    if ADMIN_ROLE not in identity.roles:
        raise Forbidden(f"this action needs the role {ADMIN_ROLE}")
    return identity


async def audited(
    request: web.Request, identity: Identity, action: str, target: str, detail: str,
    work: Any,
) -> Any:  # fmt: skip
    """Run ``work`` (an awaitable) and record the action with its outcome, whatever it is."""
    entry = _entry(request, identity, action, target, detail)
    try:
        result = await work
    except HTTPProblem as exc:
        await request.app[AUDIT].record(
            dataclasses.replace(entry, outcome=f"refused: {exc.status} {exc.detail}"[:500])
        )
        raise
    except Exception as exc:
        await request.app[AUDIT].record(
            dataclasses.replace(entry, outcome=f"failed: {exc!r}"[:500])
        )
        raise
    await request.app[AUDIT].record(entry)
    return result


def _entry(
    request: web.Request, identity: Identity, action: str, target: str, detail: str
) -> Entry:
    return Entry(
        user=user_of(identity),
        roles=tuple(identity.roles),
        action=action,
        target=target,
        detail=detail,
        outcome="done",
        request_id=request.headers.get("X-Request-ID", ""),
    )


async def config_rollback(request: web.Request) -> web.Response:
    identity = actor(request)
    name = request.match_info["name"]
    if not DOCUMENT_RE.match(name):
        raise NotFound(f"no document named {name[:70]!r}")
    fields = Fields(await read_json(request, BODY_LIMIT), {"version"})
    version = fields.integer("version", minimum=1, maximum=10**9)
    fields.check()
    configs = request.app.get(CONFIGS)
    if configs is None:
        raise NotFound("this console was given no configsvc (--config-url)")
    current = configs.documents.get(name, {}).get("version")
    detail = f"to version {version}" + (f" (was at version {current})" if current else "")
    answer = await audited(
        request, identity, "config.rollback", name, detail, configs.rollback(name, version)
    )
    return json_response(answer)


async def instance_status(request: web.Request) -> web.Response:
    identity = actor(request)
    service, instance_id = request.match_info["service"], request.match_info["id"]
    if not SERVICE_RE.match(service) or not INSTANCE_RE.match(instance_id):
        raise NotFound(f"no instance {service[:64]!r}/{instance_id[:128]!r}")
    fields = Fields(await read_json(request, BODY_LIMIT), {"status"})
    status = fields.text("status", max_length=20)
    if fields.ok and status not in STATUSES:
        fields.fail("status", f"expected one of {', '.join(STATUSES)}")
    fields.check()
    instances = request.app.get(INSTANCES)
    if instances is None:
        raise NotFound("this console was given no registry (--registry-url)")
    if (service, instance_id, status) == (CONSOLE, request.app[INSTANCE_ID], STATUSES[0]):
        raise Conflict(
            "this is the console's own instance: out of service, the gateway would stop sending "
            "it requests, and the console could not put it back"
        )
    known = instances.find(service, instance_id)
    was = known["status"] if known else "unknown"

    async def change() -> Any:
        try:
            doc = await instances.set_status(service, instance_id, status)
        except RegistryUnavailable as exc:
            raise BadGateway(str(exc)) from None
        except RegistrationRefused as exc:
            raise BadGateway(
                f"the registry refused the console ({exc.status}: {exc.detail}); is "
                "CONSOLE_STATUS_TOKEN the registry's status token?"
            ) from None
        if doc is None:
            raise NotFound(f"the registry holds no instance {service}/{instance_id}")
        return doc

    doc = await audited(
        request, identity, "instance.status", f"{service}/{instance_id}", f"{was} -> {status}",
        change(),
    )  # fmt: skip
    return json_response(doc)


async def _dead_letter_action(request: web.Request, action: str) -> web.Response:
    identity = actor(request)
    group = request.match_info["group"]
    if not GROUP_RE.match(group):
        raise NotFound(f"no consumer group {group[:60]!r}")
    fields = Fields(await read_json(request, BODY_LIMIT), {"ids"})
    raw = fields.array("ids", max_items=1000)
    ids = []
    for i, value in enumerate(raw):
        if not isinstance(value, str) or not is_stream_id(value):
            fields.fail(f"ids[{i}]", "not a dead letter id (like 1700000000000-0)")
        else:
            ids.append(value)
    fields.check()
    calls = request.app[OWNER_CALLS]

    async def ask_owner() -> Any:
        # The user's own token goes with the call (core.service.calls passes the
        # request's Authorization on): the owning service checks the role too.
        answer = await calls.post(group, f"/events/dead/{action}", json={"ids": ids})
        if answer.status == 200:
            return answer.json()
        try:
            detail = str(answer.json().get("detail", ""))
        except (ValueError, AttributeError):
            detail = ""
        status = answer.status if 400 <= answer.status < 500 else 502
        raise HTTPProblem(
            f"{group} answered {answer.status}" + (f": {detail}" if detail else ""), status=status
        )

    doc = await audited(
        request, identity, f"dead_letters.{action}", group,
        f"{len(ids)} dead letter(s): {', '.join(ids[:5])}" + (" ..." if len(ids) > 5 else ""),
        ask_owner(),
    )  # fmt: skip
    await request.app[STREAMS].refresh()
    return json_response(doc)


async def replay(request: web.Request) -> web.Response:
    return await _dead_letter_action(request, "replay")


async def discard(request: web.Request) -> web.Response:
    return await _dead_letter_action(request, "discard")


def add_routes(routes: web.RouteTableDef) -> None:
    """Add the actions to the console's routes."""
    routes.post("/api/config/{name}/rollback")(config_rollback)
    routes.post("/api/services/{service}/instances/{id}/status")(instance_status)
    routes.post("/api/events/{group}/dead/replay")(replay)
    routes.post("/api/events/{group}/dead/discard")(discard)
