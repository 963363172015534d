"""The registry's state in Redis: key layout, atomic scripts, and the instance model.

The registry HTTP service, :class:`core.registry.discovery.Registration` and
:class:`core.registry.discovery.Watcher` all go through :class:`RegistryStore`, so the
key layout lives here only (:func:`index_key`, :func:`service_keys`, ...). Every
change is one Lua script: it changes the keys, bumps the revision, appends the
event to the retained event stream and publishes it, atomically. Keys (``<s>``
a service, ``<i>`` an instance id); every key carries the hash tag ``{reg}``,
so on Redis Cluster they all live in one slot and one script may touch several::

    essaim:{reg}:rev          counter, the revision of the last change
    essaim:{reg}:services     set of service names ever registered
    essaim:{reg}:s:<s>        hash id -> instance JSON (the index; source of events)
    essaim:{reg}:hb:<s>       hash id -> last heartbeat, epoch ms (Redis clock)
    essaim:{reg}:ttl:<s>      hash id -> TTL in ms
    essaim:{reg}:deadlines    sorted set "<s>/<i>" -> epoch ms at which the instance expires
    essaim:{reg}:events       stream of events, entry id "<rev>-0", about 10,000 kept
    essaim:{reg}:changes      pub/sub channel (sharded on Cluster): {rev, type, service, instance}

An instance is alive while its deadline is in the future (Redis clock). The
registry's expirer (:mod:`core.registry.expiry`) asks which deadlines have
passed and runs :data:`_EXPIRE` for each, which removes the index entry and
publishes ``down`` exactly once. Every script receives every key it touches
in ``KEYS`` (Cluster's rule); the names are built here, in Python.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any

from core.redis import Redis, Script, publish_command, tag
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
    "DEADLINES_KEY",
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

PREFIX = "essaim:" + tag("reg") + ":"
REV_KEY = PREFIX + "rev"
SERVICES_KEY = PREFIX + "services"
DEADLINES_KEY = PREFIX + "deadlines"
EVENTS_KEY = PREFIX + "events"
# A random value set by the first reader after Redis was emptied: revisions
# start over then, so a stream that only compared revisions could take the
# new epoch's 4 for the old one's and miss that everything before it is gone.
EPOCH_KEY = PREFIX + "epoch"
CHANNEL = PREFIX + "changes"
EVENTS_RETAINED = 10_000


def index_key(service: str) -> str:
    return f"{PREFIX}s:{service}"


def heartbeat_key(service: str) -> str:
    return f"{PREFIX}hb:{service}"


def ttl_key(service: str) -> str:
    return f"{PREFIX}ttl:{service}"


def member(service: str, instance_id: str) -> str:
    """An instance's member in the deadlines set (neither name may hold ``/``)."""
    return f"{service}/{instance_id}"


def parse_member(value: str) -> tuple[str, str] | None:
    """``(service, id)`` from a deadlines member, or None for anything else."""
    service, sep, instance_id = value.partition("/")
    return (service, instance_id) if sep and service and instance_id else None


def service_keys(service: str) -> list[str]:
    """The ``KEYS`` of every per-instance script, in the order the scripts read them."""
    return [
        REV_KEY, EVENTS_KEY, CHANNEL, SERVICES_KEY, DEADLINES_KEY,
        index_key(service), heartbeat_key(service), ttl_key(service),
    ]  # fmt: skip


# ----------------------------------------------------------------------------- scripts
# Per-instance scripts take KEYS = service_keys(service):
#   1 rev, 2 events, 3 channel, 4 services, 5 deadlines, 6 index, 7 heartbeats, 8 ttls
# and ARGV = publish command (PUBLISH or SPUBLISH), events retained, service, id, ...
# The channel is passed in KEYS too: on Cluster a sharded channel must be in
# the script's slot, and declaring it lets the server check.

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# Shared tail: bump the revision, retain and publish the event. Expects
# `service`, `kind` and `instance_json` to be set.
_EMIT = """
local rev = redis.call('INCR', KEYS[1])
local event = '{"rev":' .. rev .. ',"type":"' .. kind .. '","service":"' .. service ..
              '","instance":' .. instance_json .. '}'
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], rev .. '-0', 'e', event)
redis.call(ARGV[1], KEYS[3], event)
"""

