"""Who did what from the console: every action, in the console's database and in its log.

Each action an admin takes (an instance's status, a config rollback, a
dead letter replayed or discarded) is recorded once it has an outcome, with
the user the relayed token names (``preferred_username``, else ``sub``),
their roles, the request id (which every log line written meanwhile
carries, the gateway's and the services' too) and what came of it, refusals by the system included. The
record is a row of ``audit`` in the console's database and a log line on
the logger ``essaim.audit``:

    12:01:07 INFO essaim.audit: admin (roles admin) instance.status inventory/inventory-1: UP -> OUT_OF_SERVICE: done [request 3f2a... trace ...]

The newest :data:`SHOWN` are the console's ``audit`` section.
"""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
from typing import Any

from core import log
from core.db import Database
from core.events.bus import now_iso
from services.console.hub import Hub

logger = log.get("audit")

__all__ = ["MIGRATIONS", "SHOWN", "Audit", "Entry"]

SHOWN = 50

MIGRATIONS = (
    """
    CREATE TABLE audit (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        at         TEXT NOT NULL,
        user       TEXT NOT NULL,
        roles      TEXT NOT NULL,
        action     TEXT NOT NULL,
        target     TEXT NOT NULL,
        detail     TEXT NOT NULL,
        outcome    TEXT NOT NULL,
        request_id TEXT NOT NULL
    );
    """,
)


@dataclasses.dataclass(frozen=True, slots=True)
class Entry:
    """One action: who, what on which target, how it went."""

    user: str
    roles: tuple[str, ...]
    action: str  # instance.status, config.rollback, dead_letters.replay, dead_letters.discard
    target: str
    detail: str
    outcome: str  # "done", or why not
    request_id: str

    @property
    def ok(self) -> bool:
        return self.outcome == "done"


class Audit:
    """The audit trail: :meth:`record` writes, logs and publishes one entry."""

    def __init__(self, hub: Hub, db: Database) -> None:
        self.hub = hub
        self.db = db

    async def record(self, entry: Entry) -> None:
        at = now_iso()

        def insert(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO audit (at, user, roles, action, target, detail, outcome, request_id)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (at, entry.user, ",".join(entry.roles), entry.action, entry.target, entry.detail,
                 entry.outcome, entry.request_id),
            )  # fmt: skip

        await self.db.transaction(insert)
        logger.log(
            logging.INFO if entry.ok else logging.WARNING,
            "%s (roles %s) %s %s: %s: %s",
            entry.user, ",".join(entry.roles) or "-", entry.action, entry.target, entry.detail,
            entry.outcome,
        )  # fmt: skip
        await self.publish()

    async def latest(self, limit: int = SHOWN) -> list[dict[str, Any]]:
        def read(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return conn.execute(
                "SELECT id, at, user, roles, action, target, detail, outcome, request_id"
                " FROM audit ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()

        rows = await self.db.run(read)
        names = ("id", "at", "user", "roles", "action", "target", "detail", "outcome", "request_id")
        entries = [dict(zip(names, row, strict=True)) for row in rows]
        for entry in entries:
            entry["roles"] = [r for r in entry["roles"].split(",") if r]
        return entries

    async def publish(self) -> None:
        await self.hub.set("audit", {"entries": await self.latest()})
