"""A token bucket per key in Redis, with Spring Cloud Gateway's RequestRateLimiter semantics.

Each bucket holds at most ``burst_capacity`` tokens and gains
``replenish_rate`` tokens a second; a request takes ``requested_tokens`` and
is allowed when the bucket holds that many. The read, refill, take and write
happen in one Lua script, so concurrent requests through any number of
gateways never over-spend a bucket. A bucket unused for twice the time it
takes to fill expires from Redis (it would be full anyway).

Differences from Spring Cloud Gateway's ``request_rate_limiter.lua``: time is
Redis ``TIME`` with microseconds (SCG keeps whole seconds, so its buckets refill
in steps), and the script also says how long until the request could pass
(``Retry-After``). When Redis cannot be reached, SCG allows the request with
``X-RateLimit-Remaining: -1``; here that is the default (``fail_open``), and
``fail_open=False`` refuses instead, with 503 (the client did nothing wrong).
After a failure the limiter does not ask Redis again for ``retry_interval``
seconds, so that a Redis outage costs requests nothing but the decision.
Every limiter of a gateway shares one :class:`StoreHealth`, which counts the
decisions made without Redis (``gateway_ratelimit_fail_open_total``: requests
let through unchecked) and logs one warning when an outage begins and one
line when Redis answers again, whatever the number of requests or routes.

The script runs through :class:`core.security.resp.RespClient`, one pipelined
connection, because redis-py's per-command cost (about 100 µs of CPU) would
be several times the cost of proxying the request itself.

Redis layout: one hash per bucket, ``essaim:rl:<route_id>:<key>`` (built by
:func:`bucket_key` only) with fields ``tokens`` and ``ts`` (seconds, Redis
clock). The script touches that one key, so no hash tag: on Redis Cluster the
whole name is hashed and buckets spread over the shards.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from core import log
from core.errors import ServiceUnavailable, SettingsError, TooManyRequests
from core.security.resp import RespClient, RespError, Script

logger = log.get("ratelimit")

__all__ = [
    "KEY_PREFIX",
    "Decision",
    "RateLimitPolicy",
    "RateLimiter",
    "StoreHealth",
    "bucket_key",
    "rate_key",
]

KEY_PREFIX = "essaim:rl:"

# KEYS[1] the bucket; ARGV replenish rate, capacity, requested, [now in seconds].
_SCRIPT = Script("""
local rate = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local requested = tonumber(ARGV[3])
local now = tonumber(ARGV[4])
if now == nil then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or capacity
local last = tonumber(state[2]) or now
local filled = math.min(capacity, tokens + math.max(0, now - last) * rate)
local allowed = 0
local retry_after = 0
if filled >= requested then
  filled = filled - requested
  allowed = 1
else
  retry_after = math.ceil((requested - filled) / rate)
end
redis.call('HSET', KEYS[1], 'tokens', filled, 'ts', now)
redis.call('EXPIRE', KEYS[1], math.max(1, math.ceil(capacity / rate * 2)))
return {allowed, math.floor(filled), retry_after}
""")


@dataclasses.dataclass(frozen=True)
class RateLimitPolicy:
    """A route's ``rate_limit`` table: Spring Cloud Gateway's settings, in snake case.

    ``replenish_rate`` tokens a second, at most ``burst_capacity`` in the
    bucket, ``requested_tokens`` per request (one request a minute is rate 1,
    requested 60, burst 60); ``fail_open`` decides when Redis is unreachable.
    ``mode`` is ``exact`` (one Redis round trip per request, never
    over-admits) or ``synced`` (a local bucket per process, reconciled with
    Redis every ``sync_interval`` seconds: see :mod:`core.security.synced`).
    """

    replenish_rate: int = 10
    burst_capacity: int = 20
    requested_tokens: int = 1
    fail_open: bool = True
    mode: str = "exact"
    sync_interval: float = 0.005

    def __post_init__(self) -> None:
        if self.replenish_rate < 1:
            raise SettingsError(
                f"rate_limit: replenish_rate: expected >= 1 token a second, got {self.replenish_rate}"
            )
        if not 1 <= self.requested_tokens <= self.burst_capacity:
            raise SettingsError(
                f"rate_limit: expected 1 <= requested_tokens ({self.requested_tokens}) "
                f"<= burst_capacity ({self.burst_capacity})"
            )
        if self.mode not in ("exact", "synced"):
            raise SettingsError(f"rate_limit: mode: expected exact or synced, got {self.mode!r}")
        if not 0.001 <= self.sync_interval <= 1.0:
            raise SettingsError(
                f"rate_limit: sync_interval: expected 0.001 to 1 second, got {self.sync_interval}"
            )


class Decision(NamedTuple):
    """One request's answer: ``allowed``, the whole tokens left (-1: Redis unreachable).

    ``retry_after`` is the number of seconds until the request could pass
    (0 when allowed); ``unavailable`` tells that Redis could not decide.
    A named tuple: made on every rate-limited request, and a third cheaper
    than a frozen dataclass (which sets each field through ``object.__setattr__``).
    """

    allowed: bool
    remaining: int
    retry_after: int = 0
    unavailable: bool = False


def bucket_key(route_id: str, key: str) -> str:
    """The Redis key of the bucket of ``key`` on route ``route_id``."""
    return f"{KEY_PREFIX}{route_id}:{key}"


def rate_key(user_id: str | None, address: str) -> str:
    """The bucket key of a request: its user id when authenticated, else its address."""
    return f"user:{user_id}" if user_id else f"addr:{address}"


class StoreHealth:
    """What the rate limiters sharing one Redis know of it: up or in an outage, and counts.

    ``failed_open`` counts requests let through because Redis could not
    decide, ``failed_closed`` those refused for it, ``outages`` the outages
    seen. An outage is logged once when it begins (the first failure) and
    once when it ends (the first answer after it), not per request.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.down_since: float | None = None
        self.failed_open = 0
        self.failed_closed = 0
        self.outages = 0

    @property
    def up(self) -> bool:
        return self.down_since is None

    def failure(self, exc: BaseException, fail_open: bool) -> None:
        """A call to Redis failed: the start of an outage, unless one is under way."""
        if self.down_since is not None:
            return
        self.down_since = self.clock()
        self.outages += 1
        logger.warning(
            "rate limit: Redis unreachable (%s); limited routes fail %s until it answers "
            "(requests let through are counted in gateway_ratelimit_fail_open_total)",
            exc or type(exc).__name__,
            "open" if fail_open else "closed",
        )

    def success(self) -> None:
        """A call to Redis answered: the end of the outage, if there was one."""
        if self.down_since is None:
            return
        lasted = self.clock() - self.down_since
        self.down_since = None
        logger.info(
            "rate limit: Redis answers again after %.1f s; %d requests were let through "
            "unchecked and %d refused since the first outage",
            lasted, self.failed_open, self.failed_closed,
        )  # fmt: skip