# ARGV tail: instance_json, ttl_ms. Returns {rev, created}.
_REGISTER = (
    _NOW
    + """
local service, id, instance_json, ttl = ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6])
local created = redis.call('HSET', KEYS[6], id, instance_json)
redis.call('HSET', KEYS[7], id, now)
redis.call('HSET', KEYS[8], id, ttl)
redis.call('ZADD', KEYS[5], now + ttl, service .. '/' .. id)
redis.call('SADD', KEYS[4], service)
local kind = 'register'
"""
    + _EMIT
    + "return {rev, created}"
)

# Returns 1, or 0 when the instance is unknown or its deadline has passed.
_HEARTBEAT = (
    _NOW
    + """
local m = ARGV[3] .. '/' .. ARGV[4]
local deadline = tonumber(redis.call('ZSCORE', KEYS[5], m) or '0')
local ttl = tonumber(redis.call('HGET', KEYS[8], ARGV[4]) or '0')
if deadline <= now or ttl <= 0 then return 0 end
redis.call('ZADD', KEYS[5], now + ttl, m)
redis.call('HSET', KEYS[7], ARGV[4], now)
return 1
"""
)

# ARGV tail: expected_json, new_json. Returns rev; 0 unknown; -1 changed meanwhile.
_UPDATE = (
    _NOW
    + """
local service, id = ARGV[3], ARGV[4]
local deadline = tonumber(redis.call('ZSCORE', KEYS[5], service .. '/' .. id) or '0')
if deadline <= now then return 0 end
local current = redis.call('HGET', KEYS[6], id)
if current ~= ARGV[5] then return -1 end
local instance_json = ARGV[6]
redis.call('HSET', KEYS[6], id, instance_json)
local kind = 'update'
"""
    + _EMIT
    + "return rev"
)

# Returns rev, or 0 when unknown.
_DEREGISTER = (
    """
local service, id = ARGV[3], ARGV[4]
local instance_json = redis.call('HGET', KEYS[6], id)
redis.call('ZREM', KEYS[5], service .. '/' .. id)
if not instance_json then return 0 end
redis.call('HDEL', KEYS[6], id)
redis.call('HDEL', KEYS[7], id)
redis.call('HDEL', KEYS[8], id)
local kind = 'deregister'
"""
    + _EMIT
    + "return rev"
)

# Publishes `down` once, if the instance's deadline has passed. Returns rev, or 0.
_EXPIRE = (
    _NOW
    + """
local service, id = ARGV[3], ARGV[4]
local m = service .. '/' .. id
local deadline = redis.call('ZSCORE', KEYS[5], m)
if deadline and tonumber(deadline) > now then return 0 end
redis.call('ZREM', KEYS[5], m)
local instance_json = redis.call('HGET', KEYS[6], id)
if not instance_json then return 0 end
redis.call('HDEL', KEYS[6], id)
redis.call('HDEL', KEYS[7], id)
redis.call('HDEL', KEYS[8], id)
local kind = 'down'
"""
    + _EMIT
    + "return rev"
)

# KEYS[1] deadlines; ARGV[1] at most this many. Returns {ms until the next
# deadline (-1: none), {members whose deadline has passed}}.
_DUE = (
    _NOW
    + """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local nxt = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
local wait = -1
if #nxt > 0 then wait = tonumber(nxt[2]) - now end
return {wait, due}
"""
)

# KEYS: rev, services, deadlines, then the index of each service in ARGV.
# ARGV: every service name. Returns {rev, service1, {id, json, ...}, ...} for
# live instances, or {-1, {names}} when ARGV is not the current set of
# services (the caller retries with those names: the keys a script touches
# must be named before it runs).
_SNAPSHOT = (
    _NOW
    + """
local ok = redis.call('SCARD', KEYS[2]) == #ARGV
for i = 1, #ARGV do
  if ok and redis.call('SISMEMBER', KEYS[2], ARGV[i]) == 0 then ok = false end
end
if not ok then return {-1, redis.call('SMEMBERS', KEYS[2])} end
local out = {tonumber(redis.call('GET', KEYS[1]) or '0')}
for i, service in ipairs(ARGV) do
  local flat = redis.call('HGETALL', KEYS[i + 3])
  local live = {}
  for j = 1, #flat, 2 do
    if tonumber(redis.call('ZSCORE', KEYS[3], service .. '/' .. flat[j]) or '0') > now then
      live[#live + 1] = flat[j]
      live[#live + 1] = flat[j + 1]
    end
  end
  out[#out + 1] = service
  out[#out + 1] = live
end
return out
"""
)

