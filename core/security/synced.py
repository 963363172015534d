"""Rate limits off the request path: a local token bucket per process, reconciled with Redis.

The ``exact`` mode (:class:`~core.security.ratelimit.RateLimiter`) asks Redis
on every request: never over-admits, costs a round trip per request. The
``synced`` mode (the idea of Kong's ``sync_rate``) decides each request from
a bucket in this process's memory, with no await, and a :class:`Syncer`
reconciles every bucket that was used with Redis every ``sync_interval``
seconds (5 ms by default) in one pipelined script call per key: the call
charges Redis' bucket with the tokens this process took since the last call
and answers the bucket's level, which becomes the local estimate (minus what
was taken meanwhile). Redis' bucket may go below zero: tokens admitted by
several processes at once are a debt that its refill pays before anyone is
admitted again, so over time the limit holds.

**The bound.** With N processes (gateways times workers) admitting on one
key, an exact bucket would admit at most ``B + r*T`` requests' tokens over
any T seconds (B the burst capacity, r the replenish rate). In synced mode a
process admits only against its estimate of Redis' level, learnt at most one
sync interval plus one round trip ago (``d``), or on first use of a key by a
call made before the first decision; every token it admits reaches Redis
within ``d``. So each of the other N-1 processes can spend at most what it
believed was left (at most B) plus the refill during ``d`` before it learns
that another spent it:

    admitted over any T  <=  B + r*T + (N-1) * (B + r*d)

and over a long time the rate converges to r (the debt is paid). With the
defaults (d about 5 ms) the excess is at most (N-1) bursts, reached only
when a full bucket is emptied by all processes within the same few
milliseconds; while a key is saturated, each process sees a level near zero
and the excess per interval is (N-1)*r*d tokens, repaid right after.

A key not used for a second is forgotten locally; its next request asks
Redis first (one round trip, like the exact mode), so an estimate is never
older than that. When Redis cannot be reached, every process keeps deciding
from its own bucket (the limit then holds per process; ``fail_open=False``
refuses new keys with 503 instead); the sync resumes when Redis answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import weakref
from collections.abc import Callable

from core import log
from core.security.ratelimit import (
    Decision,
    RateLimiter,
    RateLimitPolicy,
    StoreHealth,
    bucket_key,
)
from core.security.resp import RespClient, RespError, Script

logger = log.get("ratelimit")

__all__ = ["SyncedRateLimiter", "Syncer", "limiter_factory"]

# KEYS[1] the bucket; ARGV replenish rate, capacity, tokens used since the last call.
# The same hash as the exact mode's script (tokens, ts); tokens may go below zero.
_SYNC = Script("""
local rate = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local used = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or capacity
local last = tonumber(state[2]) or now
local filled = math.min(capacity, tokens + math.max(0, now - last) * rate) - used
redis.call('HSET', KEYS[1], 'tokens', filled, 'ts', now)
redis.call('EXPIRE', KEYS[1], math.max(1, math.ceil((capacity - math.min(0, filled)) / rate * 2)))
return tostring(filled)
""")

_FORGET_AFTER = 1.0


class _Bucket:
    """This process's view of one key: the level estimated at ``at``, tokens not yet sent."""

    __slots__ = ("at", "key", "level", "pending", "sent", "used_at")

    def __init__(self, key: str, level: float, now: float) -> None:
        self.key = key
        self.level = level
        self.at = now
        self.used_at = now
        self.pending = 0
        self.sent = 0


