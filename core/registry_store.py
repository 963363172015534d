"""The registry's state in Redis: key layout, atomic scripts, and the instance model.

The registry HTTP service, :class:`core.discovery.Registration` and
:class:`core.discovery.Watcher` all go through :class:`RegistryStore`, so the
key layout lives here only. Every change is one Lua script: it changes the
keys, bumps the revision, appends the event to the retained event stream and
publishes it, atomically. Keys (``{s}`` a service, ``{i}`` an instance id)::

    essaim:reg:rev            counter, the revision of the last change
    essaim:reg:services       set of service names ever registered
    essaim:reg:s:{s}          hash id -> instance JSON (the index; source of events)
    essaim:reg:hb:{s}         hash id -> last heartbeat, epoch ms
    essaim:reg:i:{s}:{i}      string (the TTL in ms) with a TTL: the instance is alive
    essaim:reg:events         stream of events, entry id "{rev}-0", about 10,000 kept
    essaim:reg:changes        pub/sub channel: {rev, type, service, instance}

An instance is alive while its ``i`` key exists. When that key expires, the
registry's expirer (keyspace notification or sweep) runs :data:`_EXPIRE`,
which removes the index entry and publishes ``down`` exactly once.
The scripts touch keys they compute, so the layout needs one Redis node (no
Cluster).
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
from core.redis import Redis

PREFIX = "essaim:reg:"
REV_KEY = PREFIX + "rev"
SERVICES_KEY = PREFIX + "services"
EVENTS_KEY = PREFIX + "events"
CHANNEL = PREFIX + "changes"
INSTANCE_PREFIX = PREFIX + "i:"
EVENTS_RETAINED = 10_000

SERVICE_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
INSTANCE_ID_RE = re.compile(r"^[A-Za-z0-9._:@~-]{1,128}$")
HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_-]{1,63})*\.?$"
)
STATUSES = ("UP", "DOWN", "STARTING", "OUT_OF_SERVICE")
SCHEMES = ("http", "https")
METADATA_MAX = 4096
TTL_MIN, TTL_MAX = 1, 300

EVENT_TYPES = ("register", "update", "deregister", "down")


def index_key(service: str) -> str:
    return f"{PREFIX}s:{service}"


def heartbeat_key(service: str) -> str:
    return f"{PREFIX}hb:{service}"


def instance_key(service: str, instance_id: str) -> str:
    return f"{INSTANCE_PREFIX}{service}:{instance_id}"


def parse_instance_key(key: str) -> tuple[str, str] | None:
    """``(service, id)`` from an instance key, or None for any other key."""
    if not key.startswith(INSTANCE_PREFIX):
        return None
    service, sep, instance_id = key[len(INSTANCE_PREFIX) :].partition(":")
    return (service, instance_id) if sep else None


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


# ----------------------------------------------------------------------------- scripts

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# Shared tail: bump the revision, retain and publish the event. Expects
# `service`, `kind` and `instance_json` to be set.
_EMIT = """
local rev = redis.call('INCR', 'essaim:reg:rev')
local event = '{"rev":' .. rev .. ',"type":"' .. kind .. '","service":"' .. service ..
              '","instance":' .. instance_json .. '}'
