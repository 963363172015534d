"""``python -m bench failover [--quick]``: kill -9 of the Redis primary under load, behind Sentinel.

Starts a primary, a replica and three Sentinels (``core.testing.SentinelTopology``,
failure detected after 1 s), then, all on ``REDIS_URL=redis+sentinel://...``:
a registry, a config service and a gateway as real processes; an upstream
registered through ``Registration`` (TTL 3 s, heartbeat every second); an
outbox (SQLite) whose relay publishes one event every 20 ms to the bus, and
an idempotent consumer of those events. Load throughout: 8 closed loops of
``GET /echo/ping`` through the gateway, a registry write and read and a
config write every 100 ms each.

After a warm-up it SIGKILLs the primary, waits until everything works again,
stops producing, lets the consumer drain, and prints:

- requests that failed through the gateway (idempotent GETs: target 0, the
  gateway routes on its last snapshot);
- for the registry, config service and event consumption, how long after the
  kill they were last seen failing (0: never failed);
- events produced, handled, lost (committed in the outbox, never handled) and
  handled twice (a redelivery the consumer's idempotency did not catch).

Times are wall clock on this one machine; ``uptime`` beside the figures says how
busy it was.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from core.db import Database
from core.events.bus import Event, EventBus
from core.events.consumer import Consumer
from core.events.outbox import OutboxRelay, add_to_outbox
from core.redis import connect
from core.registry.discovery import Registration
from core.registry.store import Instance
from core.testing import ComponentFactory, SentinelTopology, free_port, wait_until

RESULTS = Path(__file__).parent / "results"


class Probe:
    """Outcomes of one kind of call over time: when it failed, how often it succeeded."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.ok = 0
        self.failed: list[float] = []

    def record(self, success: bool) -> None:
        if success:
            self.ok += 1
        else:
            self.failed.append(time.monotonic())

    def down_after(self, killed_at: float) -> float:
        """Seconds from the kill to the last failure (0 when it never failed after the kill)."""
        after = [t for t in self.failed if t >= killed_at]
        return max(after) - killed_at if after else 0.0


async def _upstream() -> tuple[web.AppRunner, int]:
    async def ping(request: web.Request) -> web.Response:
        return web.json_response({"pong": True})

    app = web.Application()
    app.router.add_get("/ping", ping)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