# KEYS: rev, index, heartbeats, deadlines; ARGV: service.
# Returns {rev, id, json, heartbeat_ms, ...} for its live instances.
_LIST = (
    _NOW
    + """
local service = ARGV[1]
local flat = redis.call('HGETALL', KEYS[2])
local out = {tonumber(redis.call('GET', KEYS[1]) or '0')}
for i = 1, #flat, 2 do
  if tonumber(redis.call('ZSCORE', KEYS[4], service .. '/' .. flat[i]) or '0') > now then
    out[#out + 1] = flat[i]
    out[#out + 1] = flat[i + 1]
    out[#out + 1] = redis.call('HGET', KEYS[3], flat[i]) or '0'
  end
end
return out
"""
)

# KEYS: deadlines, index, heartbeats; ARGV: service, id. Returns {json, heartbeat_ms}
# of a live instance, or an empty list.
_GET = (
    _NOW
    + """
if tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1] .. '/' .. ARGV[2]) or '0') <= now then
  return {}
end
local raw = redis.call('HGET', KEYS[2], ARGV[2])
if not raw then return {} end
return {raw, redis.call('HGET', KEYS[3], ARGV[2]) or '0'}
"""
)

#: The data's epoch, made on first use (KEYS: epoch; ARGV: a new one).
_EPOCH = """
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return redis.call('GET', KEYS[1])
"""

