"""Sessions kept at the gateway for browsers: the stateful model, in Redis.

A session is created by the gateway's login endpoint (:mod:`core.proxy.bff`)
once the auth service has accepted a user's password, and named by a
random 256-bit id that only the browser's ``HttpOnly`` cookie carries. The
session holds who the user is (``sub``, the login name, the roles), the CSRF
token of the session, and the tokens the auth service issued: the
short-lived access token that the gateway relays to services and the
refresh token it spends to get the next one (:mod:`core.security.relay`).

Redis layout: one hash per session, ``essaim:session:{<digest>}`` (built by
:func:`session_key` only), where ``<digest>`` is the SHA-256 of the id in
hex: a copy of Redis (a dump, a replica, ``MONITOR``) yields no cookie that
works. Fields: ``sub``, ``user``, ``roles`` (comma-separated), ``csrf``,
``access``, ``access_exp``, ``access_iat``, ``refresh``, ``created``,
``absolute`` (seconds since the epoch, Redis' clock) and, while a gateway
refreshes the tokens, ``refreshing`` (until when its claim holds). Each
script touches that one key, so on Redis Cluster the tag (the digest)
spreads sessions over the shards as rate-limit buckets are spread.

Timeouts: the key's TTL is the idle timeout, renewed by :meth:`SessionStore.load`
(never beyond the absolute deadline, after which a load deletes the key).
Every decision about time is made with Redis' ``TIME``, so any number of
gateways agree on when a session ends.

Each gateway process may keep a session it read for ``cache`` seconds
(:meth:`SessionStore.cached`): a logout through another process, or the
idle timeout passing, takes effect there within that bound. The process that
answers the logout forgets the session at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import math
import re
import secrets
import time
from collections.abc import Callable
from typing import Any

import orjson

from core import log
from core.errors import ServiceUnavailable
from core.security.resp import RespClient, RespError, Script
from core.security.tokens import Identity

logger = log.get("sessions")

__all__ = [
    "CSRF_COOKIE",
    "KEY_PREFIX",
    "SESSION_COOKIE",
    "Session",
    "SessionStore",
    "Tokens",
    "new_secret",
    "session_key",
]

SESSION_COOKIE = "essaim_session"
CSRF_COOKIE = "essaim_csrf"
KEY_PREFIX = "essaim:session:"
#: What :func:`new_secret` makes: 32 random bytes, base64url without padding.
SECRET_RE = re.compile(r"^[A-Za-z0-9_-]{43}\Z")

_FIELDS = ("sub", "user", "roles", "csrf", "access", "access_exp", "access_iat", "refresh")

# KEYS[1] the session; ARGV idle seconds, absolute seconds, then the fields'
# values in _FIELDS order. Returns Redis' clock (a string: Lua numbers are
# truncated to integers on the way out).
_CREATE = Script("""
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local idle = tonumber(ARGV[1])
local absolute = now + tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'sub', ARGV[3], 'user', ARGV[4], 'roles', ARGV[5], 'csrf', ARGV[6],
  'access', ARGV[7], 'access_exp', ARGV[8], 'access_iat', ARGV[9], 'refresh', ARGV[10],
  'created', tostring(now), 'absolute', tostring(absolute))
redis.call('PEXPIRE', KEYS[1], math.ceil(math.min(idle, absolute - now) * 1000))
return {tostring(now), tostring(absolute)}
""")

# KEYS[1] the session; ARGV idle seconds, and 1 to renew the idle timeout.
# Returns nil (none, or past its absolute deadline: then deleted), else a
# JSON array: the fields in _FIELDS order, the absolute deadline, Redis'
# clock and the idle deadline (one bulk string is read faster than eleven).
_LOAD = Script("""
local v = redis.call('HMGET', KEYS[1], 'sub', 'user', 'roles', 'csrf', 'access', 'access_exp',
  'access_iat', 'refresh', 'absolute')
if not v[1] or not v[9] then return nil end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local absolute = tonumber(v[9])
if now >= absolute then
  redis.call('DEL', KEYS[1])
  return nil
end
local ttl = redis.call('PTTL', KEYS[1]) / 1000
if ARGV[2] == '1' then
  ttl = math.min(tonumber(ARGV[1]), absolute - now)
  redis.call('PEXPIRE', KEYS[1], math.ceil(ttl * 1000))
end
v[10] = tostring(now)
v[11] = tostring(now + ttl)
return cjson.encode(v)
""")

# KEYS[1] the session; ARGV the refresh token the caller saw, seconds the claim holds.
# 1: claimed; 0: someone else refreshed or is refreshing; -1: no such session.
_CLAIM = Script("""
local v = redis.call('HMGET', KEYS[1], 'refresh', 'refreshing')
if not v[1] then return -1 end
if v[1] ~= ARGV[1] then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
if v[2] and tonumber(v[2]) > now then return 0 end
redis.call('HSET', KEYS[1], 'refreshing', tostring(now + tonumber(ARGV[2])))
return 1
""")

# KEYS[1] the session; ARGV the refresh token spent, then sub, user, roles,
# access, access_exp, access_iat, refresh. 1: saved; 0: not the token
# spent (someone else saved); -1: no such session (logged out meanwhile).
_SAVE = Script("""
local r = redis.call('HGET', KEYS[1], 'refresh')
if not r then return -1 end
if r ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'sub', ARGV[2], 'user', ARGV[3], 'roles', ARGV[4], 'access', ARGV[5],
  'access_exp', ARGV[6], 'access_iat', ARGV[7], 'refresh', ARGV[8])
