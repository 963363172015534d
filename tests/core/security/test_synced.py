"""The synced rate limit: decisions from memory, reconciled with a real Redis, within its bound."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from core.errors import SettingsError
from core.routes.parse import build_policy
from core.security.ratelimit import RateLimitPolicy
from core.security.resp import RespClient
from core.security.synced import SyncedRateLimiter, Syncer, limiter_factory


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def resp(redis_url: str) -> AsyncIterator[RespClient]:
    client = RespClient(redis_url)
    yield client
    await client.close()


@pytest.fixture
async def resp2(redis_url: str) -> AsyncIterator[RespClient]:
    client = RespClient(redis_url)
    yield client
    await client.close()


def synced(resp: RespClient, clock: Clock, rate: int = 1, burst: int = 10) -> SyncedRateLimiter:
    policy = RateLimitPolicy(replenish_rate=rate, burst_capacity=burst, mode="synced")
    return SyncedRateLimiter(resp, policy, Syncer(), clock=clock)


async def test_a_known_key_is_decided_without_redis_and_an_unknown_one_is_read_first(
    resp: RespClient,
) -> None:
    limiter = synced(resp, Clock())
    assert limiter.decide("r", "addr:a") is None  # never seen: Redis first
    first = await limiter.check("r", "addr:a")
    assert first.allowed
    assert first.remaining == 9
    decisions = [limiter.decide("r", "addr:a") for _ in range(12)]
    assert [d.allowed for d in decisions if d is not None] == [True] * 9 + [False] * 3
    refused = decisions[-1]
    assert refused is not None
    assert refused.retry_after == 1


async def test_what_one_process_spent_is_seen_by_the_next_after_a_sync(
    resp: RespClient, resp2: RespClient
) -> None:
    clock = Clock()
    a, b = synced(resp, clock), synced(resp2, clock)
    assert (await a.check("r", "addr:x")).allowed
    for _ in range(9):
        assert a.decide("r", "addr:x") is not None
    await a.sync()  # Redis now holds 0 (within the refill of the test's real time)
    decision = await b.check("r", "addr:x")
    assert not decision.allowed


async def test_simultaneous_first_bursts_over_admit_by_at_most_the_bound_then_owe_it(
    resp: RespClient, resp2: RespClient
) -> None:
    """Two processes that both read a full bucket before either syncs: (N-1)*B over, then debt."""
    clock = Clock()
    a, b = synced(resp, clock), synced(resp2, clock)
    assert (await a.check("r", "addr:y")).allowed
    assert (await b.check("r", "addr:y")).allowed
    admitted = 2
    for limiter in (a, b):
        for _ in range(20):
            decision = limiter.decide("r", "addr:y")
            assert decision is not None
            admitted += decision.allowed
    burst, processes = 10, 2
    assert admitted == burst * processes  # exact would be 10: (N-1)*B = 10 over
    await a.sync()
    await b.sync()
    assert not a.decide("r", "addr:y").allowed  # type: ignore[union-attr]
    assert not b.decide("r", "addr:y").allowed  # type: ignore[union-attr]
    # Redis holds the debt: a newcomer waits until the refill (1 a second) pays it.
    newcomer = await synced(resp, clock).check("r", "addr:y")
    assert not newcomer.allowed
    assert newcomer.retry_after >= 10


async def test_the_policy_knows_its_mode_and_rejects_others() -> None:
    policy = build_policy(
        RateLimitPolicy, {"replenish_rate": 5, "burst_capacity": 5, "mode": "synced"}
    )
    assert policy.mode == "synced"
    assert policy.sync_interval == 0.005
    with pytest.raises(SettingsError, match="mode"):
        RateLimitPolicy(mode="eventually")
    with pytest.raises(SettingsError, match="sync_interval"):
        RateLimitPolicy(mode="synced", sync_interval=5.0)


async def test_the_factory_makes_the_limiter_of_the_mode(resp: RespClient) -> None:
    make = limiter_factory(resp, Syncer())
    assert isinstance(make(RateLimitPolicy(mode="synced")), SyncedRateLimiter)
    assert not isinstance(make(RateLimitPolicy()), SyncedRateLimiter)


async def test_the_syncer_charges_redis_by_itself_after_its_interval(
    resp: RespClient, resp2: RespClient
) -> None:
    from core.testing import wait_until

    syncer = Syncer()
    syncer.start()
    try:
        policy = RateLimitPolicy(replenish_rate=1, burst_capacity=10, mode="synced")
        a = SyncedRateLimiter(resp, policy, syncer)
        assert (await a.check("r", "addr:z")).allowed
        for _ in range(9):
            a.decide("r", "addr:z")
        b = synced(resp2, Clock())

        async def spent() -> bool:
            b.buckets.clear()  # read Redis afresh each time
            return not (await b.check("r", "addr:z")).allowed

        await wait_until(spent, timeout=5, message="the syncer charged Redis")
    finally:
        await syncer.stop()
