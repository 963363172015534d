"""``python -m bench system [--quick] [--output PATH]``: the demo system, started by its launcher.

The launcher (``python -m services``) starts every component as its own
process on loopback (its private Redis, configsvc, registry, gateway,
customers, two inventory instances, billing; logs at ``warning``). Then:

- **events**: ``bill.created`` events (one unit of a product each, each for
  a bill id of its own that billing doesn't know, so that inventory reserves
  and answers every one) published straight onto the bus, as billing's relay
  would, and handled by the two inventory instances (one consumer group, one SQLite database, a
  transaction per batch). Latency runs from just before the publish call to
  the ``handled_at`` that the handling transaction records
  (``essaim_handled``, read from inventory's database file; one machine, one
  wall clock). ``max rate`` publishes all events at once in batches of 100
  (the figure is the throughput; latency includes the queue); ``paced`` at a
  fixed rate (the latency of a bus with room to spare).
- **bills**: ``POST /billing/bills`` through the gateway's traffic port
  (gateway, billing, its two calls to customers and inventory, the bill and
  its outbox event in one transaction, then inventory consuming the event),
  in a closed loop from ``concurrency`` keep-alive connections of an aiohttp
  client for ``duration`` seconds. Latency is the client's, request to full
  answer. The ``bill.created`` events of the loaded run are then measured
  from their outbox row (``created_at``, in the bill's transaction) to their
  ``handled_at`` in inventory: the events' whole way in the real system
  (``bills' outbox``).
- **saga**: the same loaded run's bills from ``pending`` to ``confirmed``:
  from the saga's start (in the bill's transaction, ``essaim_sagas.created_at``)
  to the transaction that confirmed it (``updated_at``), after billing's
  outbox, the bus, inventory's reservation and answer, its outbox, the bus
  again and billing's consumer; ``per s`` is bills confirmed per second.
  Then ``paced``: bills sent at a fixed rate (up to 32 connections), each
  measured from just before its ``POST`` was sent to its
  confirmation (the client's wait for a confirmed bill, without polling).

Results are printed as a table and written to ``bench/results/system.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import shutil
import sqlite3
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench._run import Run
from core import redis as core_redis
from core.events.bus import Event, EventBus
from core.runner import install_uvloop
from services.running import RunningSystem

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "system.json"
#: How long a run takes with the defaults (python -m bench --help).
DURATION = "about 1.5 min"
STOCK = 10**9


@dataclass
class Result:
    scenario: str
    mode: str
    count: int
    seconds: float
    per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    errors: int = 0


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def result(
    scenario: str, mode: str, seconds: float, latencies: list[float], errors: int = 0
) -> Result:
    ordered = sorted(latencies)
    return Result(
        scenario, mode, len(ordered), round(seconds, 3),
        round(len(ordered) / seconds, 1) if seconds > 0 else 0.0,
        round(percentile(ordered, 0.5) * 1000, 3), round(percentile(ordered, 0.99) * 1000, 3),
        round(ordered[-1] * 1000 if ordered else 0.0, 3), errors,
    )  # fmt: skip


class System(RunningSystem):
    """The launcher as a child process (:class:`services.running.RunningSystem`), unseeded,
    logging warnings and up, with the gateway reached at 127.0.0.1."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(
            workdir / "run", timeout=60.0, args=("--log-level", "warning", "--seed", "false")
        )
        self.workdir = workdir

    @property
    def gateway(self) -> str:
        return f"http://127.0.0.1:{self.ports['gateway']}"

    @property
    def inventory_db(self) -> Path:
        return self.run_dir / "data" / "inventory" / "inventory.db"

    @property
    def billing_db(self) -> Path:
        return self.run_dir / "data" / "billing" / "billing.db"