redis.call('HDEL', KEYS[1], 'refreshing')
return 1
""")

# KEYS[1] the session. Returns its refresh token (nil when there was none) and deletes it.
_DELETE = Script("""
local r = redis.call('HGET', KEYS[1], 'refresh')
redis.call('DEL', KEYS[1])
return r
""")


def new_secret() -> str:
    """A session id or CSRF token: 256 random bits, base64url (43 characters)."""
    return secrets.token_urlsafe(32)


def session_key(session_id: str) -> str:
    """The Redis key of session ``session_id`` (its SHA-256, never the id itself)."""
    return f"{KEY_PREFIX}{{{hashlib.sha256(session_id.encode()).hexdigest()}}}"


@dataclasses.dataclass(frozen=True, slots=True)
class Tokens:
    """What the auth service issued: the access token (verified) and the refresh token."""

    access: str
    refresh: str
    identity: Identity

    @property
    def user(self) -> str:
        name = self.identity.claims.get("preferred_username")
        return name if isinstance(name, str) and name else self.identity.sub

    @property
    def issued_at(self) -> float:
        iat = self.identity.claims.get("iat")
        return float(iat) if isinstance(iat, int | float) else self.identity.exp - 300.0


@dataclasses.dataclass(frozen=True, slots=True)
class Session:
    """One session as read from Redis (immutable: a refresh makes a new one).

    Times are seconds since the epoch: ``absolute`` is when it ends whatever
    happens, ``idle_until`` when it ends unless used again (as of ``read_at``,
    Redis' clock when it was read), ``access_exp`` and ``access_iat`` the
    access token's ``exp`` and ``iat``.
    """

    id: str
    sub: str
    user: str
    roles: tuple[str, ...]
    csrf: str
    access: str
    access_exp: float
    access_iat: float
    refresh: str
    absolute: float
    idle_until: float
    read_at: float
    #: The identity the route's policy checks (made once: a session serves many requests).
    identity: Identity = dataclasses.field(init=False, repr=False, compare=False)
    #: The header lines for upstream: the identity and the relayed access token.
    upstream_lines: bytes = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        roles = ",".join(self.roles)
        object.__setattr__(
            self, "identity", Identity(self.sub, self.roles, self.access_exp, {}, roles)
        )
        object.__setattr__(
            self,
            "upstream_lines",
            (
                f"x-user-id: {self.sub}\r\nx-user-roles: {roles}\r\n"
                f"authorization: Bearer {self.access}\r\n"
            ).encode("latin-1"),
        )

    @property
    def expires_at(self) -> float:
        """When the session ends if it is not used again."""
        return min(self.idle_until, self.absolute)

    def describe(self) -> dict[str, Any]:
        """What the browser may know: never a token but the CSRF one."""
        return {
            "user": self.user,
            "sub": self.sub,
            "roles": list(self.roles),
            "expires_at": round(self.expires_at, 3),
            "absolute_expires_at": round(self.absolute, 3),
            "csrf": self.csrf,
        }


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class SessionStore:
    """Sessions in the Redis of ``resp``, with an optional per-process cache.

    ``idle`` and ``absolute`` are the timeouts in seconds; ``cache`` how
    long a session read is trusted without asking Redis again (0: never).
    Every method that needs Redis raises :class:`~core.errors.ServiceUnavailable`
    (503, ``Retry-After: 1``) when it can't be reached within ``timeout``;
    after a failure, Redis is not asked again for ``retry_interval`` seconds
    (requests fail fast), then it is, and sessions work again by themselves.
    """

    def __init__(
        self,
        resp: RespClient,
        *,
        idle: float = 1800.0,
        absolute: float = 8 * 3600.0,
        cache: float = 1.0,
        timeout: float = 0.5,
        retry_interval: float = 1.0,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < idle <= absolute:
            raise ValueError(f"expected 0 < idle ({idle}) <= absolute ({absolute})")
        self.resp = resp
        self.idle = idle
        self.absolute = absolute
        self.cache = cache
        self.timeout = timeout
        self.retry_interval = retry_interval
        self.cache_size = cache_size
        self.clock = clock
        self.created = 0
        self.deleted = 0
        self.outages = 0
        self._cache: dict[str, tuple[Session, float]] = {}
        self._down_until = -math.inf

    # -- the cache -------------------------------------------------------------------------

    def cached(self, session_id: str) -> Session | None:
        """The session as read from Redis less than ``cache`` seconds ago, else None."""
        found = self._cache.get(session_id)
        if found is None:
            return None
        session, until = found
        if self.clock() >= until or time.time() >= session.absolute:
            del self._cache[session_id]
            return None
        return session

    def forget(self, session_id: str) -> None:
        """Drop a session from this process' cache (it was deleted, or changed)."""
        self._cache.pop(session_id, None)

    def _keep(self, session: Session) -> Session:
        if self.cache > 0:
            cache = self._cache
            if len(cache) >= self.cache_size:
                cache.clear()
            cache[session.id] = (session, self.clock() + self.cache)
        return session

    # -- Redis -----------------------------------------------------------------------------

    async def _run(self, script: Script, session_id: str, args: list[Any]) -> Any:
        if self.clock() < self._down_until:
            raise _unavailable()
        try:
            async with asyncio.timeout(self.timeout):
                reply = await self.resp.run_script(script, [session_key(session_id)], args)
        except (OSError, TimeoutError, RespError) as exc:
            if isinstance(exc, TimeoutError):
                self.resp.reset()
            if self._down_until == -math.inf:
                self.outages += 1
                logger.warning(
                    "sessions: Redis unreachable (%s); session requests answer 503 until it answers",
                    exc or type(exc).__name__,
                )
            self._down_until = self.clock() + self.retry_interval
            raise _unavailable() from None
        if self._down_until != -math.inf:
            logger.info("sessions: Redis answers again")
            self._down_until = -math.inf
        return reply

    async def create(self, tokens: Tokens) -> Session:
        """A new session for ``tokens``, with a new id and CSRF token."""
        session_id, csrf = new_secret(), new_secret()
        identity = tokens.identity
        values = (
            identity.sub,
            tokens.user,
            ",".join(identity.roles),
            csrf,
            tokens.access,
            repr(float(identity.exp)),
            repr(tokens.issued_at),
            tokens.refresh,
        )
        now, absolute = await self._run(
            _CREATE, session_id, [repr(float(self.idle)), repr(float(self.absolute)), *values]
        )
        self.created += 1
        read_at = float(now)
        return self._keep(
            Session(
                session_id,
                identity.sub,
                tokens.user,
                identity.roles,
                csrf,
                tokens.access,
                float(identity.exp),
                tokens.issued_at,
                tokens.refresh,
                float(absolute),
                min(read_at + self.idle, float(absolute)),
                read_at,
            )
        )

    async def load(self, session_id: str, *, touch: bool = True) -> Session | None:
        """The session from Redis (None when there is none or it has ended).

        ``touch`` renews its idle timeout (a request used it).
        """
        reply = await self._run(_LOAD, session_id, [repr(float(self.idle)), "1" if touch else "0"])
        if reply is None:
            self.forget(session_id)
            return None
        sub, user, roles, csrf, access, exp, iat, refresh, absolute, now, idle_until = orjson.loads(
            reply
        )
        return self._keep(
            Session(
                session_id,
                sub,
                user,
                tuple(r for r in roles.split(",") if r),
                csrf,
                access,
                float(exp),
                float(iat),
                refresh,
                float(absolute),
                float(idle_until),
                float(now),
            )
        )

    async def claim_refresh(self, session: Session, hold: float = 10.0) -> int:
        """Claim the right to spend ``session``'s refresh token for ``hold`` seconds.

        1: claimed; 0: another process has refreshed, or is refreshing; -1:
        the session is gone.
        """
        return int(await self._run(_CLAIM, session.id, [session.refresh, repr(float(hold))]))

    async def save_tokens(self, session: Session, tokens: Tokens) -> Session | None:
        """Replace ``session``'s tokens (and identity) by ``tokens``; None if it was deleted.

        When another process saved first, the session as it is now in Redis.
        """
        identity = tokens.identity
        roles = ",".join(identity.roles)
        done = int(
            await self._run(
                _SAVE,
                session.id,
                [
                    session.refresh,
                    identity.sub,
                    tokens.user,
                    roles,
                    tokens.access,
                    repr(float(identity.exp)),
                    repr(tokens.issued_at),
                    tokens.refresh,
                ],
            )
        )
        if done < 0:
            self.forget(session.id)
            return None
        if done == 0:
            return await self.load(session.id, touch=False)
        return self._keep(
            dataclasses.replace(
                session,
                sub=identity.sub,
                user=tokens.user,
                roles=identity.roles,
                access=tokens.access,
                access_exp=float(identity.exp),
                access_iat=tokens.issued_at,
                refresh=tokens.refresh,
            )
        )

    async def delete(self, session_id: str) -> str | None:
        """Delete the session; its refresh token (to revoke), None if there was none."""
        self.forget(session_id)
        reply = await self._run(_DELETE, session_id, [])
        if reply is None:
            return None
        self.deleted += 1
        return _text(reply)


def _unavailable() -> ServiceUnavailable:
    return ServiceUnavailable(
        "sessions are unavailable: the gateway cannot reach Redis; retry shortly "
        "(bearer tokens still work)",
        headers={"Retry-After": "1"},
    )