class SyncedRateLimiter(RateLimiter):
    """The ``synced`` mode of one route's policy: :meth:`decide` without waiting."""

    def __init__(
        self,
        redis: RespClient,
        policy: RateLimitPolicy,
        syncer: Syncer,
        *,
        clock: Callable[[], float] = time.monotonic,
        timeout: float = 0.5,
        health: StoreHealth | None = None,
    ) -> None:
        super().__init__(
            redis,
            policy.replenish_rate,
            policy.burst_capacity,
            policy.requested_tokens,
            fail_open=policy.fail_open,
            clock=clock,
            timeout=timeout,
            health=health,
        )
        self.policy = policy
        self.syncer = syncer
        self.buckets: dict[str, _Bucket] = {}
        syncer.add(self)

    def decide(self, route_id: str, key: str) -> Decision | None:
        """The decision from the local bucket; None when the key must be read from Redis first."""
        return self.decide_bucket(bucket_key(route_id, key))

    def decide_bucket(self, full_key: str) -> Decision | None:
        """:meth:`decide` for the bucket's whole key (:func:`~core.security.ratelimit.bucket_key`)."""
        bucket = self.buckets.get(full_key)
        if bucket is None:
            return None
        now = self.clock()
        rate = self.replenish_rate
        level = bucket.level + (now - bucket.at) * rate
        if level > self.burst_capacity:
            level = self.burst_capacity
        bucket.at = now
        bucket.used_at = now
        requested = self.requested_tokens
        if level >= requested:
            bucket.level = level - requested
            if not bucket.pending:
                self.syncer.dirty(self)
            bucket.pending += requested
            self.allowed += 1
            return Decision(True, int(level - requested))
        bucket.level = level
        self.denied += 1
        return Decision(False, max(0, int(level)), math.ceil((requested - level) / rate))

    async def check(self, route_id: str, key: str, *, now: float | None = None) -> Decision:
        """:meth:`decide`, reading the key from Redis first when this process has no view of it."""
        decision = self.decide(route_id, key)
        if decision is not None:
            return decision
        full = bucket_key(route_id, key)
        try:
            async with asyncio.timeout(self.timeout):
                level = await self._call(full, 0)
        except (OSError, TimeoutError, RespError) as exc:
            if isinstance(exc, TimeoutError):
                self.redis.reset()
            self._unreachable(exc)
            if not self.fail_open:
                self.failed_closed += 1
                self.health.failed_closed += 1
                return Decision(False, -1, max(1, math.ceil(self.retry_interval)), unavailable=True)
            level = float(self.burst_capacity)  # this process's own bucket until Redis returns
        bucket = self.buckets.get(full)
        if bucket is None:
            self.buckets[full] = _Bucket(full, level, self.clock())
        decision = self.decide(route_id, key)
        assert decision is not None
        return decision

    async def _call(self, key: str, used: int) -> float:
        reply = await self.redis.run_script(
            _SYNC, [key], [self.replenish_rate, self.burst_capacity, used]
        )
        return float(reply.decode() if isinstance(reply, bytes) else reply)

    def _unreachable(self, exc: BaseException) -> None:
        # Logged once per outage for every limiter of the gateway (StoreHealth); a
        # synced limiter meanwhile decides from this process's buckets.
        self.health.failure(exc, self.fail_open)
        self._down_until = self.clock() + self.retry_interval

    async def sync(self) -> None:
        """Send every bucket's pending tokens, one pipelined call per key; adopt Redis' levels."""
        now = self.clock()
        todo = []
        for full, bucket in list(self.buckets.items()):
            if bucket.pending:
                bucket.sent = bucket.pending
                bucket.pending = 0
                todo.append(bucket)
            elif now - bucket.used_at > _FORGET_AFTER and not bucket.sent:
                del self.buckets[full]
        if not todo:
            return
        try:
            async with asyncio.timeout(self.timeout):
                levels = await asyncio.gather(*(self._call(b.key, b.sent) for b in todo))
        except (OSError, TimeoutError, RespError) as exc:
            if isinstance(exc, TimeoutError):
                self.redis.reset()
            self._unreachable(exc)
            for bucket in todo:
                bucket.pending += bucket.sent  # charged on the next call that succeeds
                bucket.sent = 0
            return
        self._down_until = -math.inf
        self.health.success()
        now = self.clock()
        for bucket, level in zip(todo, levels, strict=True):
            # Redis' level includes what was sent; what was taken since is ours to subtract.
            bucket.level = level - bucket.pending
            bucket.at = now
            bucket.sent = 0


class Syncer:
    """The one loop that syncs every synced limiter's used buckets, ``interval`` after first use.

    It sleeps while nothing was admitted: an idle gateway does not wake up
    every few milliseconds.
    """

    def __init__(self) -> None:
        self._limiters: weakref.WeakSet[SyncedRateLimiter] = weakref.WeakSet()
        self._dirty: set[SyncedRateLimiter] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def add(self, limiter: SyncedRateLimiter) -> None:
        self._limiters.add(limiter)

    def dirty(self, limiter: SyncedRateLimiter) -> None:
        if not self._dirty:
            self._wake.set()
        self._dirty.add(limiter)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ratelimit:sync")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        # What was admitted is charged before leaving, so that a restart forgets nothing.
        with contextlib.suppress(Exception):
            await asyncio.gather(*(limiter.sync() for limiter in list(self._limiters)))

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            interval = min((lim.policy.sync_interval for lim in self._dirty), default=0.005)
            await asyncio.sleep(interval)
            self._wake.clear()
            dirty, self._dirty = self._dirty, set()
            results = await asyncio.gather(
                *(limiter.sync() for limiter in dirty), return_exceptions=True
            )
            for result in results:
                if isinstance(result, BaseException):
                    logger.error("rate limit sync failed", exc_info=result)


def limiter_factory(
    redis: RespClient, syncer: Syncer, health: StoreHealth | None = None
) -> Callable[[RateLimitPolicy], RateLimiter]:
    """The router's ``limiter_for``: the exact or synced limiter of a route's policy.

    ``health``, shared by every limiter made, counts and logs Redis outages once.
    """
    health = health or StoreHealth()

    def make(policy: RateLimitPolicy) -> RateLimiter:
        if policy.mode == "synced":
            return SyncedRateLimiter(redis, policy, syncer, health=health)
        return RateLimiter.for_policy(redis, policy, health=health)

    return make
