"""The registry's data model: an instance, a change event, and the validation of both.

An :class:`Instance` is what a service registers (``service``, ``id``,
``host``, ``port``, ``scheme``, ``status``, ``metadata``, ``ttl``) plus what
the registry adds (``registered_at``, ``last_heartbeat``). The ``parse_*``
and ``check_*`` functions turn untrusted input into instances or raise
:class:`~core.errors.BadRequest` (a wrong type) or
:class:`~core.errors.Unprocessable` (an invalid value) before anything is
stored.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from core.errors import BadRequest, Unprocessable

SERVICE_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}\Z")
INSTANCE_ID_RE = re.compile(r"^[A-Za-z0-9._:@~-]{1,128}\Z")
HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}\Z)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_-]{1,63})*\.?\Z"
)
STATUSES = ("UP", "DOWN", "STARTING", "OUT_OF_SERVICE")
SCHEMES = ("http", "https")
METADATA_MAX = 4096
TTL_MIN, TTL_MAX = 1, 300
EVENT_TYPES = ("register", "update", "deregister", "down")


def iso(ms: float) -> str:
    """Epoch milliseconds as an ISO 8601 UTC time with milliseconds."""
    return (
        datetime.fromtimestamp(ms / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Instance:
    """One registered instance of a service, as stored and as served."""

    service: str
    id: str
    host: str
    port: int
    scheme: str = "http"
    status: str = "UP"
    metadata: Mapping[str, str] = dataclasses.field(default_factory=dict)
    ttl: int = 10
    registered_at: str = ""
    last_heartbeat: str | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def to_dict(self) -> dict[str, Any]:
        doc = dataclasses.asdict(self)
        doc["metadata"] = dict(self.metadata)
        if doc["last_heartbeat"] is None:
            del doc["last_heartbeat"]
        return doc

    def stored(self) -> bytes:
        """The JSON kept in the index (without the heartbeat time, kept apart)."""
        doc = self.to_dict()
        doc.pop("last_heartbeat", None)
        return orjson.dumps(doc)

    @classmethod
    def from_json(cls, raw: str | bytes, heartbeat_ms: str | None = None) -> Instance:
        doc = orjson.loads(raw)
        doc.pop("last_heartbeat", None)
        inst = cls(**doc)
        if heartbeat_ms is not None:
            inst = dataclasses.replace(inst, last_heartbeat=iso(float(heartbeat_ms)))
        return inst


# ----------------------------------------------------------------------------- validation


def check_service(name: str) -> str:
    """``name`` if it is a valid service name, else :class:`Unprocessable`."""
    if not SERVICE_RE.match(name):
        raise Unprocessable(
            f"invalid service name {name[:80]!r}: expected ^[a-z0-9][a-z0-9-]{{0,62}}$",
            errors=[{"field": "service", "reason": "pattern"}],
        )
    return name


def check_instance_id(instance_id: str) -> str:
    if len(instance_id) > 128:
        raise Unprocessable(
            f"instance id is {len(instance_id)} characters; at most 128 are allowed",
            errors=[{"field": "id", "reason": "too long"}],
        )
    if not INSTANCE_ID_RE.match(instance_id):
        raise Unprocessable(
            "invalid instance id: letters, digits and . _ : @ ~ - only",
            errors=[{"field": "id", "reason": "pattern"}],
        )
    return instance_id


def _type_error(field: str, expected: str, value: Any) -> BadRequest:
    return BadRequest(
        f"field {field!r} must be {expected}, got {type(value).__name__}",
        errors=[{"field": field, "reason": f"expected {expected}"}],
    )


def _invalid(field: str, detail: str) -> Unprocessable:
    return Unprocessable(detail, errors=[{"field": field, "reason": detail}])


def _check_status(value: Any) -> str:
    if not isinstance(value, str):
        raise _type_error("status", "a string", value)
    if value not in STATUSES:
        raise _invalid("status", f"unknown status {value[:40]!r}; one of {', '.join(STATUSES)}")
    return value


def _check_metadata(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise _type_error("metadata", "an object of strings", value)
    size = len(orjson.dumps(value))
    if size > METADATA_MAX:
        raise _invalid("metadata", f"metadata is {size} bytes; at most {METADATA_MAX} are allowed")
    return value


def _check_host(value: Any) -> str:
    if not isinstance(value, str):
        raise _type_error("host", "a string", value)
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    if not HOSTNAME_RE.match(value):
        raise _invalid("host", f"invalid host {value[:80]!r}: expected an IP address or hostname")
    return value


def parse_registration(service: str, instance_id: str, body: Any, default_ttl: int) -> Instance:
    """Validate a registration body; :class:`BadRequest` for types, :class:`Unprocessable` for values."""
    check_service(service)
    check_instance_id(instance_id)
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    unknown = set(body) - {"host", "port", "scheme", "status", "metadata", "ttl"}
    if unknown:
        raise Unprocessable(f"unknown fields: {', '.join(sorted(unknown))}")
    if "host" not in body or "port" not in body:
        raise Unprocessable("fields 'host' and 'port' are required")
    host = _check_host(body["host"])
    port = body["port"]
    if not isinstance(port, int) or isinstance(port, bool):
        raise _type_error("port", "an integer", port)
    if not 1 <= port <= 65535:
        raise _invalid("port", f"port {port} is outside 1-65535")
    scheme = body.get("scheme", "http")
    if not isinstance(scheme, str):
        raise _type_error("scheme", "a string", scheme)
    if scheme not in SCHEMES:
        raise _invalid("scheme", f"unknown scheme {scheme[:20]!r}; http or https")
    status = _check_status(body.get("status", "UP"))
    metadata = _check_metadata(body.get("metadata", {}))
    ttl = body.get("ttl", default_ttl)
    if not isinstance(ttl, int) or isinstance(ttl, bool):
        raise _type_error("ttl", "an integer (seconds)", ttl)
    if not TTL_MIN <= ttl <= TTL_MAX:
        raise _invalid("ttl", f"ttl {ttl} is outside {TTL_MIN}-{TTL_MAX} seconds")
    return Instance(
        service=service,
        id=instance_id,
        host=host,
        port=port,
        scheme=scheme,
        status=status,
        metadata=metadata,
        ttl=ttl,
        registered_at=iso(time.time() * 1000),
    )


def parse_patch(body: Any) -> dict[str, Any]:
    """Validate a PATCH body: ``status`` and/or ``metadata`` only."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    unknown = set(body) - {"status", "metadata"}
    if unknown:
        raise Unprocessable(
            f"only 'status' and 'metadata' can be changed; unknown: {', '.join(sorted(unknown))}"
        )
    if not body:
        raise Unprocessable("nothing to change: give 'status' and/or 'metadata'")
    out: dict[str, Any] = {}
    if "status" in body:
        out["status"] = _check_status(body["status"])
    if "metadata" in body:
        out["metadata"] = _check_metadata(body["metadata"])
    return out


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """One change: ``type`` is register, update, deregister or down."""

    rev: int
    type: str
    service: str
    instance: Instance

    @classmethod
    def parse(cls, raw: str | bytes) -> Event:
        doc = orjson.loads(raw)
        return cls(
            doc["rev"],
            doc["type"],
            doc["service"],
            Instance.from_json(orjson.dumps(doc["instance"])),
        )
