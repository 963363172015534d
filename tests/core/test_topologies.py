"""What only Sentinel or Cluster can show: the key layout's slots, failover, shards.

These tests start their own Sentinel set or Cluster (core.testing), whatever
``--redis-topology`` says; the registry, config, bus and rate-limit suites
run against each topology through ``make test-sentinel`` and ``make test-cluster``.
"""

from __future__ import annotations

import asyncio
import time

from core.config.store import CHANNEL as CONFIG_CHANNEL
from core.config.store import ConfigStore, doc_key, history_key
from core.events.bus import Keys
from core.redis import connect
from core.registry import store as registry_store
from core.security.ratelimit import RateLimiter, bucket_key
from core.security.resp import RespClient, key_slot
from core.testing import ClusterTopology, SentinelTopology, wait_until


def test_keys_one_script_touches_share_a_slot_and_streams_spread() -> None:
    registry = {key_slot(k) for k in registry_store.service_keys("customers")}
    registry |= {key_slot(k) for k in registry_store.service_keys("billing")}
    for key in ("DEADLINES_KEY", "REV_KEY", "EVENTS_KEY", "EPOCH_KEY"):  # the stream's reads too
        registry.add(key_slot(getattr(registry_store, key)))
    assert len(registry) == 1
    config = {key_slot(k) for k in (doc_key("a"), history_key("b"), CONFIG_CHANNEL)}
    assert len(config) == 1
    keys = Keys()
    assert key_slot(keys.retry("billing")) == key_slot(keys.dead("billing"))
    streams = {key_slot(keys.stream(f"type{i}")) for i in range(20)}
    assert len(streams) > 15  # spread, not one tag for all
    buckets = {key_slot(bucket_key("orders", f"addr:10.0.0.{i}")) for i in range(20)}
    assert len(buckets) > 15


def test_key_slot_matches_redis() -> None:
    # Values from the Redis Cluster specification and CLUSTER KEYSLOT.
    assert key_slot("123456789") == 0x31C3 % 16384
    assert key_slot("{user1000}.following") == key_slot("{user1000}.followers")
    assert key_slot("foo{}{bar}") == key_slot(b"foo{}{bar}")


async def test_a_config_write_behind_sentinel_is_on_the_replica_once_acknowledged(
    sentinel_topology: SentinelTopology,
) -> None:
    redis = connect(sentinel_topology.url)
    try:
        store = ConfigStore(redis)
        assert store.replica_wait.enabled
        result = await store.write("billing", {"currency": "CHF"})
        replica = next(s for s in sentinel_topology.servers if s is not sentinel_topology.primary())
        # Read at once, without waiting: WAIT returned only after the replica had it.
        stored = replica.client().hget(doc_key("billing"), "version")
        assert stored == str(result.version)
    finally:
        await redis.aclose()


async def test_the_rate_limit_connection_follows_a_new_primary_after_kill_9(
    sentinel_topology: SentinelTopology,
) -> None:
    client = RespClient(sentinel_topology.url, connect_timeout=0.5)
    limiter = RateLimiter(client, replenish_rate=1000, burst_capacity=1000, retry_interval=0.05)
    try:
        assert (await limiter.check("r", "k")).remaining == 999
        old = sentinel_topology.kill_primary()
        started = time.monotonic()

        async def decided_by_redis() -> bool:
            return not (await limiter.check("r", "k")).unavailable

        await wait_until(decided_by_redis, timeout=30, interval=0.05, message="a new primary")
        took = time.monotonic() - started
        assert sentinel_topology.primary() is not old
        print(f"rate limiter back on the promoted replica {took:.1f} s after kill -9")
    finally:
        await client.close()


async def test_rate_limit_buckets_spread_over_the_cluster_shards(
    cluster_topology: ClusterTopology,
) -> None:
    client = RespClient(cluster_topology.url)
    limiter = RateLimiter(client, replenish_rate=1, burst_capacity=2)
    try:
        keys = [f"addr:10.0.0.{i}" for i in range(30)]
        decisions = await asyncio.gather(*(limiter.check("orders", k) for k in keys * 3))
        # Each key had two tokens: the third request of each is refused, on whatever shard.
        assert sum(d.allowed for d in decisions) == 60
        assert not any(d.unavailable for d in decisions)
        per_node = [s.client().dbsize() for s in cluster_topology.servers]
        assert sum(per_node) == 30
        assert all(n > 0 for n in per_node), per_node
        assert client.connections >= len(cluster_topology.servers)
    finally:
        await client.close()
