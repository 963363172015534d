"""A producer or consumer of events run as its own process, for tests that kill one.

``python -m tests.core.event_worker consumer --redis URL --data DIR --consumer NAME [--hang-marker PATH]``
consumes ``item.created`` in group ``billing`` with :func:`count_handler`; an
event whose data has ``"hang": true`` makes it write ``--hang-marker`` and
block forever inside the handler's transaction (so the test can SIGKILL it
mid-handling).

``python -m tests.core.event_worker producer --redis URL --data DIR --count N [--no-relay]``
commits N items, each with an ``item.created`` event in the outbox, prints
``committed N``, then runs the outbox relay (or, with ``--no-relay``, waits
without publishing, so the test can SIGKILL it between commit and publish).

Both print ``ready`` once running and stop on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from core import redis as core_redis
from core.db import Database
from core.events.bus import Event, EventBus
from core.events.consumer import Consumer
from core.events.outbox import OutboxRelay, add_to_outbox

ROOT = Path(__file__).resolve().parents[2]

#: The demo schema of the test services: a counter per event type and the items made.
MIGRATIONS = (
    "CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "CREATE TABLE items (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)",
)


def count_handler(conn: sqlite3.Connection, event: Event) -> None:
    """The effect of an event: its counter row (``type``) goes up by one."""
    conn.execute(
        "INSERT INTO counters (name, value) VALUES (?, 1)"
        " ON CONFLICT (name) DO UPDATE SET value = value + 1",
        (event.type,),
    )


def counter(db_path: Path, name: str = "item.created") -> int:
    """The counter ``name`` as another reader of the file sees it (0 when absent)."""
    conn = sqlite3.connect(db_path)
    try:
        row = conn.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()
    return int(row[0]) if row else 0


def add_items(conn: sqlite3.Connection, count: int, source: str = "inventory") -> list[Event]:
    """Inside a transaction: ``count`` items and one ``item.created`` event each."""
    events = []
    for _ in range(count):
        cur = conn.execute("INSERT INTO items (n) VALUES (?)", (len(events),))
        event = Event("item.created", source, {"item": cur.lastrowid})
        add_to_outbox(conn, event)
        events.append(event)
    return events


def spawn(*args: str, log: Path) -> subprocess.Popen[bytes]:
    """Start ``python -m tests.core.event_worker *args`` with its output in ``log``."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.core.event_worker", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=str(ROOT),
        )


async def _consumer(args: argparse.Namespace, stop: asyncio.Event) -> None:
    db = await Database.open(args.data, "billing", MIGRATIONS)
    marker = Path(args.hang_marker) if args.hang_marker else None

    def handler(conn: sqlite3.Connection, event: Event) -> None:
        if marker is not None and isinstance(event.data, dict) and event.data.get("hang"):
            marker.write_text(event.id)
            while True:  # hold the transaction open until killed
                time.sleep(1)
        count_handler(conn, event)

    redis = core_redis.connect(args.redis)
    consumer = Consumer(
        redis,
        db,
        group="billing",
        consumer=args.consumer,
        types=["item.created"],
        handler=handler,
        visibility_timeout=args.visibility,
        block_ms=100,
    )
    await consumer.start(wait=5)
    print("ready", flush=True)
    await stop.wait()
    await consumer.stop()
    await redis.aclose()
    await db.close()


async def _producer(args: argparse.Namespace, stop: asyncio.Event) -> None:
    db = await Database.open(args.data, "inventory", MIGRATIONS)
    if args.count:
        await db.transaction(lambda conn: add_items(conn, args.count))
    print(f"committed {args.count}", flush=True)
    redis = core_redis.connect(args.redis)
    relay = OutboxRelay(db, EventBus(redis), poll_interval=0.2)
    if not args.no_relay:
        await relay.start()
    print("ready", flush=True)
    await stop.wait()
    await relay.stop()
    await redis.aclose()
    await db.close()


async def _main(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await (_consumer if args.role == "consumer" else _producer)(args, stop)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.core.event_worker")
    parser.add_argument("role", choices=["consumer", "producer"])
    parser.add_argument("--redis", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--consumer", default="worker")
    parser.add_argument("--visibility", type=float, default=0.5)
    parser.add_argument("--hang-marker", default="")
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--no-relay", action="store_true")
    asyncio.run(_main(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
