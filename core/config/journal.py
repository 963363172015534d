"""The config service's durable copy: every version of every document, on disk.

Redis is where the config service serves from and publishes changes; this
SQLite file (``{data_dir}/configsvc.db``, see :mod:`core.db`) is what makes a
change durable. Each version written to Redis (over the API, by a rollback,
by a directory import) is recorded here before the write is answered, with
its number, hash, time, origin and content, the last
:data:`~core.config.store.HISTORY_KEPT` per document; so is the hash of the
file each document was last imported from. When the config service finds its
Redis emptied, it restores Redis from this file first and imports the
directory after, so an API change survives and a file changed meanwhile
still becomes a new version.

Why SQLite and not a JSON-lines journal: a version is a row written in one
transaction (no torn line to skip after a crash), trimming to the retained
versions is a ``DELETE`` (no compaction pass), the project already runs
SQLite for every service's data (WAL, one writer thread), and the file can be
inspected with ``sqlite3`` by an operator.

Schema::

    versions(name, version, hash, time, origin, deleted, content)  -- PK (name, version)
    files(name PRIMARY KEY, hash)      -- SHA-256 of the file last imported for a document
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from core.db import Database

__all__ = ["Journal", "JournalEntry"]

SCHEMA = """
CREATE TABLE versions (
    name    TEXT NOT NULL,
    version INTEGER NOT NULL,
    hash    TEXT,
    time    INTEGER NOT NULL,
    origin  TEXT NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    content TEXT,
    PRIMARY KEY (name, version)
) WITHOUT ROWID;
CREATE TABLE files (
    name TEXT PRIMARY KEY,
    hash TEXT NOT NULL
) WITHOUT ROWID;
"""


@dataclasses.dataclass(frozen=True, slots=True)
class JournalEntry:
    """One version as recorded: ``content`` is canonical JSON text, None for a deletion."""

    name: str
    version: int
    hash: str | None
    time: int
    origin: str
    deleted: bool
    content: str | None

    def to_json(self) -> bytes:
        """The version as the store keeps it in a document's history list."""
        # Parsed and dumped again: orjson keeps the key order, so the text is the same.
        content = orjson.loads(self.content) if self.content is not None else None
        return orjson.dumps(
            {
                "version": self.version,
                "hash": self.hash,
                "time": self.time,
                "origin": self.origin,
                "deleted": self.deleted,
                "content": content,
            }
        )


class Journal:
    """The versions and file records of the config documents, on disk. Open with :meth:`open`."""

    def __init__(self, db: Database, keep: int) -> None:
        self.db = db
        self.keep = keep
        self.path = db.path
        self.recorded = 0

    @classmethod
    async def open(cls, data_dir: str | Path, *, keep: int) -> Journal:
        """Open (creating it and ``data_dir``) ``{data_dir}/configsvc.db``; ``keep`` versions each.

        Commits are ``synchronous=FULL``: an answered config write survives a
        power loss, at an fsync per write (config writes are rare).
        """
        db = await Database.open(data_dir, "configsvc", [SCHEMA], synchronous="FULL")
        return cls(db, keep)

    async def close(self) -> None:
        await self.db.close()

    async def record(
        self, entries: Sequence[JournalEntry], files: Mapping[str, str | None] | None = None
    ) -> int:
        """Add ``entries`` (those not recorded yet) and set (a hash) or drop (None) file records.

        One transaction; returns how many entries were new.
        """
        if not entries and not files:
            return 0
        keep = self.keep

        def write(conn: sqlite3.Connection) -> int:
            added = conn.executemany(
                "INSERT OR IGNORE INTO versions VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (e.name, e.version, e.hash, e.time, e.origin, int(e.deleted), e.content)
                    for e in entries
                ],
            ).rowcount
            for name in {e.name for e in entries}:
                conn.execute(
                    "DELETE FROM versions WHERE name = ? AND version <= "
                    "(SELECT version FROM versions WHERE name = ? ORDER BY version DESC"
                    " LIMIT 1 OFFSET ?)",
                    (name, name, keep),
                )
            for name, hash_ in (files or {}).items():
                if hash_ is None:
                    conn.execute("DELETE FROM files WHERE name = ?", (name,))
                else:
                    conn.execute("INSERT OR REPLACE INTO files VALUES (?, ?)", (name, hash_))
            return added

        added = await self.db.transaction(write)
        self.recorded += added
        return added

    async def summary(self) -> dict[str, tuple[int, int]]:
        """Document name -> (the highest version recorded, how many are recorded)."""
        rows = await self.db.run(
            lambda c: c.execute(
                "SELECT name, MAX(version), COUNT(*) FROM versions GROUP BY name"
            ).fetchall()
        )
        return {str(name): (int(top), int(count)) for name, top, count in rows}

    async def documents(self) -> dict[str, list[JournalEntry]]:
        """Every recorded document's versions, newest first."""
        rows = await self.db.run(
            lambda c: c.execute(
                "SELECT name, version, hash, time, origin, deleted, content FROM versions"
                " ORDER BY name, version DESC"
            ).fetchall()
        )
        out: dict[str, list[JournalEntry]] = {}
        for name, version, hash_, at, origin, deleted, content in rows:
            out.setdefault(name, []).append(
                JournalEntry(name, int(version), hash_, int(at), origin, bool(deleted), content)
            )
        return out

    async def files(self) -> dict[str, str]:
        """Document name -> hash of the file it was last imported from."""
        rows = await self.db.run(lambda c: c.execute("SELECT name, hash FROM files").fetchall())
        return {str(name): str(hash_) for name, hash_ in rows}

    async def replace_files(self, files: Mapping[str, str]) -> None:
        """Make ``files`` the whole set of file records."""

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM files")
            conn.executemany("INSERT INTO files VALUES (?, ?)", list(files.items()))

        await self.db.transaction(write)

    async def check(self) -> tuple[bool, Any]:
        """For readiness: the file answers a read."""
        try:
            count = await self.db.run(
                lambda c: c.execute("SELECT COUNT(*) FROM versions").fetchone()[0]
            )
        except sqlite3.Error as exc:
            return False, f"{self.path}: {exc}"
        return True, {"path": str(self.path), "versions": int(count)}


def entries_from_history(name: str, raw: Iterable[str]) -> list[JournalEntry]:
    """Journal entries from a document's history list as the store keeps it in Redis."""
    out = []
    for item in raw:
        doc = orjson.loads(item)
        content = doc.get("content")
        out.append(
            JournalEntry(
                name,
                int(doc["version"]),
                doc.get("hash"),
                int(doc["time"]),
                str(doc["origin"]),
                bool(doc.get("deleted")),
                None if content is None else orjson.dumps(content).decode(),
            )
        )
    return out