redis.call('XADD', 'essaim:reg:events', 'MAXLEN', '~', ARGV[#ARGV], rev .. '-0', 'e', event)
redis.call('PUBLISH', 'essaim:reg:changes', event)
"""

# ARGV: service, id, instance_json, ttl_ms, retained
_REGISTER = (
    _NOW
    + """
local service, id, instance_json, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local ikey = 'essaim:reg:i:' .. service .. ':' .. id
local created = redis.call('HSET', 'essaim:reg:s:' .. service, id, instance_json)
redis.call('SET', ikey, ttl, 'PX', ttl)
redis.call('HSET', 'essaim:reg:hb:' .. service, id, now)
redis.call('SADD', 'essaim:reg:services', service)
local kind = 'register'
"""
    + _EMIT
    + "return {rev, created}"
)

# ARGV: service, id. Returns 1, or 0 when the instance is unknown or expired.
_HEARTBEAT = (
    _NOW
    + """
local ikey = 'essaim:reg:i:' .. ARGV[1] .. ':' .. ARGV[2]
local ttl = redis.call('GET', ikey)
if not ttl then return 0 end
redis.call('SET', ikey, ttl, 'PX', ttl)
redis.call('HSET', 'essaim:reg:hb:' .. ARGV[1], ARGV[2], now)
return 1
"""
)

# ARGV: service, id, expected_json, new_json, retained. Returns rev; 0 unknown; -1 changed meanwhile.
_UPDATE = (
    """
local service, id = ARGV[1], ARGV[2]
if redis.call('EXISTS', 'essaim:reg:i:' .. service .. ':' .. id) == 0 then return 0 end
local current = redis.call('HGET', 'essaim:reg:s:' .. service, id)
if current ~= ARGV[3] then return -1 end
local instance_json = ARGV[4]
redis.call('HSET', 'essaim:reg:s:' .. service, id, instance_json)
local kind = 'update'
"""
    + _EMIT
    + "return rev"
)

# ARGV: service, id, retained. Returns rev, or 0 when unknown.
_DEREGISTER = (
    """
local service, id = ARGV[1], ARGV[2]
local instance_json = redis.call('HGET', 'essaim:reg:s:' .. service, id)
if not instance_json then return 0 end
redis.call('HDEL', 'essaim:reg:s:' .. service, id)
redis.call('HDEL', 'essaim:reg:hb:' .. service, id)
redis.call('DEL', 'essaim:reg:i:' .. service .. ':' .. id)
local kind = 'deregister'
"""
    + _EMIT
    + "return rev"
)

# ARGV: service, id, retained. Publishes `down` once, if the instance's key is gone.
_EXPIRE = (
    """
local service, id = ARGV[1], ARGV[2]
if redis.call('EXISTS', 'essaim:reg:i:' .. service .. ':' .. id) == 1 then return 0 end
local instance_json = redis.call('HGET', 'essaim:reg:s:' .. service, id)
if not instance_json then return 0 end
redis.call('HDEL', 'essaim:reg:s:' .. service, id)
redis.call('HDEL', 'essaim:reg:hb:' .. service, id)
local kind = 'down'
"""
    + _EMIT
    + "return rev"
)

# ARGV: retained. Expires every instance whose key is gone; returns how many.
_SWEEP = (
    """
local expired = 0
for _, service in ipairs(redis.call('SMEMBERS', 'essaim:reg:services')) do
  local index = redis.call('HKEYS', 'essaim:reg:s:' .. service)
  for _, id in ipairs(index) do
    if redis.call('EXISTS', 'essaim:reg:i:' .. service .. ':' .. id) == 0 then
      local instance_json = redis.call('HGET', 'essaim:reg:s:' .. service, id)
      redis.call('HDEL', 'essaim:reg:s:' .. service, id)
      redis.call('HDEL', 'essaim:reg:hb:' .. service, id)
      local kind = 'down'
"""
    + _EMIT.replace("\n", "\n      ")
    + """
      expired = expired + 1
    end
  end
end
return expired
"""
)

# No ARGV. Returns {rev, service1, {id, json, ...}, service2, {...}, ...} for live instances.
_SNAPSHOT = """
local out = {tonumber(redis.call('GET', 'essaim:reg:rev') or '0')}
for _, service in ipairs(redis.call('SMEMBERS', 'essaim:reg:services')) do
  local flat = redis.call('HGETALL', 'essaim:reg:s:' .. service)
  local live = {}
  for i = 1, #flat, 2 do
    if redis.call('EXISTS', 'essaim:reg:i:' .. service .. ':' .. flat[i]) == 1 then
      live[#live + 1] = flat[i]
      live[#live + 1] = flat[i + 1]
    end
  end
  out[#out + 1] = service
  out[#out + 1] = live
end
return out
"""

# ARGV: service. Returns {id, json, heartbeat_ms, ...} for its live instances.
_LIST = """
local service = ARGV[1]
local flat = redis.call('HGETALL', 'essaim:reg:s:' .. service)
local out = {}
for i = 1, #flat, 2 do
  if redis.call('EXISTS', 'essaim:reg:i:' .. service .. ':' .. flat[i]) == 1 then
    out[#out + 1] = flat[i]
    out[#out + 1] = flat[i + 1]
    out[#out + 1] = redis.call('HGET', 'essaim:reg:hb:' .. service, flat[i]) or '0'
  end
end
return out
"""


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


class RegistryStore:
    """Every read and write of the registry's Redis state.

    Writes return the revision of the change they published. Methods raise the
    Redis client's connection errors when Redis is unreachable; callers decide
    whether to retry (clients) or answer 503 (the HTTP service).
    """

    def __init__(self, redis: Redis, *, retained: int = EVENTS_RETAINED) -> None:
        self.redis = redis
        self.retained = retained
        self._register = redis.register_script(_REGISTER)
        self._heartbeat = redis.register_script(_HEARTBEAT)
        self._update = redis.register_script(_UPDATE)
        self._deregister = redis.register_script(_DEREGISTER)
        self._expire = redis.register_script(_EXPIRE)
        self._sweep = redis.register_script(_SWEEP)
        self._snapshot = redis.register_script(_SNAPSHOT)
        self._list = redis.register_script(_LIST)

    async def register(self, instance: Instance) -> tuple[int, bool]:
        """Store (or replace) ``instance`` with its TTL; ``(rev, created)``."""
        rev, created = await self._register(
            args=[
                instance.service,
                instance.id,
                instance.stored(),
                instance.ttl * 1000,
                self.retained,
            ]
        )
        return int(rev), bool(created)

    async def heartbeat(self, service: str, instance_id: str) -> bool:
        """Renew the TTL; False when the instance is unknown or already expired."""
        return bool(await self._heartbeat(args=[service, instance_id]))

    async def get(self, service: str, instance_id: str) -> Instance | None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.exists(instance_key(service, instance_id))
        pipe.hget(index_key(service), instance_id)
        pipe.hget(heartbeat_key(service), instance_id)
        alive, raw, hb = await pipe.execute()
        if not alive or raw is None:
            return None
        return Instance.from_json(raw, hb)

    async def update(
        self, service: str, instance_id: str, changes: Mapping[str, Any]
    ) -> Instance | None:
        """Apply ``changes`` (status, metadata) atomically; None when unknown."""
        while True:
            raw = await self.redis.hget(index_key(service), instance_id)
            if raw is None:
                return None
            new = dataclasses.replace(Instance.from_json(raw), **changes)
            rev = int(
                await self._update(args=[service, instance_id, raw, new.stored(), self.retained])
            )
            if rev == 0:
                return None
            if rev > 0:
                return new
            # -1: replaced between our read and the script; read again.

    async def deregister(self, service: str, instance_id: str) -> int:
        """Remove the instance; its revision, or 0 when it was unknown."""
        return int(await self._deregister(args=[service, instance_id, self.retained]))

    async def expire(self, service: str, instance_id: str) -> int:
        """Publish ``down`` for an instance whose key has expired; 0 if alive or already done."""
        return int(await self._expire(args=[service, instance_id, self.retained]))

    async def sweep(self) -> int:
        """Expire every instance whose key is gone; how many were."""
        return int(await self._sweep(args=[self.retained]))

    async def snapshot(
        self, parsed: dict[str, Instance] | None = None
    ) -> tuple[int, dict[str, dict[str, Instance]]]:
        """``(rev, {service: {id: instance}})`` of every live instance, read atomically.

        ``parsed`` maps stored JSON to the instance parsed from it; it is used
        to skip parsing instances that did not change since the last call (the
        same objects come back, so comparing snapshots is cheap) and is
        replaced in place by the entries of this snapshot.
        """
        flat = await self._snapshot()
        rev = int(flat[0])
        previous = parsed if parsed is not None else {}
        seen: dict[str, Instance] = {}
        services: dict[str, dict[str, Instance]] = {}
        for i in range(1, len(flat), 2):
            pairs = flat[i + 1]
            insts: dict[str, Instance] = {}
            for j in range(0, len(pairs), 2):
                raw = pairs[j + 1]
                inst = previous.get(raw)
                if inst is None:
                    inst = Instance.from_json(raw)
                insts[pairs[j]] = seen[raw] = inst
            services[flat[i]] = insts
        if parsed is not None:
            parsed.clear()
            parsed.update(seen)
        return rev, services

    async def instances(self, service: str) -> list[Instance]:
        """Live instances of ``service`` with their last heartbeat, sorted by id."""
        flat = await self._list(args=[service])
        out = [Instance.from_json(flat[i + 1], flat[i + 2]) for i in range(0, len(flat), 3)]
        return sorted(out, key=lambda inst: inst.id)

    async def services(self) -> list[str]:
        return sorted(str(name) for name in await self.redis.smembers(SERVICES_KEY))

    async def known(self, service: str) -> bool:
        return bool(await self.redis.sismember(SERVICES_KEY, service))

    async def rev(self) -> int:
        return int(await self.redis.get(REV_KEY) or 0)

    async def events_since(self, since: int, limit: int = 1000) -> tuple[list[str], bool]:
        """Retained events with rev > ``since`` (raw JSON), and whether a resync is needed.

        A resync is needed when events after ``since`` are no longer retained,
        or when ``since`` is ahead of the current revision (Redis was emptied).
        """
        pipe = self.redis.pipeline(transaction=True)
        pipe.get(REV_KEY)
        pipe.xrange(EVENTS_KEY, "-", "+", count=1)
        pipe.xrange(EVENTS_KEY, f"{since + 1}-0", "+", count=limit)
        current_raw, oldest, entries = await pipe.execute()
        current = int(current_raw or 0)
        if since > current:
            return [], True
        if since == current:
            return [], False
        oldest_rev = int(oldest[0][0].split("-")[0]) if oldest else current + 1
        if oldest_rev > since + 1:
            return [], True
        return [fields["e"] for _, fields in entries], False
