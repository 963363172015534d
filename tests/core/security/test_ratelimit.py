from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from core.errors import SettingsError
from core.redis import Redis, connect
from core.routes.parse import build_policy
from core.security.ratelimit import KEY_PREFIX, RateLimiter, RateLimitPolicy, rate_key
from core.security.resp import RespClient
from core.testing import RedisServer, wait_until

T0 = 1_800_000_000.0


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[RespClient]:
    client = RespClient(redis_url)
    yield client
    await client.close()


@pytest.fixture
async def inspect(redis_url: str) -> AsyncIterator[Redis]:
    """An ordinary client, to look at what the limiter stored."""
    client = connect(redis_url)
    yield client
    await client.aclose()


async def test_exactly_the_burst_passes_under_concurrent_requests(redis: RespClient) -> None:
    limiter = RateLimiter(redis, replenish_rate=1, burst_capacity=10)
    decisions = await asyncio.gather(
        *(limiter.check("orders", "user:u-1", now=T0) for _ in range(50))
    )
    assert sum(d.allowed for d in decisions) == 10
    assert sorted(d.remaining for d in decisions if d.allowed) == list(range(10))
    assert (limiter.allowed, limiter.denied) == (10, 40)


async def test_buckets_are_per_route_and_per_key(redis: RespClient, inspect: Redis) -> None:
    limiter = RateLimiter(redis, replenish_rate=1, burst_capacity=1)
    assert (await limiter.check("orders", "user:a", now=T0)).allowed
    assert not (await limiter.check("orders", "user:a", now=T0)).allowed
    assert (await limiter.check("orders", "user:b", now=T0)).allowed
    assert (await limiter.check("products", "user:a", now=T0)).allowed
    assert await inspect.exists(f"{KEY_PREFIX}orders:user:a")
    assert 1 <= await inspect.ttl(f"{KEY_PREFIX}orders:user:a") <= 2


async def test_refill_at_the_replenish_rate_up_to_the_burst(redis: RespClient) -> None:
    limiter = RateLimiter(redis, replenish_rate=2, burst_capacity=4)
    for _ in range(4):
        assert (await limiter.check("r", "k", now=T0)).allowed
    denied = await limiter.check("r", "k", now=T0 + 0.4)  # 0.8 token
    assert (denied.allowed, denied.remaining, denied.retry_after) == (False, 0, 1)
    assert (await limiter.check("r", "k", now=T0 + 0.5)).allowed  # 1.0 token
    assert not (await limiter.check("r", "k", now=T0 + 0.5)).allowed
    after_an_hour = await limiter.check("r", "k", now=T0 + 3600)
    assert (after_an_hour.allowed, after_an_hour.remaining) == (True, 3)  # capped at 4


async def test_requested_tokens_are_taken_at_once(redis: RespClient) -> None:
    limiter = RateLimiter(redis, replenish_rate=1, burst_capacity=10, requested_tokens=4)
    first = await limiter.check("r", "k", now=T0)
    second = await limiter.check("r", "k", now=T0)
    assert (first.remaining, second.remaining) == (6, 2)
    denied = await limiter.check("r", "k", now=T0)
    assert (denied.allowed, denied.remaining, denied.retry_after) == (False, 2, 2)


async def test_refill_on_the_redis_clock(redis: RespClient) -> None:
    limiter = RateLimiter(redis, replenish_rate=20, burst_capacity=1)
    assert (await limiter.check("r", "k")).allowed
    assert not (await limiter.check("r", "k")).allowed
    await wait_until(lambda: _allowed(limiter), timeout=5, message="a token back")


async def _allowed(limiter: RateLimiter) -> bool:
    return (await limiter.check("r", "k")).allowed


async def test_headers_and_problem_as_spring_cloud_gateway_sends_them(redis: RespClient) -> None:
    limiter = RateLimiter(redis, replenish_rate=5, burst_capacity=2)
    allowed = await limiter.check("r", "k", now=T0)
    assert limiter.headers(allowed) == {
        "X-RateLimit-Remaining": "1",
        "X-RateLimit-Replenish-Rate": "5",
        "X-RateLimit-Burst-Capacity": "2",
        "X-RateLimit-Requested-Tokens": "1",
    }
    await limiter.check("r", "k", now=T0)
    denied = await limiter.check("r", "k", now=T0)
    assert limiter.headers(denied)["X-RateLimit-Remaining"] == "0"
    assert limiter.headers(denied)["Retry-After"] == "1"
    problem = limiter.problem(denied)
    assert problem.status == 429
    assert problem.headers["Retry-After"] == "1"
    assert problem.body()["detail"] == (
        "rate limit exceeded: 5 requests a second, bursts of 2; retry in 1 s"
    )


def test_rate_key_prefers_the_user_id() -> None:
    assert rate_key("u-1", "10.0.0.1") == "user:u-1"
    assert rate_key(None, "10.0.0.1") == "addr:10.0.0.1"


async def test_configuration_is_checked(redis: RespClient) -> None:
    with pytest.raises(SettingsError, match="rate_limit: replenish_rate"):
        RateLimiter(redis, replenish_rate=0, burst_capacity=1)
    with pytest.raises(SettingsError, match="requested_tokens"):
        RateLimiter(redis, replenish_rate=1, burst_capacity=2, requested_tokens=3)
    with pytest.raises(ValueError, match="burst_capacity"):
        build_policy(RateLimitPolicy, {"replenish_rate": 1, "burst_capacity": 0})


async def test_a_route_policy_makes_its_limiter(redis: RespClient) -> None:
    policy = build_policy(
        RateLimitPolicy, {"replenish_rate": 1, "burst_capacity": 60, "requested_tokens": 60}
    )
    limiter = RateLimiter.for_policy(redis, policy)  # one request a minute
    assert (await limiter.check("r", "k", now=T0)).allowed
    denied = await limiter.check("r", "k", now=T0 + 30)
    assert (denied.allowed, denied.retry_after) == (False, 30)
    assert (await limiter.check("r", "k", now=T0 + 60)).allowed


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("fail_open", [True, False])
async def test_redis_down_fails_open_or_closed_then_heals(
    redis_factory: Callable[..., RedisServer], fail_open: bool
) -> None:
    server = redis_factory()
    client = RespClient(server.url, connect_timeout=0.5)
    clock = Clock()
    limiter = RateLimiter(client, 1, 1, fail_open=fail_open, retry_interval=1.0, clock=clock)
    try:
        assert (await limiter.check("r", "k", now=T0)).allowed
        server.kill()
        decisions = [await limiter.check("r", "k", now=T0) for _ in range(3)]
        assert {(d.allowed, d.remaining, d.unavailable) for d in decisions} == {
            (fail_open, -1, True)
        }
        assert (limiter.failed_open, limiter.failed_closed) == ((3, 0) if fail_open else (0, 3))
        problem = limiter.problem(decisions[0])
        assert problem.status == 503
        if not fail_open:
            assert limiter.headers(decisions[0])["Retry-After"] == "1"
        server.start()
        clock.now += 1.0  # the limiter asks Redis again after retry_interval
        decision = await limiter.check("r", "k", now=T0)
        assert (decision.allowed, decision.unavailable) == (True, False)  # a new, full bucket
    finally:
        await client.close()