class RateLimiter:
    """Token buckets of one configuration, in the Redis server of ``redis``.

    ``allowed``, ``denied``, ``failed_open`` and ``failed_closed`` count the
    decisions for metrics; ``health`` (shared by the limiters of one Redis)
    counts the failures of all and logs outages once.
    """

    def __init__(
        self,
        redis: RespClient,
        replenish_rate: int,
        burst_capacity: int,
        requested_tokens: int = 1,
        *,
        fail_open: bool = True,
        timeout: float = 0.5,
        retry_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        health: StoreHealth | None = None,
    ) -> None:
        self.health = health or StoreHealth(clock)
        self.policy = RateLimitPolicy(replenish_rate, burst_capacity, requested_tokens, fail_open)
        self.redis = redis
        self.replenish_rate = replenish_rate
        self.burst_capacity = burst_capacity
        self.requested_tokens = requested_tokens
        self.fail_open = fail_open
        self.timeout = timeout
        self.retry_interval = retry_interval
        self.clock = clock
        self.allowed = 0
        self.denied = 0
        self.failed_open = 0
        self.failed_closed = 0
        self._args: tuple[float, ...] = (replenish_rate, burst_capacity, requested_tokens)
        self._down_until = -math.inf
        self._static_headers = {
            "X-RateLimit-Replenish-Rate": str(replenish_rate),
            "X-RateLimit-Burst-Capacity": str(burst_capacity),
            "X-RateLimit-Requested-Tokens": str(requested_tokens),
        }
        #: The response header lines that do not change, joined once (the data plane's).
        self.static_lines = "".join(
            f"{name}: {value}\r\n" for name, value in self._static_headers.items()
        ).encode("latin-1")

    async def check(self, route_id: str, key: str, *, now: float | None = None) -> Decision:
        """Take ``requested_tokens`` from bucket (``route_id``, ``key``) if it holds them.

        ``now`` (seconds) replaces Redis' clock, for tests. Never raises for
        an unreachable Redis: the decision is then the configured failure mode.
        """
        if self.clock() < self._down_until:
            return self._fail()
        args = self._args if now is None else (*self._args, now)
        try:
            async with asyncio.timeout(self.timeout):
                allowed, remaining, retry_after = await self.redis.run_script(
                    _SCRIPT, [bucket_key(route_id, key)], list(args)
                )
        except (OSError, TimeoutError, RespError) as exc:
            if isinstance(exc, TimeoutError):
                self.redis.reset()  # a hung server: start afresh on the next try
            self.health.failure(exc, self.fail_open)
            self._down_until = self.clock() + self.retry_interval
            return self._fail()
        self._down_until = -math.inf
        self.health.success()
        if allowed:
            self.allowed += 1
            return Decision(True, int(remaining))
        self.denied += 1
        return Decision(False, int(remaining), int(retry_after))

    @classmethod
    def for_policy(cls, redis: RespClient, policy: RateLimitPolicy, **options: Any) -> RateLimiter:
        """The limiter of a route's ``rate_limit`` policy (``options``: timeouts, clock)."""
        return cls(
            redis,
            policy.replenish_rate,
            policy.burst_capacity,
            policy.requested_tokens,
            fail_open=policy.fail_open,
            **options,
        )

    def _fail(self) -> Decision:
        if self.fail_open:
            self.failed_open += 1
            self.health.failed_open += 1
            return Decision(True, -1, unavailable=True)
        self.failed_closed += 1
        self.health.failed_closed += 1
        return Decision(False, -1, max(1, math.ceil(self.retry_interval)), unavailable=True)

    def headers(self, decision: Decision) -> dict[str, str]:
        """``X-RateLimit-Remaining/-Replenish-Rate/-Burst-Capacity/-Requested-Tokens``.

        With ``Retry-After`` when the request is refused.
        """
        headers = {"X-RateLimit-Remaining": str(decision.remaining), **self._static_headers}
        if not decision.allowed:
            headers["Retry-After"] = str(decision.retry_after)
        return headers

    def problem(self, decision: Decision) -> TooManyRequests | ServiceUnavailable:
        """The error that answers a refused request: 429, or 503 when Redis could not decide."""
        if decision.unavailable:
            return ServiceUnavailable(
                "the rate limiter cannot reach its store; try again shortly",
                headers=self.headers(decision),
            )
        return TooManyRequests(
            f"rate limit exceeded: {self.replenish_rate} requests a second, "
            f"bursts of {self.burst_capacity}; retry in {decision.retry_after} s",
            headers=self.headers(decision),
        )
