"""The registry's Eureka REST API: Spring Cloud Netflix's client and its ports, unchanged.

Served under ``/eureka`` beside the native ``/v1`` API, on the same Redis
model (:mod:`core.registry.store`): an instance registered either way is
one instance, seen by Essaim watchers, routed by the gateway, and listed to
Eureka clients.

=========================================================  ==============================
``POST /eureka/apps/{APP}``                                register (JSON body); 204
``PUT /eureka/apps/{APP}/{id}?status=&lastDirtyTimestamp=``  renew; 200, 404: register again
``DELETE /eureka/apps/{APP}/{id}``                         cancel; 200
``PUT /eureka/apps/{APP}/{id}/status?value=S``             status override; 200
``DELETE /eureka/apps/{APP}/{id}/status[?value=S]``        override removed; 200
``GET /eureka/apps``, ``/eureka/apps/delta``                every application; recent changes
``GET /eureka/apps/{APP}``, ``/eureka/apps/{APP}/{id}``     one application; one instance
``GET /eureka/instances/{id}``                             one instance, whatever its app
=========================================================  ==============================

Reads answer XML unless ``Accept`` names ``application/json``, in the shapes
Eureka's own server writes (``applications``, ``versions__delta``,
``apps__hashcode``, ``port: {"$", "@enabled"}``, ``dataCenterInfo`` with its
``@class``). The mapping to the native model:

- the app name is the service name upper-cased (``BILLING`` is ``billing``);
  a name that is not a valid service name is refused like a native one;
- the host is ``ipAddr`` (else ``hostName``), the port the enabled one (the
  plain port, else the secure port with scheme ``https``), the TTL
  ``leaseInfo.durationInSecs`` (else the registry's default);
- statuses ``UP``, ``DOWN``, ``STARTING``, ``OUT_OF_SERVICE`` are Essaim's;
  ``UNKNOWN`` is kept out of routing as ``STARTING``; an override
  (``OUT_OF_SERVICE`` from ``PUT .../status``) wins over what the instance
  reports, survives its re-registrations, and ends with ``DELETE .../status``;
- every other Eureka field is kept in the metadata under ``eureka.`` keys
  (``eureka.hostName``, ``eureka.vipAddress``...), and the instance's own
  metadata as is; Eureka clients see the latter only.

Writes are authorized by :func:`core.registry.api.authorize_write`, the
native API's check (HTTP Basic with the token as password is how these
clients send it). Bad input is answered as problem details and stores
nothing. The delta is the changes of the last :data:`DELTA_WINDOW` seconds
this process saw (as Eureka's server keeps them in memory); its hash code is
the full registry's, so a client that missed a change fetches everything.
"""

from __future__ import annotations

import collections
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import datetime
from typing import Any

from aiohttp import web

from core.errors import BadRequest, NotFound, Unauthorized, Unprocessable
from core.http import json_response, read_json
from core.registry.api import BODY_LIMIT, DYNAMIC, HUB, STORE, authorize_write, check_target
from core.registry.model import Event, Instance, check_instance_id, check_service
from core.registry.store import parse_registration

__all__ = ["DELTA_WINDOW", "RecentChanges", "add_routes", "from_eureka", "to_eureka"]

#: Seconds a change stays in ``/eureka/apps/delta`` (Eureka's server keeps 180).
DELTA_WINDOW = 180.0
META = "eureka."
STATUSES = ("UP", "DOWN", "STARTING", "OUT_OF_SERVICE", "UNKNOWN")
DEFAULT_DATA_CENTER = "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo"
#: Eureka fields kept as they are, as ``eureka.{field}`` metadata.
KEPT = (
    "hostName",
    "vipAddress",
    "secureVipAddress",
    "homePageUrl",
    "statusPageUrl",
    "healthCheckUrl",
    "secureHealthCheckUrl",
    "appGroupName",
    "asgName",
)
_XML_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9._-]*\Z")
_ACTION = {"register": "ADDED", "update": "MODIFIED", "deregister": "DELETED", "down": "DELETED"}


