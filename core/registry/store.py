"""The registry's state in Redis: key layout, atomic scripts, and the instance model.

The registry HTTP service, :class:`core.registry.discovery.Registration` and
:class:`core.registry.discovery.Watcher` all go through :class:`RegistryStore`, so the
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
from collections.abc import Callable, Mapping
from typing import Any

from core.redis import Redis
from core.registry.model import (
    HOSTNAME_RE,
    SERVICE_RE,
    Event,
    Instance,
    check_instance_id,
    check_service,
    iso,
    parse_patch,
    parse_registration,
)

__all__ = [
    "CHANNEL",
    "EVENTS_KEY",
    "HOSTNAME_RE",
    "REV_KEY",
    "SERVICE_RE",
    "Event",
    "Instance",
    "RegistryStore",
    "check_instance_id",
    "check_service",
    "iso",
    "parse_patch",
    "parse_registration",
]

PREFIX = "essaim:reg:"
REV_KEY = PREFIX + "rev"
SERVICES_KEY = PREFIX + "services"
EVENTS_KEY = PREFIX + "events"
CHANNEL = PREFIX + "changes"
INSTANCE_PREFIX = PREFIX + "i:"
EVENTS_RETAINED = 10_000


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

# ARGV: service. Returns {rev, id, json, heartbeat_ms, ...} for its live instances.
_LIST = """
local service = ARGV[1]
local flat = redis.call('HGETALL', 'essaim:reg:s:' .. service)
local out = {tonumber(redis.call('GET', 'essaim:reg:rev') or '0')}
for i = 1, #flat, 2 do
  if redis.call('EXISTS', 'essaim:reg:i:' .. service .. ':' .. flat[i]) == 1 then
    out[#out + 1] = flat[i]
    out[#out + 1] = flat[i + 1]
    out[#out + 1] = redis.call('HGET', 'essaim:reg:hb:' .. service, flat[i]) or '0'
  end
end
return out
"""


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
        return await self.modify(service, instance_id, lambda _: changes)

    async def modify(
        self,
        service: str,
        instance_id: str,
        change: Callable[[Instance], Mapping[str, Any]],
    ) -> Instance | None:
        """Apply the changes ``change`` computes from the current instance, atomically.

        ``change`` may run more than once: when the instance is replaced
        between the read and the write, it runs again on the new one. None
        when the instance is unknown.
        """
        while True:
            raw = await self.redis.hget(index_key(service), instance_id)
            if raw is None:
                return None
            current = Instance.from_json(raw)
            new = dataclasses.replace(current, **change(current))
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
        return (await self.listing(service))[1]

    async def listing(self, service: str) -> tuple[int, list[Instance]]:
        """``(rev, instances)``: :meth:`instances` and the revision they are at, read atomically."""
        flat = await self._list(args=[service])
        out = [Instance.from_json(flat[i + 1], flat[i + 2]) for i in range(1, len(flat), 3)]
        return int(flat[0]), sorted(out, key=lambda inst: inst.id)

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