def handled(db: Path, ids: set[str] | None = None) -> dict[str, float]:
    """``event id -> handled_at`` of inventory's handled events (all, or those in ``ids``)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT event_id, handled_at FROM essaim_handled WHERE grp = 'inventory'"
        ).fetchall()
    finally:
        conn.close()
    return {i: t for i, t in rows if ids is None or i in ids}


async def wait_handled(db: Path, ids: set[str], timeout: float) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        done = await asyncio.to_thread(handled, db, ids)
        if len(done) == len(ids) or time.monotonic() > deadline:
            return done
        await asyncio.sleep(0.05)


_BILL_IDS = itertools.count(-1, -1)  # bills billing never made: their answers are ignored


def bill_event(product_id: int) -> Event:
    return Event("bill.created", "bench", {"bill_id": next(_BILL_IDS), "lines": [
        {"product_id": product_id, "quantity": 1}]})  # fmt: skip


async def events_max_rate(system: System, bus: EventBus, product_id: int, count: int) -> Result:
    events = [bill_event(product_id) for _ in range(count)]
    sent: dict[str, float] = {}
    for i in range(0, count, 100):
        batch = events[i : i + 100]
        now = time.time()
        for event in batch:
            sent[event.id] = now
        await bus.publish_many(batch)
    done = await wait_handled(system.inventory_db, set(sent), 120)
    latencies = [done[i] - sent[i] for i in done]
    seconds = max(done.values()) - min(sent.values()) if done else 0.0
    return result("events", "max rate", seconds, latencies, count - len(done))


async def events_paced(
    system: System, bus: EventBus, product_id: int, count: int, rate: float
) -> Result:
    sent: dict[str, float] = {}
    start = time.monotonic()
    for n in range(count):
        due = start + n / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        event = bill_event(product_id)
        sent[event.id] = time.time()
        await bus.publish(event)
    done = await wait_handled(system.inventory_db, set(sent), 60)
    latencies = [done[i] - sent[i] for i in done]
    return result("events", f"paced {rate:.0f}/s", count / rate, latencies, count - len(done))


async def login(system: System) -> dict[str, str]:
    """The demo admin's bearer header: through the gateway, creating products needs it."""
    password = (system.run_dir / "admin.password").read_text().strip()
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{system.gateway}/auth/token", json={"username": "admin", "password": password}
        ) as response,
    ):
        assert response.status == 200, await response.text()
        return {"Authorization": f"Bearer {(await response.json())['access_token']}"}


async def bills(
    system: System, product_id: int, concurrency: int, duration: float, auth: dict[str, str]
) -> Result:
    body = json.dumps(
        {"customer_id": 1, "lines": [{"product_id": product_id, "quantity": 1}]}
    ).encode()
    url = f"{system.gateway}/billing/bills"
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:
        stop_at = time.monotonic() + duration

        async def worker() -> None:
            nonlocal errors
            while time.monotonic() < stop_at:
                began = time.perf_counter()
                async with http.post(url, data=body, headers=auth) as response:
                    await response.read()
                    if response.status == 202:
                        latencies.append(time.perf_counter() - began)
                    else:
                        errors += 1

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.monotonic() - started
    return result("bills", f"{concurrency} connections", seconds, latencies, errors)


async def outbox_events(system: System, since: float) -> Result:
    """The ``bill.created`` events of the bills made since ``since``: billing's commit to handled."""

    def committed() -> dict[str, float]:
        conn = sqlite3.connect(f"file:{system.billing_db}?mode=ro", uri=True)
        try:
            rows = conn.execute(
                "SELECT event_id, created_at FROM essaim_outbox WHERE created_at >= ?", (since,)
            ).fetchall()
        finally:
            conn.close()
        return dict(rows)

    made = await asyncio.to_thread(committed)
    done = await wait_handled(system.inventory_db, set(made), 60)
    latencies = [done[i] - made[i] for i in done]
    seconds = max(done.values()) - min(made.values()) if done else 0.0
    return result("events", "bills' outbox", seconds, latencies, len(made) - len(done))


def confirmed_bills(db: Path, since: float) -> dict[str, tuple[float, float]]:
    """``bill id -> (saga started, confirmed)`` of the bills confirmed that started since ``since``."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT id, created_at, updated_at FROM essaim_sagas"
            " WHERE saga = 'bill' AND state = 'confirmed' AND created_at >= ?",
            (since,),
        ).fetchall()
    finally:
        conn.close()
    return {i: (c, u) for i, c, u in rows}


def started_bills(db: Path, since: float) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = conn.execute(
            "SELECT count(*) FROM essaim_sagas WHERE saga = 'bill' AND created_at >= ?", (since,)
        ).fetchone()
    finally:
        conn.close()
    return int(row[0])


async def wait_confirmed(
    db: Path, since: float, count: int, timeout: float
) -> dict[str, tuple[float, float]]:
    deadline = time.monotonic() + timeout
    while True:
        done = await asyncio.to_thread(confirmed_bills, db, since)
        if len(done) >= count or time.monotonic() > deadline:
            return done
        await asyncio.sleep(0.05)


async def saga_loaded(system: System, since: float, mode: str) -> Result:
    """The bills started since ``since``: from their saga's start to their confirmation."""
    made = await asyncio.to_thread(started_bills, system.billing_db, since)
    done = await wait_confirmed(system.billing_db, since, made, 60)
    latencies = [u - c for c, u in done.values()]
    seconds = max(u for _, u in done.values()) - min(c for c, _ in done.values()) if done else 0
    return result("saga", mode, seconds, latencies, made - len(done))


async def saga_paced(
    system: System, product_id: int, count: int, rate: float, auth: dict[str, str]
) -> Result:
    """``count`` bills at ``rate`` a second: from sending the ``POST`` to the bill confirmed."""
    body = json.dumps(
        {"customer_id": 1, "lines": [{"product_id": product_id, "quantity": 1}]}
    ).encode()
    url = f"{system.gateway}/billing/bills"
    sent: dict[str, float] = {}
    errors = 0
    since = time.time()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32)) as http:
        start = time.monotonic()

        async def one(n: int) -> None:
            nonlocal errors
            delay = start + n / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            began = time.time()
            async with http.post(url, data=body, headers=auth) as response:
                doc = await response.json(content_type=None)
                if response.status == 202:
                    sent[str(doc["id"])] = began
                else:
                    errors += 1

        await asyncio.gather(*(one(n) for n in range(count)))
    done = await wait_confirmed(system.billing_db, since, len(sent), 60)
    latencies = [done[i][1] - sent[i] for i in sent if i in done]
    return result("saga", f"paced {rate:.0f}/s", count / rate, latencies, count - len(latencies))