# ----------------------------------------------------------------------------- parsing


def _port(value: Any, field: str) -> tuple[int | None, bool]:
    """``(port, enabled)`` from ``{"$": 8080, "@enabled": "true"}`` or a bare number."""
    enabled: Any = True
    if isinstance(value, dict):
        enabled = value.get("@enabled", True)
        value = value.get("$")
    if value is None:
        return None, False
    if isinstance(value, str) and _digits(value):
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadRequest(f"{field!r} must be a port number or {{'$': port, '@enabled': bool}}")
    if isinstance(enabled, str):
        enabled = enabled.lower() == "true"
    return value, bool(enabled)


def _status(value: Any, field: str, default: str) -> str:
    if value is None or value == "":
        return default
    if not isinstance(value, str) or value.upper() not in STATUSES:
        raise Unprocessable(
            f"{field!r} must be one of {', '.join(STATUSES)}",
            errors=[{"field": field, "reason": "unknown status"}],
        )
    return value.upper()


def _text(value: Any, field: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise BadRequest(f"{field!r} must be a string")


def essaim_status(reported: str, override: str) -> str:
    """The native status of an instance that reports ``reported`` under ``override``."""
    effective = override if override not in ("", "UNKNOWN") else reported
    return "STARTING" if effective == "UNKNOWN" else effective


def from_eureka(
    app: str, body: Any, default_ttl: int, existing: Instance | None = None
) -> Instance:
    """A native instance from a Eureka registration body ``{"instance": {...}}``.

    Validation is the native API's (:func:`core.registry.model.parse_registration`)
    once the fields are mapped; an override in force on ``existing`` (the
    instance being replaced) is kept, as Eureka's server keeps it.
    """
    service = check_service(app.lower())
    if not isinstance(body, dict) or not isinstance(body.get("instance"), dict):
        raise BadRequest('the body must be a JSON object {"instance": {...}}')
    doc: dict[str, Any] = body["instance"]
    host_name = _text(doc.get("hostName", ""), "hostName")
    ip = _text(doc.get("ipAddr", ""), "ipAddr")
    instance_id = _text(doc.get("instanceId") or host_name, "instanceId")
    if not instance_id:
        raise Unprocessable("give 'instanceId' (or 'hostName', Eureka's fallback)")
    check_instance_id(instance_id)
    host = ip or host_name
    if not host:
        raise Unprocessable("give 'ipAddr' or 'hostName': where the instance is reached")
    port, port_on = _port(doc.get("port"), "port")
    secure, secure_on = _port(doc.get("securePort"), "securePort")
    meta: dict[str, str] = {}
    if port is not None and port_on:
        scheme, chosen = "http", port
        if secure is not None and secure_on:
            meta[META + "securePort"] = str(secure)
    elif secure is not None and secure_on:
        scheme, chosen = "https", secure
        if port is not None:
            meta[META + "port"] = str(port)
    else:
        raise Unprocessable("no enabled port: give 'port' or 'securePort' with '@enabled': 'true'")
    reported = _status(doc.get("status"), "status", "UP")
    override = _status(
        doc.get("overriddenstatus", doc.get("overriddenStatus")), "overriddenstatus", "UNKNOWN"
    )
    if existing is not None and existing.metadata.get(META + "overriddenstatus"):
        override = existing.metadata[META + "overriddenstatus"]
    lease = doc.get("leaseInfo") or {}
    if not isinstance(lease, dict):
        raise BadRequest("'leaseInfo' must be an object")
    ttl = lease.get("durationInSecs") or default_ttl
    if isinstance(ttl, str) and _digits(ttl):
        ttl = int(ttl)
    renewal = lease.get("renewalIntervalInSecs")
    if renewal is not None and not _digits(str(renewal)):
        raise BadRequest("'leaseInfo.renewalIntervalInSecs' must be a number of seconds")
    own = doc.get("metadata") or {}
    if not isinstance(own, dict):
        raise BadRequest("'metadata' must be an object of strings")
    for key, value in own.items():
        if key == "@class":  # Java's codec marks an empty map so
            continue
        if key.startswith(META):
            raise Unprocessable(f"metadata keys starting with {META!r} are the registry's")
        meta[key] = _text(value, f"metadata.{key}")
    for field in KEPT:
        value = doc.get(field)
        if value:
            meta[META + field] = _text(value, field)
    meta[META + "status"] = reported
    if override != "UNKNOWN":
        meta[META + "overriddenstatus"] = override
    if renewal:
        meta[META + "renewalIntervalInSecs"] = _text(renewal, "leaseInfo.renewalIntervalInSecs")
    dirty = doc.get("lastDirtyTimestamp")
    if dirty:
        meta[META + "lastDirtyTimestamp"] = _text(dirty, "lastDirtyTimestamp")
    center = doc.get("dataCenterInfo") or {}
    if isinstance(center, dict):
        if center.get("@class", DEFAULT_DATA_CENTER) != DEFAULT_DATA_CENTER:
            meta[META + "dataCenterInfo.class"] = _text(center["@class"], "dataCenterInfo.@class")
        if center.get("name", "MyOwn") != "MyOwn":
            meta[META + "dataCenterInfo.name"] = _text(center["name"], "dataCenterInfo.name")
    native = {
        "host": host,
        "port": chosen,
        "scheme": scheme,
        "status": essaim_status(reported, override),
        "metadata": meta,
        "ttl": ttl,
    }
    return parse_registration(service, instance_id, native, default_ttl)


# ----------------------------------------------------------------------------- rendering


def _ms(iso_time: str | None) -> int:
    if not iso_time:
        return 0
    return int(datetime.fromisoformat(iso_time.replace("Z", "+00:00")).timestamp() * 1000)


def _int(value: str | None, default: int) -> int:
    """``value`` as a number; ``default`` when absent or not one (metadata is anyone's to PATCH)."""
    return int(value) if value is not None and _digits(value) else default


def _digits(text: str) -> bool:
    """Whether ``text`` is a plain decimal number (``str.isdigit`` also takes ``²``)."""
    return text.isascii() and text.isdigit() and len(text) <= 18


def shown_status(inst: Instance) -> str:
    """The status Eureka clients see: the native one, ``UNKNOWN`` where it was reported so."""
    if inst.status == "STARTING" and inst.metadata.get(META + "status") == "UNKNOWN":
        return "UNKNOWN"
    return inst.status


def to_eureka(inst: Instance, action: str | None = None) -> dict[str, Any]:
    """``inst`` as Eureka's server writes an instance in JSON (the XML is made from this)."""
    meta = inst.metadata
    registered = _ms(inst.registered_at)
    renewed = _ms(inst.last_heartbeat) or registered
    host_name = meta.get(META + "hostName", inst.host)
    if inst.scheme == "https":
        port = {"$": _int(meta.get(META + "port"), 0), "@enabled": "false"}
        secure = {"$": inst.port, "@enabled": "true"}
    else:
        port = {"$": inst.port, "@enabled": "true"}
        secure_port = _int(meta.get(META + "securePort"), 0)
        secure = {"$": secure_port or 443, "@enabled": "true" if secure_port else "false"}
    base = f"{inst.scheme}://{host_name}:{inst.port}/"
    doc: dict[str, Any] = {
        "instanceId": inst.id,
        "hostName": host_name,
        "app": inst.service.upper(),
        "ipAddr": inst.host,
        "status": shown_status(inst),
        "overriddenStatus": meta.get(META + "overriddenstatus", "UNKNOWN"),
        "port": port,
        "securePort": secure,
        "countryId": 1,
        "dataCenterInfo": {
            "@class": meta.get(META + "dataCenterInfo.class", DEFAULT_DATA_CENTER),
            "name": meta.get(META + "dataCenterInfo.name", "MyOwn"),
        },
        "leaseInfo": {
            "renewalIntervalInSecs": _int(
                meta.get(META + "renewalIntervalInSecs"), max(1, inst.ttl // 3)
            ),
            "durationInSecs": inst.ttl,
            "registrationTimestamp": registered,
            "lastRenewalTimestamp": renewed,
            "evictionTimestamp": 0,
            "serviceUpTimestamp": registered,
        },
        "metadata": {k: v for k, v in meta.items() if not k.startswith(META)},
        "homePageUrl": meta.get(META + "homePageUrl", base),
        "statusPageUrl": meta.get(META + "statusPageUrl", base + "info"),
        "healthCheckUrl": meta.get(META + "healthCheckUrl", base + "health"),
        "vipAddress": meta.get(META + "vipAddress", inst.service),
        "secureVipAddress": meta.get(META + "secureVipAddress", inst.service),
        "isCoordinatingDiscoveryServer": "false",
        "lastUpdatedTimestamp": str(registered),
        "lastDirtyTimestamp": meta.get(META + "lastDirtyTimestamp", str(registered)),
    }
    for field in ("secureHealthCheckUrl", "appGroupName", "asgName"):
        if META + field in meta:
            doc[field] = meta[META + field]
    if action is not None:
        doc["actionType"] = action
    return doc


def apps_hashcode(instances: Iterable[Instance]) -> str:
    """Eureka's hash of a registry: ``{STATUS}_{count}_`` for each status, sorted (``UP_2_``)."""
    counts = collections.Counter(shown_status(i) for i in instances)
    return "".join(f"{status}_{n}_" for status, n in sorted(counts.items()))


def _xml(parent: ET.Element, tag: str, value: Any) -> None:
    """Append ``value`` under ``parent`` as Eureka's XML writes it (``$``/``@x`` from JSON)."""
    node = ET.SubElement(parent, tag)
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "$":
                node.text = str(item)
            elif key.startswith("@"):
                node.set(key[1:], str(item))
            elif _XML_NAME.match(key):  # a metadata key that can't be a tag is left out
                _xml(node, key, item)
    else:
        node.text = str(value)


def _instance_xml(parent: ET.Element, doc: Mapping[str, Any]) -> None:
    node = ET.SubElement(parent, "instance")
    for key, value in doc.items():
        _xml(node, "overriddenstatus" if key == "overriddenStatus" else key, value)


def _applications(
    rev: int, full_hash: str, apps: Mapping[str, list[dict[str, Any]]], as_json: bool
) -> web.Response:
    if as_json:
        return json_response(
            {
                "applications": {
                    "versions__delta": str(rev),
                    "apps__hashcode": full_hash,
                    "application": [
                        {"name": name, "instance": docs} for name, docs in sorted(apps.items())
                    ],
                }
            }
        )
    root = ET.Element("applications")
    ET.SubElement(root, "versions__delta").text = str(rev)
    ET.SubElement(root, "apps__hashcode").text = full_hash
    for name, docs in sorted(apps.items()):
        app = ET.SubElement(root, "application")
        ET.SubElement(app, "name").text = name
        for doc in docs:
            _instance_xml(app, doc)
    return _xml_response(root)


def _xml_response(root: ET.Element) -> web.Response:
    body = b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="utf-8",
                                                                     xml_declaration=False)  # fmt: skip
    return web.Response(body=body, content_type="application/xml", charset="utf-8")


def _wants_json(request: web.Request) -> bool:
    return "application/json" in request.headers.get("Accept", "")


# ----------------------------------------------------------------------------- delta


class RecentChanges:
    """The changes of the last ``window`` seconds, as the registry's hub publishes them.

    Fed by :attr:`core.registry.events.EventHub.listeners`; a registry that
    just started has none, so its clients' hash check sends them to a full
    fetch, as with Eureka's own server.
    """

    def __init__(self, window: float = DELTA_WINDOW) -> None:
        self.window = window
        self._changes: collections.deque[tuple[float, Event]] = collections.deque()

    def record(self, raw: str) -> None:
        try:
            event = Event.parse(raw)
        except (ValueError, KeyError, TypeError):
            return
        self._changes.append((time.monotonic(), event))
        self._prune()

    def _prune(self) -> None:
        horizon = time.monotonic() - self.window
        while self._changes and self._changes[0][0] < horizon:
            self._changes.popleft()

    def latest(self) -> list[Event]:
        """The last change of each instance changed in the window, oldest first."""
        self._prune()
        last: dict[tuple[str, str], Event] = {}
        for _, event in self._changes:
            key = (event.service, event.instance.id)
            last.pop(key, None)
            last[key] = event
        return list(last.values())


RECENT = web.AppKey("eureka_recent", RecentChanges)


# ----------------------------------------------------------------------------- handlers


def _authorize(request: web.Request, service: str) -> None:
    try:
        authorize_write(request, service)
    except Unauthorized as exc:
        # Eureka clients send Basic from the service URL; say that it is accepted.
        challenge = exc.headers.get("WWW-Authenticate", "")
        realm = 'Basic realm="essaim-registry"'
        exc.headers["WWW-Authenticate"] = f"{challenge}, {realm}" if challenge else realm
        raise


def _names(request: web.Request) -> tuple[str, str]:
    return (
        check_service(request.match_info["app"].lower()),
        check_instance_id(request.match_info["id"]),
    )


async def register(request: web.Request) -> web.Response:
    service = check_service(request.match_info["app"].lower())
    _authorize(request, service)
    body = await read_json(request, BODY_LIMIT)
    store = request.app[STORE]
    default_ttl = request.app[DYNAMIC].current.default_ttl
    probe = from_eureka(service, body, default_ttl)
    existing = await store.get(service, probe.id)
    instance = from_eureka(service, body, default_ttl, existing) if existing else probe
    await check_target(request, instance)
    await store.register(instance)
    return web.Response(status=204)


async def renew(request: web.Request) -> web.Response:
    service, instance_id = _names(request)
    _authorize(request, service)
    _status(request.query.get("status"), "status", "UP")
    store = request.app[STORE]
    if not await store.heartbeat(service, instance_id):
        raise NotFound(
            f"instance {service}/{instance_id} is not registered (unknown or expired): register again"
        )
    given = request.query.get("lastDirtyTimestamp", "")
    if _digits(given):
        current = await store.get(service, instance_id)
        known = current.metadata.get(META + "lastDirtyTimestamp", "") if current else ""
        if _digits(known) and int(given) > int(known):
            # Eureka's rule: the client has changed since it registered: register again.
            raise NotFound(
                f"instance {service}/{instance_id} changed since it registered: register again"
            )
    return web.Response(status=200)


async def cancel(request: web.Request) -> web.Response:
    service, instance_id = _names(request)
    _authorize(request, service)
    if not await request.app[STORE].deregister(service, instance_id):
        raise NotFound(f"instance {service}/{instance_id} is not registered")
    return web.Response(status=200)


async def put_status(request: web.Request) -> web.Response:
    """``PUT .../status?value=S``: an override that wins over what the instance reports."""
    service, instance_id = _names(request)
    _authorize(request, service)
    if "value" not in request.query:
        raise BadRequest("give the status to force: ?value=OUT_OF_SERVICE")
    value = _status(request.query["value"], "value", "UNKNOWN")

    def change(current: Instance) -> dict[str, Any]:
        meta = dict(current.metadata)
        if value == "UNKNOWN":
            meta.pop(META + "overriddenstatus", None)
        else:
            meta[META + "overriddenstatus"] = value
        reported = meta.get(META + "status", current.status)
        return {"metadata": meta, "status": essaim_status(reported, value)}

    if await request.app[STORE].modify(service, instance_id, change) is None:
        raise NotFound(f"instance {service}/{instance_id} is not registered")
    return web.Response(status=200)


async def delete_status(request: web.Request) -> web.Response:
    """``DELETE .../status[?value=S]``: the override ends; the status is S, else the reported one."""
    service, instance_id = _names(request)
    _authorize(request, service)
    value = _status(request.query.get("value"), "value", "")

    def change(current: Instance) -> dict[str, Any]:
        meta = dict(current.metadata)
        meta.pop(META + "overriddenstatus", None)
        reported = value or meta.get(META + "status", "UP")
        meta[META + "status"] = reported
        return {"metadata": meta, "status": essaim_status(reported, "")}

    if await request.app[STORE].modify(service, instance_id, change) is None:
        raise NotFound(f"instance {service}/{instance_id} is not registered")
    return web.Response(status=200)


async def applications(request: web.Request) -> web.Response:
    rev, snapshot = await request.app[STORE].snapshot()
    everything = [inst for insts in snapshot.values() for inst in insts.values()]
    apps = {
        name.upper(): [to_eureka(i) for _, i in sorted(insts.items())]
        for name, insts in snapshot.items()
        if insts
    }
    return _applications(rev, apps_hashcode(everything), apps, _wants_json(request))


async def delta(request: web.Request) -> web.Response:
    rev, snapshot = await request.app[STORE].snapshot()
    everything = [inst for insts in snapshot.values() for inst in insts.values()]
    apps: dict[str, list[dict[str, Any]]] = {}
    for event in request.app[RECENT].latest():
        inst = event.instance
        live = snapshot.get(event.service, {}).get(inst.id)
        action = _ACTION.get(event.type, "MODIFIED")
        if action != "DELETED" and live is None:
            continue  # gone since: its deletion is in the window too, or it expired unseen
        shown = live if action != "DELETED" and live is not None else inst
        apps.setdefault(event.service.upper(), []).append(to_eureka(shown, action))
    return _applications(rev, apps_hashcode(everything), apps, _wants_json(request))


async def application(request: web.Request) -> web.Response:
    service = check_service(request.match_info["app"].lower())
    _, instances = await request.app[STORE].listing(service)
    if not instances:
        raise NotFound(f"no application named {service.upper()!r} is registered")
    docs = [to_eureka(i) for i in instances]
    if _wants_json(request):
        return json_response({"application": {"name": service.upper(), "instance": docs}})
    root = ET.Element("application")
    ET.SubElement(root, "name").text = service.upper()
    for doc in docs:
        _instance_xml(root, doc)
    return _xml_response(root)


def _one(request: web.Request, inst: Instance | None, what: str) -> web.Response:
    if inst is None:
        raise NotFound(f"instance {what} is not registered")
    doc = to_eureka(inst)
    if _wants_json(request):
        return json_response({"instance": doc})
    root = ET.Element("root")
    _instance_xml(root, doc)
    return _xml_response(root[0])


async def app_instance(request: web.Request) -> web.Response:
    service, instance_id = _names(request)
    inst = await request.app[STORE].get(service, instance_id)
    return _one(request, inst, f"{service}/{instance_id}")


async def instance(request: web.Request) -> web.Response:
    instance_id = check_instance_id(request.match_info["id"])
    store = request.app[STORE]
    _, snapshot = await store.snapshot()
    found = next((insts[instance_id] for insts in snapshot.values() if instance_id in insts), None)
    if found is not None:
        found = await store.get(found.service, instance_id) or found  # with its last renewal
    return _one(request, found, instance_id)


async def _recent_ctx(app: web.Application) -> AsyncIterator[None]:
    """Record every change the registry's hub receives, for the delta."""
    recent = RecentChanges()
    app[RECENT] = recent
    app[HUB].listeners.append(recent.record)
    yield


def add_routes(app: web.Application) -> None:
    """The Eureka routes; call after the cleanup context that makes the hub."""
    app.cleanup_ctx.append(_recent_ctx)
    for base in ("/eureka/apps", "/eureka/apps/"):
        app.router.add_get(base, applications)
    app.router.add_get("/eureka/apps/delta", delta)
    app.router.add_post("/eureka/apps/{app}", register)
    app.router.add_get("/eureka/apps/{app}", application)
    one = "/eureka/apps/{app}/{id}"
    app.router.add_get(one, app_instance)
    app.router.add_put(one, renew)
    app.router.add_delete(one, cancel)
    app.router.add_put(one + "/status", put_status)
    app.router.add_delete(one + "/status", delete_status)
    app.router.add_get("/eureka/instances/{id}", instance)