#: Retained events after a revision, and what says whether they are enough (KEYS: rev,
#: events, epoch; ARGV: the first stream id wanted, the most to return): the current
#: revision, the oldest retained id, the epoch (empty when none), then each event's payload.
_EVENTS = """
local out = {redis.call('GET', KEYS[1]) or '0', false, redis.call('GET', KEYS[3]) or ''}
local oldest = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
if oldest[1] then out[2] = oldest[1][1] end
for _, entry in ipairs(redis.call('XRANGE', KEYS[2], ARGV[1], '+', 'COUNT', ARGV[2])) do
  local fields, payload = entry[2], ''
  for i = 1, #fields, 2 do
    if fields[i] == 'e' then payload = fields[i + 1] end
  end
  out[#out + 1] = payload
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
        self.publish = publish_command(redis)
        self._register = Script(redis, _REGISTER)
        self._heartbeat = Script(redis, _HEARTBEAT)
        self._update = Script(redis, _UPDATE)
        self._deregister = Script(redis, _DEREGISTER)
        self._expire = Script(redis, _EXPIRE)
        self._due = Script(redis, _DUE)
        self._snapshot = Script(redis, _SNAPSHOT)
        self._list = Script(redis, _LIST)
        self._get = Script(redis, _GET)
        self._epoch = Script(redis, _EPOCH)
        self._events = Script(redis, _EVENTS)
        # The service names the last snapshot saw: the next one names their keys.
        self._names: list[str] = []

    def _args(self, service: str, instance_id: str, *rest: str | bytes | int) -> list[Any]:
        return [self.publish, self.retained, service, instance_id, *rest]

    async def register(self, instance: Instance) -> tuple[int, bool]:
        """Store (or replace) ``instance`` with its TTL; ``(rev, created)``."""
        rev, created = await self._register(
            keys=service_keys(instance.service),
            args=self._args(instance.service, instance.id, instance.stored(), instance.ttl * 1000),
        )
        return int(rev), bool(created)

    async def heartbeat(self, service: str, instance_id: str) -> bool:
        """Renew the TTL; False when the instance is unknown or already expired."""
        return bool(
            await self._heartbeat(keys=service_keys(service), args=self._args(service, instance_id))
        )

    async def get(self, service: str, instance_id: str) -> Instance | None:
        found = await self._get(
            keys=[DEADLINES_KEY, index_key(service), heartbeat_key(service)],
            args=[service, instance_id],
        )
        if not found:
            return None
        return Instance.from_json(found[0], found[1])

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
                await self._update(
                    keys=service_keys(service),
                    args=self._args(service, instance_id, raw, new.stored()),
                )
            )
            if rev == 0:
                return None
            if rev > 0:
                return new
            # -1: replaced between our read and the script; read again.

    async def deregister(self, service: str, instance_id: str) -> int:
        """Remove the instance; its revision, or 0 when it was unknown."""
        return int(
            await self._deregister(
                keys=service_keys(service), args=self._args(service, instance_id)
            )
        )

    async def expire(self, service: str, instance_id: str) -> int:
        """Publish ``down`` for an instance whose deadline has passed; 0 if alive or already done."""
        return int(
            await self._expire(keys=service_keys(service), args=self._args(service, instance_id))
        )

    async def due(self, limit: int = 1000) -> tuple[list[tuple[str, str]], float | None]:
        """Instances whose deadline has passed (at most ``limit``), and seconds until the next one.

        The wait is None when no instance is registered.
        """
        wait_ms, members = await self._due(keys=[DEADLINES_KEY], args=[limit])
        found = [parsed for m in members if (parsed := parse_member(m)) is not None]
        return found, (None if int(wait_ms) < 0 else int(wait_ms) / 1000)

    async def sweep(self, limit: int = 1000) -> tuple[int, float | None]:
        """Expire every instance whose deadline has passed: ``(how many, seconds to the next)``."""
        count = 0
        while True:
            found, wait = await self.due(limit)
            for service, instance_id in found:
                if await self.expire(service, instance_id):
                    count += 1
            if len(found) < limit:
                return count, wait

    async def snapshot(
        self, parsed: dict[str, Instance] | None = None
    ) -> tuple[int, dict[str, dict[str, Instance]]]:
        """``(rev, {service: {id: instance}})`` of every live instance, read atomically.

        ``parsed`` maps stored JSON to the instance parsed from it; it is used
        to skip parsing instances that did not change since the last call (the
        same objects come back, so comparing snapshots is cheap) and is
        replaced in place by the entries of this snapshot.
        """
        names = self._names
        while True:
            flat = await self._snapshot(
                keys=[REV_KEY, SERVICES_KEY, DEADLINES_KEY, *map(index_key, names)], args=names
            )
            if int(flat[0]) >= 0:
                break
            # A service was added since the last snapshot: name its keys and ask again.
            names = self._names = sorted(str(n) for n in flat[1])
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
        flat = await self._list(
            keys=[REV_KEY, index_key(service), heartbeat_key(service), DEADLINES_KEY],
            args=[service],
        )
        out = [Instance.from_json(flat[i + 1], flat[i + 2]) for i in range(1, len(flat), 3)]
        return int(flat[0]), sorted(out, key=lambda inst: inst.id)

    async def services(self) -> list[str]:
        return sorted(str(name) for name in await self.redis.smembers(SERVICES_KEY))

    async def known(self, service: str) -> bool:
        return bool(await self.redis.sismember(SERVICES_KEY, service))

    async def rev(self) -> int:
        return int(await self.redis.get(REV_KEY) or 0)

    async def epoch(self) -> str:
        """The data's epoch: the same until Redis loses the registry's keys (then a new one)."""
        return str(await self._epoch(keys=[EPOCH_KEY], args=[os.urandom(8).hex()]))

    async def events_since(
        self, since: int, limit: int = 1000, *, epoch: str | None = None
    ) -> tuple[list[str], bool]:
        """Retained events with rev > ``since`` (raw JSON), and whether a resync is needed.

        A resync is needed when events after ``since`` are no longer retained,
        when ``since`` is ahead of the current revision (Redis was emptied), or,
        given the ``epoch`` that ``since`` belongs to, when the data's epoch is
        another one (Redis was emptied and its new revisions already passed
        ``since``): read with the events in one script (atomically, on Cluster too).
        """
        flat = await self._events(
            keys=[REV_KEY, EVENTS_KEY, EPOCH_KEY], args=[f"{since + 1}-0", limit]
        )
        current_raw, oldest, epoch_now = flat[0], flat[1], flat[2]
        if epoch is not None and str(epoch_now) != epoch:
            return [], True
        current = int(current_raw or 0)
        if since > current:
            return [], True
        if since == current:
            return [], False
        oldest_rev = int(str(oldest).split("-")[0]) if oldest else current + 1
        if oldest_rev > since + 1:
            return [], True
        return [str(e) for e in flat[3:]], False