async def prepare(system: System, auth: dict[str, str]) -> tuple[int, int]:
    """A customer and two products with stock enough for any run (events, bills)."""
    async with aiohttp.ClientSession(headers=auth) as http:
        async with http.post(
            f"{system.gateway}/customers/customers",
            json={"name": "Bench", "email": "bench@example.com"},
        ) as response:
            assert response.status == 201, await response.text()
        ids = []
        for name in ("for events", "for bills"):
            async with http.post(
                f"{system.gateway}/inventory/products",
                json={"name": name, "price": 9.99, "quantity": STOCK},
            ) as response:
                assert response.status == 201, await response.text()
                ids.append(int((await response.json())["id"]))
    return ids[0], ids[1]


async def bench(system: System, args: argparse.Namespace, run: Run) -> list[Result]:
    auth = await login(system)  # valid 5 minutes: longer than any run
    events_product, bills_product = await prepare(system, auth)
    redis = core_redis.connect(system.redis_url)
    bus = EventBus(redis)
    results = []
    try:
        run.step("events: warm-up, 20 events")
        await events_paced(system, bus, events_product, 20, 100.0)
        run.step(f"events, max rate: {args.events} events")
        results.append(await events_max_rate(system, bus, events_product, args.events))
        run.step(f"events, paced: {args.paced} events at {args.rate:g}/s")
        results.append(await events_paced(system, bus, events_product, args.paced, args.rate))
        run.step("bills: warm-up, 4 connections for 0.5 s")
        await bills(system, bills_product, 4, 0.5, auth)
        run.step(f"bills, 1 connection for {args.duration:g} s")
        results.append(await bills(system, bills_product, 1, args.duration, auth))
        since = time.time()
        run.step(f"bills, {args.concurrency} connections for {args.duration:g} s")
        results.append(await bills(system, bills_product, args.concurrency, args.duration, auth))
        run.step("bills' outbox events, to their handling in inventory")
        results.append(await outbox_events(system, since))
        results.append(await saga_loaded(system, since, f"{args.concurrency} connections"))
        results.append(
            await saga_paced(system, bills_product, args.saga_bills, args.saga_rate, auth)
        )
    finally:
        await redis.aclose()
    return results


def table(report: dict[str, Any]) -> str:
    lines = [
        f"the demo system on loopback: {report['cpus']} CPUs, {report['loop']} loop in the services",
        f"{'scenario':<9}{'mode':<16}{'count':>8}{'per s':>9}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'max ms':>9}{'errors':>8}",
    ]
    for r in report["results"]:
        lines.append(
            f"{r['scenario']:<9}{r['mode']:<16}{r['count']:>8}{r['per_s']:>9.0f}"
            f"{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['max_ms']:>9.2f}{r['errors']:>8}"
        )
    lines.append(Run.load_line(report["load"]))
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench system", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a run of a few seconds")
    parser.add_argument("--events", type=int, help="events of the max-rate run")
    parser.add_argument("--rate", type=float, help="events per second of the paced run")
    parser.add_argument("--duration", type=float, help="seconds of each bills run")
    parser.add_argument(
        "--concurrency", type=int, default=16, help="connections of the loaded bills run"
    )
    parser.add_argument(
        "--saga-rate", type=float, help="bills per second of the paced saga run [quick 50, 100]"
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the JSON")
    args = parser.parse_args(argv)
    args.events = args.events or (500 if args.quick else 10_000)
    args.rate = args.rate or (200.0 if args.quick else 500.0)
    args.paced = int(args.rate * (1 if args.quick else 10))
    args.duration = args.duration or (1.0 if args.quick else 10.0)
    args.saga_rate = args.saga_rate or (50.0 if args.quick else 100.0)
    args.saga_bills = int(args.saga_rate * (1 if args.quick else 10))
    workdir = Path(tempfile.mkdtemp(prefix="essaim-bench-system-"))
    system = System(workdir)
    install_uvloop()
    run = Run("system", quick=args.quick, steps=8)
    try:
        run.step("start the system with its launcher")
        system.start()
        results = asyncio.run(bench(system, args, run))
    finally:
        system.stop()
    report = {
        "benchmark": "system",
        "load": run.machine(),
        "quick": args.quick,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loop": "uvloop" if _has_uvloop() else "asyncio",
        "events": args.events,
        "results": [asdict(r) for r in results],
    }
    print(table(report))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {args.output}")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True
