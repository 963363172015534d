"""A service's own SQLite database: one file in its data directory, migrated at open.

Every service owns one database (DESIGN.md, "Data"): ``{data_dir}/{name}.db``
in WAL mode, so readers never wait for the writer and a commit is one append
to the log. :meth:`Database.open` applies the service's ordered migrations:
migration *i* (counting from 1) runs once, in one transaction with
``PRAGMA user_version = i``, so a crash mid-migration leaves the previous
version in force. A file whose version is newer than the code's migrations is
refused (:class:`~core.errors.StartupError`): old code never writes a schema
it does not know.

Besides the service's own tables, :meth:`Database.open` keeps the tables of
the core mechanisms (:data:`CORE_SCHEMA`, outside ``user_version``):
``essaim_outbox`` (events waiting for :class:`core.events.outbox.OutboxRelay`) and
``essaim_handled`` (event ids a :class:`core.events.bus.Consumer` has handled).

All SQLite calls of a database run on one thread of its own, one at a time:
:meth:`Database.run` for reads, :meth:`Database.transaction` for writes. A
transaction that called :func:`core.events.outbox.add_to_outbox` notifies the
``on_outbox`` listeners (the relay's ``wake``) right after its commit, even if
the awaiting coroutine was cancelled meanwhile.
"""

from __future__ import annotations

import asyncio
import contextvars
import re
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal, TypeVar

from core import log
from core.errors import StartupError
from core.settings import private_dir, private_file

logger = log.get("db")

__all__ = ["CORE_SCHEMA", "Connection", "Database", "Migration"]

T = TypeVar("T")

#: A migration: an SQL script, or a function given the connection inside the transaction.
Migration = str | Callable[[sqlite3.Connection], None]

Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}\Z")

#: Tables of the core mechanisms, created if missing at every open.
CORE_SCHEMA = """
CREATE TABLE IF NOT EXISTS essaim_outbox (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id     TEXT NOT NULL UNIQUE,
    type         TEXT NOT NULL,
    fields       TEXT NOT NULL,
    created_at   REAL NOT NULL,
    published_at REAL
);
CREATE INDEX IF NOT EXISTS essaim_outbox_unpublished
    ON essaim_outbox (seq) WHERE published_at IS NULL;
CREATE INDEX IF NOT EXISTS essaim_outbox_published
    ON essaim_outbox (published_at) WHERE published_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS essaim_handled (
    grp        TEXT NOT NULL,
    event_id   TEXT NOT NULL,
    handled_at REAL NOT NULL,
    PRIMARY KEY (grp, event_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS essaim_handled_at ON essaim_handled (handled_at);
"""


class Connection(sqlite3.Connection):
    """The connection type of a :class:`Database`; remembers an outbox write until commit."""

    outbox_written = False