async def run(quick: bool) -> dict[str, Any]:
    warmup = 2.0 if quick else 5.0
    topology = SentinelTopology().start()
    workdir = Path(tempfile.mkdtemp(prefix="essaim-failover-"))
    components = ComponentFactory(workdir)
    stopping = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    clients: list[Any] = []
    try:
        url = topology.url
        env = {"REDIS_URL": url}
        config_dir = workdir / "config"
        config_dir.mkdir()
        (config_dir / "application.toml").write_text("[bench]\nn = 0\n")
        configsvc = await components.start("configsvc", "--config-dir", str(config_dir), env=env)
        registry = await components.start("registry", env=env)
        admin = free_port()
        gateway = await components.start(
            "gateway", "--admin-port", str(admin), env=env, health_port=admin
        )
        runner, port = await _upstream()
        redis = connect(url)
        clients.append(redis)
        registration = Registration(
            redis, Instance(service="echo", id="e1", host="127.0.0.1", port=port, ttl=3)
        )
        await registration.start(wait=10)

        producer_db = await Database.open(workdir, "producer")
        consumer_db = await Database.open(workdir, "consumer")
        bus_redis = connect(url)
        clients.append(bus_redis)
        relay = OutboxRelay(producer_db, EventBus(bus_redis), poll_interval=0.2)
        await relay.start()
        produced: dict[int, float] = {}
        handled: dict[int, list[float]] = {}

        def record(conn: sqlite3.Connection, event: Event) -> None:
            handled.setdefault(int(event.data), []).append(time.monotonic())

        consumer_redis = connect(url)
        clients.append(consumer_redis)
        consumer = Consumer(
            consumer_redis, consumer_db, group="bench", consumer="c1", types=["bench.tick"],
            handler=record, visibility_timeout=3.0, block_ms=500,
        )  # fmt: skip
        await consumer.start(wait=10)

        gets, registry_probe, config_probe = Probe("gateway"), Probe("registry"), Probe("config")
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        await wait_until(
            lambda: _get_ok(session, f"{gateway.url}/echo/ping"), 20, 0.1, "echo routable"
        )

        async def load() -> None:
            while not stopping.is_set():
                gets.record(await _get_ok(session, f"{gateway.url}/echo/ping"))

        async def registry_loop() -> None:
            body = {"host": "127.0.0.1", "port": 9, "ttl": 30}
            while not stopping.is_set():
                try:
                    async with session.put(
                        f"{registry.url}/v1/services/probe/instances/p1", json=body
                    ) as resp:
                        wrote = resp.status in (200, 201)
                    async with session.get(f"{registry.url}/v1/services/echo") as resp:
                        listed = resp.status == 200 and bool((await resp.json())["instances"])
                    registry_probe.record(wrote and listed)
                except (aiohttp.ClientError, TimeoutError):
                    registry_probe.record(False)
                await asyncio.sleep(0.1)

        async def config_loop() -> None:
            n = 0
            while not stopping.is_set():
                n += 1
                try:
                    async with session.put(
                        f"{configsvc.url}/v1/documents/bench", json={"bench": {"n": n}}
                    ) as resp:
                        config_probe.record(resp.status in (200, 201))
                except (aiohttp.ClientError, TimeoutError):
                    config_probe.record(False)
                await asyncio.sleep(0.1)

        async def produce() -> None:
            n = 0
            while not stopping.is_set():
                n += 1
                event = Event("bench.tick", "bench", n)
                await producer_db.transaction(lambda c, e=event: add_to_outbox(c, e))  # type: ignore[misc]
                produced[n] = time.monotonic()
                await asyncio.sleep(0.02)

        tasks = [asyncio.create_task(load()) for _ in range(8)]
        tasks += [asyncio.create_task(f()) for f in (registry_loop, config_loop, produce)]
        await asyncio.sleep(warmup)
        killed = topology.kill_primary()
        killed_at = time.monotonic()

        def consuming_again() -> bool:
            return any(t >= killed_at and handled.get(n) for n, t in produced.items())

        async def all_back() -> bool:
            now = time.monotonic()
            recent = [p for p in (gets, registry_probe, config_probe) if p.failed]
            return (
                consuming_again()
                and all(now - p.failed[-1] > 1.0 for p in recent)
                and registry_probe.ok > 0
            )

        await wait_until(all_back, 60, 0.1, "registry, config and events back")
        recovered_after = time.monotonic() - killed_at
        stopping.set()
        await asyncio.gather(*tasks)
        tasks = []
        await wait_until(lambda: set(produced) <= set(handled), 30, 0.1, "every event handled")
        first_after = min(
            (min(handled[n]) for n, t in produced.items() if t >= killed_at and n in handled),
            default=killed_at,
        )
        results: dict[str, Any] = {
            "quick": quick,
            "load_average": os.getloadavg(),
            "sentinel_down_after_ms": topology.down_after_ms,
            "killed_port": killed.port,
            "promoted_port": topology.primary().port,
            "recovered_after_s": round(recovered_after, 2),
            "gateway_gets": {"ok": gets.ok, "failed": len(gets.failed)},
            "registry_down_s": round(registry_probe.down_after(killed_at), 2),
            "registry_calls": {"ok": registry_probe.ok, "failed": len(registry_probe.failed)},
            "config_down_s": round(config_probe.down_after(killed_at), 2),
            "config_writes": {"ok": config_probe.ok, "failed": len(config_probe.failed)},
            "events": {
                "produced": len(produced),
                "handled": len(handled),
                "lost": len(set(produced) - set(handled)),
                "handled_twice": sum(1 for times in handled.values() if len(times) > 1),
                "redeliveries_skipped": consumer.duplicates,
                "consumption_back_s": round(first_after - killed_at, 2),
            },
            "registrations": registration.registrations,
        }
        await session.close()
        await consumer.stop()
        await relay.stop()
        await registration.stop()
        await producer_db.close()
        await consumer_db.close()
        await runner.cleanup()
        return results
    finally:
        stopping.set()
        for task in tasks:
            task.cancel()
        for client in clients:
            with contextlib.suppress(Exception):
                await client.aclose()
        components.close()
        topology.close()


async def _get_ok(session: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with session.get(url) as resp:
            await resp.read()
            return resp.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


def report(r: dict[str, Any]) -> str:
    e = r["events"]
    load = ", ".join(f"{x:.2f}" for x in r["load_average"])
    return "\n".join([
        f"Redis primary kill -9 behind Sentinel (down-after {r['sentinel_down_after_ms']} ms),"
        f" load average {load}",
        f"  gateway GETs during the run: {r['gateway_gets']['ok']} ok,"
        f" {r['gateway_gets']['failed']} failed (target 0)",
        f"  registry writes and reads failing until {r['registry_down_s']:.2f} s after the kill"
        f" ({r['registry_calls']['failed']} failed calls); the upstream registered"
        f" {r['registrations']} time(s) in all",
        f"  config writes failing until {r['config_down_s']:.2f} s after the kill"
        f" ({r['config_writes']['failed']} failed writes)",
        f"  event consumption back {e['consumption_back_s']:.2f} s after the kill",
        f"  events: {e['produced']} produced, {e['handled']} handled, {e['lost']} lost,"
        f" {e['handled_twice']} handled twice, {e['redeliveries_skipped']} redeliveries skipped",
        f"  everything back {r['recovered_after_s']:.2f} s after the kill",
    ])  # fmt: skip


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench failover", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a shorter warm-up")
    parser.add_argument("--output", type=Path, default=RESULTS / "failover.json")
    args = parser.parse_args(argv)
    results = asyncio.run(run(args.quick))
    print(report(results))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    return 0
