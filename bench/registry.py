"""``python -m bench registry [--quick]``: how fast the registry's changes reach watchers.

Measures, on a private Redis and a real registry process:

1. graceful deregistration until a Watcher in another process sees it
   (p50/p99 over many trials; target p99 < 50 ms);
2. an instance that stops heartbeating until the watcher sees it ``down``,
   against its TTL (target: TTL + 1 s);
3. a full re-list (snapshot read and parsed) with 10,000 instances
   (target < 200 ms);
4. the heartbeat rate that the registry (HTTP) and Redis (direct, as
   ``Registration`` does) sustain with 32 concurrent clients.

Times across processes use the wall clock of this one machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench._run import Run
from core.redis import connect
from core.registry.discovery import Watcher
from core.registry.store import Instance, RegistryStore
from core.testing import RedisServer, free_port, wait_until

RESULTS = Path(__file__).parent / "results"
#: How long a run takes with the defaults (python -m bench --help).
DURATION = "about 1.5 min"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


# --------------------------------------------------------------------------- child watcher


async def watch(url: str) -> None:
    """Child mode: print ``<type> <id> <wall time>`` for every change the watcher applies."""
    client = connect(url)
    watcher = Watcher(client, resync_interval=3600)
    known: dict[str, set[str]] = {}

    def changed(services: set[str]) -> None:
        now = time.time()
        for service in services:
            current = {i.id for i in watcher.all_instances(service)}
            before = known.get(service, set())
            for iid in current - before:
                print(f"up {iid} {now:.6f}", flush=True)
            for iid in before - current:
                print(f"gone {iid} {now:.6f}", flush=True)
            known[service] = current

    watcher.on_change(changed)
    await watcher.start(wait=10)
    print("ready", flush=True)
    await asyncio.Event().wait()


class ChildWatcher:
    """A watcher process; ``await seen(kind, id)`` returns the wall time it applied that change."""

    def __init__(self, url: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.registry", "--watch", url],
            stdout=subprocess.PIPE,
            cwd=str(Path(__file__).resolve().parent.parent),
        )
        self.events: dict[tuple[str, str], float] = {}
        self.ready = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        assert self.proc.stdout is not None
        stdout = self.proc.stdout

        async def read() -> None:
            while True:
                line = await loop.run_in_executor(None, stdout.readline)
                if not line:
                    return
                parts = line.decode().split()
                if parts == ["ready"]:
                    self.ready.set()
                elif len(parts) == 3:
                    self.events[(parts[0], parts[1])] = float(parts[2])

        self._reader = asyncio.create_task(read())
        await asyncio.wait_for(self.ready.wait(), 20)

    async def seen(self, kind: str, iid: str, timeout: float = 30.0) -> float:
        return float(
            await wait_until(lambda: self.events.get((kind, iid)), timeout, 0.001, f"{kind} {iid}")
        )

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


# --------------------------------------------------------------------------- measurements


async def deregistration(store: RegistryStore, child: ChildWatcher, trials: int) -> dict[str, Any]:
    latencies = []
    for n in range(trials):
        iid = f"dereg-{n}"
        await store.register(Instance(service="bench", id=iid, host="127.0.0.1", port=9000, ttl=60))
        await child.seen("up", iid)
        t0 = time.time()
        await store.deregister("bench", iid)
        latencies.append((await child.seen("gone", iid)) - t0)
    ms = [x * 1000 for x in latencies]
    return {
        "trials": trials,
        "p50_ms": round(pct(ms, 50), 3),
        "p99_ms": round(pct(ms, 99), 3),
        "max_ms": round(max(ms), 3),
        "target_p99_ms": 50,
    }


async def expiry(store: RegistryStore, child: ChildWatcher, ttl: int, count: int) -> dict[str, Any]:
    """``count`` instances registered once with ``ttl``, never heartbeated."""
    started = {}
    for n in range(count):
        iid = f"crash-{ttl}-{n}"
        await store.register(
            Instance(service="bench", id=iid, host="127.0.0.1", port=9000, ttl=ttl)
        )
        started[iid] = time.time()
    delays = []
    for iid, t0 in started.items():
        delays.append((await child.seen("gone", iid, timeout=ttl + 30)) - t0)
    over = [d - ttl for d in delays]
    return {
        "instances": count,
        "ttl_s": ttl,
        "after_ttl_p50_ms": round(pct(over, 50) * 1000, 1),
        "after_ttl_max_ms": round(max(over) * 1000, 1),
        "target": "TTL + 1 s",
    }


async def relist(url: str, count: int, rounds: int) -> dict[str, Any]:
    client = connect(url)
    store = RegistryStore(client)
    pipe_batch = 500
    for start in range(0, count, pipe_batch):
        await asyncio.gather(
            *(
                store.register(
                    Instance(
                        service=f"svc-{n % 100}", id=f"i-{n}", host="10.0.0.1", port=8000, ttl=300
                    )
                )
                for n in range(start, min(count, start + pipe_batch))
            )
        )
    cold, warm = [], []
    for _ in range(rounds):
        watcher = Watcher(client)  # a new watcher parses every instance
        t0 = time.perf_counter()
        await watcher.relist()
        cold.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        await watcher.relist()  # a resync: unchanged instances are not parsed again
        warm.append((time.perf_counter() - t0) * 1000)
    total = sum(len(v) for v in watcher.services.values())
    await client.aclose()
    return {
        "instances": total,
        "rounds": rounds,
        "cold_p50_ms": round(statistics.median(cold), 1),
        "cold_max_ms": round(max(cold), 1),
        "resync_p50_ms": round(statistics.median(warm), 1),
        "resync_max_ms": round(max(warm), 1),
        "target_ms": 200,
    }


async def heartbeat_rate(
    url: str, registry_url: str, seconds: float, concurrency: int = 32
) -> dict[str, Any]:
    client = connect(url)
    store = RegistryStore(client)
    ids = [f"hb-{n}" for n in range(concurrency)]
    for iid in ids:
        await store.register(Instance(service="hb", id=iid, host="127.0.0.1", port=9000, ttl=300))

    async def direct(iid: str, until: float) -> int:
        done = 0
        while time.perf_counter() < until:
            assert await store.heartbeat("hb", iid)
            done += 1
        return done

    until = time.perf_counter() + seconds
    direct_total = sum(await asyncio.gather(*(direct(i, until) for i in ids)))

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def http(iid: str, until: float) -> int:
            done = 0
            path = f"{registry_url}/v1/services/hb/instances/{iid}/heartbeat"
            while time.perf_counter() < until:
                async with session.put(path) as resp:
                    assert resp.status == 204, resp.status
                done += 1
            return done

        until = time.perf_counter() + seconds
        http_total = sum(await asyncio.gather(*(http(i, until) for i in ids)))
    await client.aclose()
    return {
        "concurrency": concurrency,
        "seconds": seconds,
        "http_per_s": round(http_total / seconds),
        "redis_direct_per_s": round(direct_total / seconds),
        "note": "load generator shares the 2 cores with the registry and Redis",
    }


async def run(quick: bool, progress: Run) -> dict[str, Any]:
    progress.step("start Redis, the registry and a watcher in another process")
    redis = RedisServer().start()
    port = free_port()
    registry = subprocess.Popen(
        [sys.executable, "-m", "registry", "--port", str(port), "--redis-url", redis.url,
         "--log-level", "warning"],
        cwd=str(Path(__file__).resolve().parent.parent),
    )  # fmt: skip
    registry_url = f"http://127.0.0.1:{port}"
    child = ChildWatcher(redis.url)
    try:
        async with aiohttp.ClientSession() as session:

            async def healthy() -> bool:
                try:
                    async with session.get(registry_url + "/health") as r:
                        return r.status == 200
                except aiohttp.ClientError:
                    return False

            await wait_until(healthy, 20, 0.05, "registry healthy")
        await child.start()
        client = connect(redis.url)
        store = RegistryStore(client)
        results: dict[str, Any] = {"quick": quick}
        trials = 50 if quick else 300
        progress.step(f"graceful deregistration -> watcher: {trials} trials")
        results["deregistration"] = await deregistration(store, child, trials)
        ttl, instances = (1, 5) if quick else (10, 20)
        progress.step(f"crashed instances -> down: {instances} instances, TTL {ttl} s")
        results["expiry"] = await expiry(store, child, ttl, instances)
        await client.aclose()
        size, rounds = (1000, 3) if quick else (10_000, 10)
        progress.step(f"full re-list of {size:,} instances: {rounds} rounds")
        results["relist"] = await relist(redis.url, size, rounds)
        seconds = 0.5 if quick else 5.0
        progress.step(f"heartbeats sustained, HTTP and Redis direct: {seconds:g} s each")
        results["heartbeats"] = await heartbeat_rate(redis.url, registry_url, seconds)
        return results
    finally:
        child.close()
        registry.terminate()
        registry.wait(10)
        redis.close()


def report(results: dict[str, Any]) -> None:
    d, e, r, h = (results[k] for k in ("deregistration", "expiry", "relist", "heartbeats"))
    rows = [
        ("graceful deregistration -> watcher (other process)",
         f"p50 {d['p50_ms']} ms, p99 {d['p99_ms']} ms, max {d['max_ms']} ms ({d['trials']} trials)",
         "p99 < 50 ms"),
        ("crashed instance -> watcher sees down",
         f"TTL {e['ttl_s']} s + p50 {e['after_ttl_p50_ms']} ms, max +{e['after_ttl_max_ms']} ms "
         f"({e['instances']} instances)", "TTL + 1 s"),
        (f"full re-list, {r['instances']} instances, new watcher",
         f"p50 {r['cold_p50_ms']} ms, max {r['cold_max_ms']} ms ({r['rounds']} rounds)", "< 200 ms"),
        (f"full re-list, {r['instances']} instances, resync",
         f"p50 {r['resync_p50_ms']} ms, max {r['resync_max_ms']} ms", "< 200 ms"),
        ("heartbeats sustained (32 clients)",
         f"HTTP {h['http_per_s']}/s, Redis direct {h['redis_direct_per_s']}/s", ""),
    ]  # fmt: skip
    width = max(len(r[0]) for r in rows)
    print(f"{'measure'.ljust(width)}  result  [target]")
    for name, value, target in rows:
        print(
            f"{name.ljust(width)}  {value}  [{target}]"
            if target
            else f"{name.ljust(width)}  {value}"
        )
    print(Run.load_line(results["load"]))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench registry", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a few seconds, smaller sizes")
    parser.add_argument("--watch", metavar="REDIS_URL", help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, default=RESULTS / "registry.json")
    args = parser.parse_args(argv)
    if args.watch:
        asyncio.run(watch(args.watch))
        return 0
    progress = Run("registry", quick=args.quick, steps=5)
    results = asyncio.run(run(args.quick, progress))
    results["machine"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    results["load"] = progress.machine()
    report(results)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
