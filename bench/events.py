"""``python -m bench events [--quick] [--output PATH]``: events end to end through the bus.

Measures how many events per second go from the producer to a handled event,
and the latency of each, in two ways of producing:

- ``publish``: :meth:`core.events.bus.EventBus.publish` (one ``XADD``);
- ``outbox``: a :meth:`core.db.Database.transaction` writing a row and its
  event with :func:`core.events.outbox.add_to_outbox`, published by the
  :class:`core.events.outbox.OutboxRelay` the commit wakes.

The consumer is a :class:`core.events.consumer.Consumer` with a transactional
handler (it records the event as handled and bumps a counter row in its own
SQLite database). Latency runs from just before the publish call (or the
transaction) to the handler, measured with one clock since everything runs in
one process: producer, relay and consumer share one event loop (uvloop when
installed), the two databases have a thread each, and a private Redis runs
beside. Each way is run at maximum rate (``concurrency`` producers in a
closed loop: throughput, with queueing in the latency) and at a fixed rate
(the latency of an unloaded bus). Results are printed as a table and written
to ``bench/results/events.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench._run import Run
from core import redis as core_redis
from core.db import Database
from core.events.bus import Event, EventBus
from core.events.consumer import Consumer
from core.events.outbox import OutboxRelay, add_to_outbox
from core.runner import install_uvloop
from core.testing import RedisServer

RESULTS = Path(__file__).resolve().parent / "results" / "events.json"
#: How long a run takes with the defaults (python -m bench --help).
DURATION = "about 1 min"

MIGRATIONS = ("CREATE TABLE items (id INTEGER PRIMARY KEY, t REAL NOT NULL)",)
CONSUMER_MIGRATIONS = ("CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",)


@dataclass
class Result:
    scenario: str
    mode: str
    events: int
    seconds: float
    events_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


class Sink:
    """The consumer side: handles events and records their latency."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.latencies: list[float] = []
        self.expected = 0
        self.done = asyncio.Event()
        self.last = 0.0

    def reset(self, expected: int) -> None:
        self.latencies = []
        self.expected = expected
        self.done = asyncio.Event()

    def handler(self, conn: sqlite3.Connection, event: Event) -> None:
        now = time.perf_counter()
        conn.execute(
            "INSERT INTO counters (name, value) VALUES (?, 1)"
            " ON CONFLICT (name) DO UPDATE SET value = value + 1",
            (event.type,),
        )
        self.latencies.append(now - event.data["t"])
        self.last = now
        if len(self.latencies) == self.expected:
            self.loop.call_soon_threadsafe(self.done.set)


async def _run(
    name: str,
    mode: str,
    sink: Sink,
    send: Callable[[], Awaitable[None]],
    events: int,
    *,
    concurrency: int = 16,
    rate: float | None = None,
    run: Run | None = None,
) -> Result:
    if run is not None:
        run.step(f"{name}, {mode}: {events} events")
    sink.reset(events)
    start = time.perf_counter()
    if rate is None:
        per_task = [events // concurrency + (i < events % concurrency) for i in range(concurrency)]

        async def producer(n: int) -> None:
            for _ in range(n):
                await send()

        await asyncio.gather(*(producer(n) for n in per_task))
    else:
        for i in range(events):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await send()
    await asyncio.wait_for(sink.done.wait(), 120)
    seconds = sink.last - start
    latencies = sorted(sink.latencies)
    return Result(
        scenario=name,
        mode=mode,
        events=events,
        seconds=round(seconds, 3),
        events_per_s=round(events / seconds, 1),
        p50_ms=round(percentile(latencies, 0.50) * 1000, 3),
        p99_ms=round(percentile(latencies, 0.99) * 1000, 3),
        max_ms=round(latencies[-1] * 1000, 3),
    )


async def bench(events: int, paced: int, rate: float, concurrency: int, run: Run) -> dict[str, Any]:
    server = RedisServer().start()
    workdir = Path(tempfile.mkdtemp(prefix="essaim-bench-events-"))
    redis = core_redis.connect(server.url)
    producer_db = await Database.open(workdir, "producer", MIGRATIONS)
    consumer_db = await Database.open(workdir, "consumer", CONSUMER_MIGRATIONS)
    loop = asyncio.get_running_loop()
    sink = Sink(loop)
    bus = EventBus(redis)
    relay = OutboxRelay(producer_db, bus)
    consumer = Consumer(
        redis,
        consumer_db,
        group="bench",
        consumer="bench-1",
        types=["bench.publish", "bench.outbox"],
        handler=sink.handler,
        start_from="$",
    )
    results: list[Result] = []
    try:
        await relay.start()
        await consumer.start(wait=10)

        async def publish() -> None:
            await bus.publish(Event("bench.publish", "bench", {"t": time.perf_counter()}))

        def change(conn: sqlite3.Connection) -> None:
            t = time.perf_counter()
            conn.execute("INSERT INTO items (t) VALUES (?)", (t,))
            add_to_outbox(conn, Event("bench.outbox", "bench", {"t": t}))

        async def outbox() -> None:
            await producer_db.transaction(change)

        for name, send in (("publish", publish), ("outbox", outbox)):
            await _run(
                name, "warm-up", sink, send, min(200, events), concurrency=concurrency, run=run
            )
            results.append(
                await _run(name, "max rate", sink, send, events, concurrency=concurrency, run=run)
            )
            results.append(
                await _run(name, f"paced {rate:g}/s", sink, send, paced, rate=rate, run=run)
            )
        info: Any = await redis.info("server")
        redis_version = str(info.get("redis_version", "?"))
    finally:
        await consumer.stop()
        await relay.stop()
        await redis.aclose()
        await producer_db.close()
        await consumer_db.close()
        server.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "benchmark": "events",
        "redis": redis_version,
        "loop": type(loop).__module__.split(".")[0],
        "python": platform.python_version(),
        "concurrency": concurrency,
        "results": [asdict(r) for r in results],
    }


def table(report: dict[str, Any]) -> str:
    lines = [
        f"events end to end: Redis {report['redis']}, {report['loop']} loop, one process, "
        f"{report['concurrency']} producers at max rate",
        f"{'scenario':<10}{'mode':<14}{'events':>8}{'events/s':>11}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}",
    ]
    for r in report["results"]:
        lines.append(
            f"{r['scenario']:<10}{r['mode']:<14}{r['events']:>8}{r['events_per_s']:>11.0f}"
            f"{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['max_ms']:>9.2f}"
        )
    lines.append(Run.load_line(report["load"]))
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench events", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a run of a few seconds")
    parser.add_argument("--events", type=int, help="events per max-rate run")
    parser.add_argument("--rate", type=float, help="events per second of the paced runs")
    parser.add_argument("--concurrency", type=int, default=16, help="producers at max rate")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the JSON")
    args = parser.parse_args(argv)
    events = args.events or (1000 if args.quick else 20000)
    rate = args.rate or (500.0 if args.quick else 1000.0)
    paced = int(rate * (1 if args.quick else 5))
    install_uvloop()
    run = Run("events", quick=args.quick, steps=6)
    report = asyncio.run(bench(events, paced, rate, args.concurrency, run))
    report["quick"] = args.quick
    report["load"] = run.machine()
    print(table(report))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {args.output}")
    return 0