class Database:
    """One SQLite file, its migrations, and the thread its calls run on.

    Open with :meth:`open`, close with :meth:`close`. ``version`` is the
    schema version after migrations.
    """

    def __init__(self, path: Path, conn: Connection, executor: ThreadPoolExecutor) -> None:
        self.path = path
        self._conn = conn
        self._executor = executor
        self._loop = asyncio.get_running_loop()
        self._listeners: list[Callable[[], None]] = []
        self._closed = False
        self.version = 0

    @classmethod
    async def open(
        cls,
        data_dir: str | Path,
        name: str,
        migrations: Sequence[Migration] = (),
        *,
        synchronous: Synchronous = "NORMAL",
        busy_timeout: float = 5.0,
    ) -> Database:
        """Open (creating it and ``data_dir`` if needed) ``{data_dir}/{name}.db`` and migrate it.

        ``synchronous="NORMAL"`` survives a crash of the process (a commit is in
        the log when :meth:`transaction` returns) but may lose the last commits
        on a power loss; ``"FULL"`` also survives that, at an fsync per commit.
        Raises :class:`~core.errors.StartupError` when the file can't be opened,
        a migration fails, or the file's schema is newer than ``migrations``.
        """
        if not NAME_RE.match(name):
            raise ValueError(f"invalid database name {name!r}")
        path = Path(data_dir) / f"{name}.db"
        executor = ThreadPoolExecutor(1, thread_name_prefix=f"db-{name}")
        loop = asyncio.get_running_loop()
        try:
            conn = await loop.run_in_executor(executor, _connect, path, synchronous, busy_timeout)
        except (sqlite3.Error, OSError) as exc:
            executor.shutdown(wait=False)
            raise StartupError(f"cannot open database {path}: {exc}") from exc
        db = cls(path, conn, executor)
        try:
            db.version = await db.run(lambda c: _migrate(c, path, migrations))
        except BaseException:
            await db.close()
            raise
        return db

    def on_outbox(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener()`` on the event loop after each commit that wrote to the outbox.

        It has run by the time the committing :meth:`transaction` returns.

        Returns a function that removes the listener.
        """
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(conn)`` on the database's thread, in autocommit mode; for reads.

        A write done here commits statement by statement; use
        :meth:`transaction` for anything that must be atomic.
        """
        # In a copy of the caller's context, so that what runs there (an outbox
        # write, a log line) sees the trace of the request or event it serves.
        ctx = contextvars.copy_context()
        return await self._loop.run_in_executor(self._executor, ctx.run, fn, self._conn)

    async def transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(conn)`` on the database's thread inside ``BEGIN IMMEDIATE`` ... ``COMMIT``.

        Everything ``fn`` writes (its rows and any :func:`core.events.outbox.add_to_outbox`)
        commits together, or not at all when ``fn`` raises (the exception is
        re-raised). ``fn`` must not commit or roll back itself. It runs
        to completion even if the awaiting task is cancelled.
        """
        ctx = contextvars.copy_context()
        return await self._loop.run_in_executor(self._executor, ctx.run, self._in_transaction, fn)

    def _in_transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        conn.outbox_written = False
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn)
            conn.execute("COMMIT")
        except BaseException:
            conn.outbox_written = False
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        if conn.outbox_written:
            conn.outbox_written = False
            self._loop.call_soon_threadsafe(self._notify)
        return result

    def _notify(self) -> None:
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:
                logger.exception("outbox listener %r failed", listener)

    async def close(self) -> None:
        """Wait for the calls in progress, then close the file and the thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._loop.run_in_executor(self._executor, self._conn.close)
        finally:
            self._executor.shutdown(wait=False)


def _connect(path: Path, synchronous: Synchronous, busy_timeout: float) -> Connection:
    # A service's database holds its secrets (the auth service's signing keys and
    # password hashes): its directory is 0700 and the file 0600 before SQLite opens
    # it; SQLite gives the -wal and -shm files the database file's mode.
    private_dir(path.parent)
    private_file(path)
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            private_file(side)
    conn = sqlite3.connect(
        path,
        timeout=busy_timeout,
        isolation_level=None,
        check_same_thread=False,
        factory=Connection,
    )
    try:
        mode = _wal(conn, busy_timeout)
        if mode != "wal":
            raise sqlite3.OperationalError(f"WAL mode refused (journal_mode={mode})")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute("PRAGMA foreign_keys=ON")
    except BaseException:
        conn.close()
        raise
    return conn


def _wal(conn: sqlite3.Connection, busy_timeout: float) -> str:
    """Switch to WAL; retried while locked, since SQLite's busy handler doesn't cover it.

    A new file's first connection converts it; another process opening the
    file at that moment gets "database is locked" at once, not after waiting.
    """
    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            return str(conn.execute("PRAGMA journal_mode=WAL").fetchone()[0])
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def _migrate(conn: sqlite3.Connection, path: Path, migrations: Sequence[Migration]) -> int:
    """Bring the file to ``len(migrations)``; returns the schema version in force.

    Everything runs in one ``BEGIN IMMEDIATE`` transaction, and the version
    is read inside it: two processes opening a new file at once take turns,
    and the second finds the work done. A failure rolls everything back.
    """
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        raise StartupError(f"database {path}: cannot take the write lock: {exc}") from exc
    try:
        current = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if current > len(migrations):
            raise StartupError(
                f"database {path} has schema version {current}, newer than this code's "
                f"{len(migrations)}: refusing to use it"
            )
        what = "core schema"
        _run_script(conn, CORE_SCHEMA)
        for version, migration in enumerate(migrations[current:], start=current + 1):
            what = f"migration {version}"
            if isinstance(migration, str):
                _run_script(conn, migration)
            else:
                migration(conn)
            conn.execute(f"PRAGMA user_version = {version}")
        conn.execute("COMMIT")
    except StartupError:
        conn.execute("ROLLBACK")
        raise
    except Exception as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise StartupError(f"database {path}: {what} failed: {exc}") from exc
    for version in range(current + 1, len(migrations) + 1):
        logger.info("database %s migrated to version %d", path, version)
    return max(current, len(migrations))


def _run_script(conn: sqlite3.Connection, sql: str) -> None:
    """Run each statement of ``sql`` in the open transaction (``executescript`` would commit it).

    The script is cut at the semicolons that end a complete statement, as
    SQLite's own parser sees them (not those inside strings or trigger bodies).
    """
    statement = ""
    for piece in sql.split(";"):
        statement += piece + ";"
        if sqlite3.complete_statement(statement):
            if statement.strip(" \t\r\n;"):
                conn.execute(statement)
            statement = ""
    if statement.strip(" \t\r\n;"):
        conn.execute(statement)
