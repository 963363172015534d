from __future__ import annotations

import asyncio
import sqlite3
import sys
from pathlib import Path

import pytest

from core.db import Database
from core.errors import StartupError
from core.events.bus import Event
from core.events.outbox import add_to_outbox

CUSTOMERS = "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL)"


def _tables(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    finally:
        conn.close()
    return {row[0] for row in rows}


async def test_open_creates_the_file_in_the_data_directory_in_wal_mode(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "data", "customers", [CUSTOMERS])
    try:
        assert db.path == tmp_path / "data" / "customers.db"
        mode = await db.run(lambda c: c.execute("PRAGMA journal_mode").fetchone()[0])
        assert mode == "wal"
        assert db.version == 1
    finally:
        await db.close()
    assert {"customers", "essaim_outbox", "essaim_handled"} <= _tables(db.path)


async def test_migrations_run_once_each_in_order(tmp_path: Path) -> None:
    calls: list[int] = []

    def add_column(conn: sqlite3.Connection) -> None:
        calls.append(1)
        conn.execute("ALTER TABLE customers ADD COLUMN email TEXT")

    db = await Database.open(tmp_path, "customers", [CUSTOMERS])
    await db.transaction(lambda c: c.execute("INSERT INTO customers (name) VALUES ('ada')"))
    await db.close()

    db = await Database.open(tmp_path, "customers", [CUSTOMERS, add_column])
    await db.close()
    db = await Database.open(tmp_path, "customers", [CUSTOMERS, add_column])
    try:
        assert db.version == 2
        assert calls == [1]
        rows = await db.run(lambda c: c.execute("SELECT name, email FROM customers").fetchall())
        assert rows == [("ada", None)]
    finally:
        await db.close()


async def test_a_failed_migration_leaves_the_previous_version(tmp_path: Path) -> None:
    db = await Database.open(tmp_path, "customers", [CUSTOMERS])
    await db.close()
    broken = "CREATE TABLE orders (id INTEGER PRIMARY KEY); INSERT INTO nowhere VALUES (1)"
    with pytest.raises(StartupError, match="migration 2 failed"):
        await Database.open(tmp_path, "customers", [CUSTOMERS, broken])
    db = await Database.open(tmp_path, "customers", [CUSTOMERS])
    try:
        assert db.version == 1
    finally:
        await db.close()
    assert "orders" not in _tables(db.path)


async def test_a_schema_newer_than_the_code_is_refused(tmp_path: Path) -> None:
    db = await Database.open(tmp_path, "customers", [CUSTOMERS, "CREATE TABLE t (x)"])
    await db.close()
    with pytest.raises(StartupError, match="newer than this code"):
        await Database.open(tmp_path, "customers", [CUSTOMERS])


async def test_an_invalid_name_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="invalid database name"):
        await Database.open(tmp_path, "../escape", [])


async def test_a_transaction_that_raises_leaves_nothing(tmp_path: Path) -> None:
    db = await Database.open(tmp_path, "customers", [CUSTOMERS])

    def change(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO customers (name) VALUES ('ada')")
        add_to_outbox(conn, Event("customer.created", "customers", {"name": "ada"}))
        raise LookupError("validation failed after the writes")

    try:
        with pytest.raises(LookupError):
            await db.transaction(change)
        counts = await db.run(
            lambda c: c.execute(
                "SELECT (SELECT count(*) FROM customers), (SELECT count(*) FROM essaim_outbox)"
            ).fetchone()
        )
        assert counts == (0, 0)
    finally:
        await db.close()


async def test_concurrent_transactions_do_not_lose_updates(tmp_path: Path) -> None:
    db = await Database.open(
        tmp_path, "n", ["CREATE TABLE n (v INTEGER); INSERT INTO n VALUES (0)"]
    )

    def bump(conn: sqlite3.Connection) -> None:
        (value,) = conn.execute("SELECT v FROM n").fetchone()
        conn.execute("UPDATE n SET v = ?", (value + 1,))

    try:
        await asyncio.gather(*(db.transaction(bump) for _ in range(200)))
        assert await db.run(lambda c: c.execute("SELECT v FROM n").fetchone()[0]) == 200
    finally:
        await db.close()


async def test_outbox_listeners_hear_commits_that_added_events_only(tmp_path: Path) -> None:
    db = await Database.open(tmp_path, "customers", [CUSTOMERS])
    heard: list[int] = []
    remove = db.on_outbox(lambda: heard.append(1))

    def with_event(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO customers (name) VALUES ('ada')")
        add_to_outbox(conn, Event("customer.created", "customers", None))

    def failing(conn: sqlite3.Connection) -> None:
        with_event(conn)
        raise LookupError

    try:
        await db.transaction(lambda c: c.execute("INSERT INTO customers (name) VALUES ('bob')"))
        with pytest.raises(LookupError):
            await db.transaction(failing)
        await db.transaction(with_event)
        assert heard == [1]
        remove()
        await db.transaction(with_event)
        assert heard == [1]
    finally:
        await db.close()


async def test_a_cancelled_caller_does_not_undo_the_commit(tmp_path: Path) -> None:
    db = await Database.open(tmp_path, "customers", [CUSTOMERS])
    started = asyncio.Event()
    loop = asyncio.get_running_loop()
    release = asyncio.Event()

    def slow(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO customers (name) VALUES ('ada')")
        loop.call_soon_threadsafe(started.set)
        asyncio.run_coroutine_threadsafe(release.wait(), loop).result(5)

    try:
        task = asyncio.create_task(db.transaction(slow))
        await started.wait()
        task.cancel()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        count = await db.run(lambda c: c.execute("SELECT count(*) FROM customers").fetchone()[0])
        assert count == 1
    finally:
        await db.close()


_RACER = """
import asyncio, sys, time
from core.db import Database

def slow(conn):
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)")
    time.sleep(0.3)  # hold the migration open so that the other process arrives meanwhile

async def main():
    db = await Database.open(sys.argv[1], "shared", [slow, "CREATE INDEX items_name ON items (name);"])
    print(db.version)
    await db.close()

asyncio.run(main())
"""


async def test_two_processes_opening_a_new_file_at_once_migrate_it_once(tmp_path: Path) -> None:
    """Two instances of a service starting together on a new database both start."""
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _RACER,
            str(tmp_path),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=str(Path(__file__).resolve().parents[2]),
        )
        for _ in range(2)
    ]
    results = [await p.communicate() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err.decode() for _, err in results]
    assert [out.decode().strip() for out, _ in results] == ["2", "2"]
    conn = sqlite3.connect(tmp_path / "shared.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    conn.close()
