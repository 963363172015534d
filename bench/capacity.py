"""``python -m bench capacity [--quick]``: what one Redis core costs per Essaim operation.

The inputs of the capacity model in docs/scale-out.md. For each operation
that puts load on Redis, it runs the operation many times against a private
Redis (``core.testing.RedisServer``, one node), with 32 calls in flight, and
reads the server's own CPU time (``INFO cpu``: ``used_cpu_user`` +
``used_cpu_sys``) before and after. CPU seconds per operation is what one
Redis core spends on it, so ``1 / that`` is how many such operations a
second one Redis core sustains, whatever else runs on the machine (the
clients' time is not counted; a busy machine slows the run, not the
per-operation figure, though caches shared with other work cost a little).
That CPU time includes Redis's network work: a read and a write system call
per command when commands arrive one at a time, as they do from clients
slowed by a busy machine, so it is an upper bound for a server that
receives many commands per read. A snapshot runs with 2 in flight (each
holds Redis for tens of milliseconds).

Operations, each through the code that issues it in production:

- ``heartbeat``: ``RegistryStore.heartbeat`` (one script) with ``--instances``
  registered, 100 services;
- ``register``: ``RegistryStore.register`` (a registration, an event, a publish);
- ``list one service``: ``RegistryStore.listing`` of a service of 10 instances
  (what ``GET /v1/services/{name}`` does);
- ``snapshot``: ``RegistryStore.snapshot`` of every instance (what a watcher's
  re-list costs Redis), reported per snapshot;
- ``publish event``: ``EventBus.publish_fields`` in batches of 100 (what the
  outbox relay sends), per event;
- ``consume event``: ``XREADGROUP`` of 100 and ``XACK`` of them (what a
  consumer sends), per event;
- ``rate-limit decision``: ``RateLimiter.check`` over the gateway's
  pipelined connection, 1,000 distinct keys;
- ``config read``: ``ConfigStore.merged`` (one script, three documents).

Results: a table on stdout and JSON in ``--output``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

from core.config.store import ConfigStore
from core.events.bus import Event, EventBus, Keys
from core.redis import Redis, connect
from core.registry.store import Instance, RegistryStore
from core.security.ratelimit import RateLimiter
from core.security.resp import RespClient
from core.testing import RedisServer

RESULTS = Path(__file__).parent / "results"


async def redis_cpu(redis: Redis) -> float:
    info = await redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def measure(
    redis: Redis,
    name: str,
    count: int,
    op: Callable[[int], Awaitable[Any]],
    per: int = 1,
    concurrency: int = 32,
) -> dict[str, Any]:
    """Run ``op(i)`` for i in range(count), ``concurrency`` in flight; Redis CPU per unit.

    ``per`` is how many units one call is (events in a batch).
    """
    before = await redis_cpu(redis)
    started = time.perf_counter()
    next_i = 0

    async def worker() -> None:
        nonlocal next_i
        while next_i < count:
            i = next_i
            next_i += 1
            await op(i)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    cpu = await redis_cpu(redis) - before
    units = count * per
    us = cpu / units * 1e6
    return {
        "operation": name,
        "units": units,
        "redis_cpu_us": round(us, 2),
        "per_redis_core_per_s": round(1e6 / us) if us > 0 else None,
        "observed_per_s": round(units / wall),
    }


async def run(quick: bool, instances: int) -> dict[str, Any]:
    server = RedisServer().start()
    redis = connect(server.url, timeout=10.0, max_connections=64)
    resp = RespClient(server.url)
    rows: list[dict[str, Any]] = []
    n = 2_000 if quick else 20_000
    try:
        store = RegistryStore(redis)
        services = 100
        for i in range(instances):
            await store.register(
                Instance(f"svc{i % services}", f"i{i}", "127.0.0.1", 10_000 + i % 50_000, ttl=3600)
            )
        rows.append(
            await measure(
                redis, "heartbeat", n,
                lambda i: store.heartbeat(f"svc{i % services}", f"i{i % instances}"),
            )
        )  # fmt: skip
        rows.append(
            await measure(
                redis, "register", n // 4,
                lambda i: store.register(
                    Instance(f"svc{i % services}", f"i{i % instances}", "127.0.0.1", 9, ttl=3600)
                ),
            )
        )  # fmt: skip
        small = RegistryStore(redis)
        for i in range(10):
            await small.register(Instance("small", f"s{i}", "127.0.0.1", 9000 + i, ttl=3600))
        rows.append(
            await measure(
                redis, "list one service (10 instances)", n, lambda i: small.listing("small")
            )
        )
        rows.append(
            await measure(
                redis, f"snapshot ({instances} instances)", 10 if quick else 50,
                lambda i: store.snapshot(),
                concurrency=2,
            )
        )  # fmt: skip

        bus = EventBus(redis)
        batch = [("bench.tick", Event("bench.tick", "bench", i).to_fields()) for i in range(100)]
        batches = n // 100
        rows.append(
            await measure(
                redis,
                "publish event (batches of 100)",
                batches,
                lambda i: bus.publish_fields(batch),
                per=100,
            )
        )
        stream = Keys().stream("bench.tick")
        await redis.xgroup_create(stream, "bench", id="0")
        read_count = 0

        async def consume(i: int) -> None:
            nonlocal read_count
            reply: Any = await redis.xreadgroup("bench", f"c{i % 32}", {stream: ">"}, count=100)
            ids = [entry_id for _, entries in reply or [] for entry_id, _ in entries]
            if ids:
                read_count += len(ids)
                await redis.xack(stream, "bench", *ids)

        consumed = await measure(redis, "consume event (read 100, ack)", batches, consume, per=100)
        consumed["units"] = read_count
        rows.append(consumed)

        limiter = RateLimiter(resp, replenish_rate=1000, burst_capacity=1000)
        rows.append(
            await measure(
                redis,
                "rate-limit decision",
                n,
                lambda i: limiter.check("route", f"addr:10.0.{i % 1000 // 256}.{i % 256}"),
            )
        )
        config = ConfigStore(redis)
        for name in ("application", "billing", "billing-prod"):
            await config.write(name, {"bench": {"name": name, "values": list(range(20))}})
        rows.append(
            await measure(
                redis, "config read (3 documents)", n, lambda i: config.merged("billing", "prod")
            )
        )
    finally:
        await resp.close()
        await redis.aclose()
        server.close()
    return {
        "quick": quick,
        "instances": instances,
        "load_average": os.getloadavg(),
        "cpu": _cpu_model(),
        "rows": rows,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def report(results: dict[str, Any]) -> str:
    load = ", ".join(f"{x:.2f}" for x in results["load_average"])
    lines = [
        f"Redis CPU per operation ({results['cpu']}; load average {load})",
        f"{'operation':<38} {'Redis CPU':>10} {'per Redis core':>16} {'observed':>10}",
    ]
    for row in results["rows"]:
        per_core = row["per_redis_core_per_s"]
        lines.append(
            f"{row['operation']:<38} {row['redis_cpu_us']:>8.1f}us "
            f"{per_core if per_core is not None else '-':>14}/s {row['observed_per_s']:>8}/s"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench capacity", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer calls, 1,000 instances")
    parser.add_argument("--instances", type=int, default=0, help="registered (default 10,000)")
    parser.add_argument("--output", type=Path, default=RESULTS / "capacity.json")
    args = parser.parse_args(argv)
    instances = args.instances or (1_000 if args.quick else 10_000)
    results = asyncio.run(run(args.quick, instances))
    print(report(results))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    return 0
