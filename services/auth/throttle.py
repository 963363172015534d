"""Throttling password guesses: token buckets per user name and per client address.

Every login attempt first takes one token from the bucket of its user name
and one from the bucket of its address, atomically (one SQLite transaction on
the database's single writer); if either bucket is empty the attempt is
refused before any password is checked, with the seconds until a token is
back. A successful login gives its tokens back, so only failures count: a
bucket of ``burst`` tokens refilled at ``per_minute`` lets ``burst`` wrong
guesses through at once, then ``per_minute`` a minute. Taking the token
before checking the password means concurrent guesses can't slip through
together.

User names are throttled whether or not the user exists, so that the
throttle itself never tells which names are real. Buckets that have filled
up again are deleted, at most once a minute.
"""

from __future__ import annotations

import dataclasses
import math
import sqlite3

__all__ = ["SCHEMA", "Bucket", "LoginThrottle"]

SCHEMA = """
CREATE TABLE login_buckets (
    scope  TEXT NOT NULL,
    key    TEXT NOT NULL,
    tokens REAL NOT NULL,
    ts     REAL NOT NULL,
    PRIMARY KEY (scope, key)
) WITHOUT ROWID;
"""


@dataclasses.dataclass(frozen=True)
class Bucket:
    """At most ``burst`` failures at once, then ``per_minute`` a minute."""

    burst: int
    per_minute: float

    def __post_init__(self) -> None:
        if self.burst < 1 or self.per_minute <= 0:
            raise ValueError(f"expected burst >= 1 and per_minute > 0, got {self}")

    @property
    def per_second(self) -> float:
        return self.per_minute / 60.0


class LoginThrottle:
    """The user and address buckets; methods run inside a database transaction."""

    def __init__(self, user: Bucket, address: Bucket) -> None:
        self.buckets = {"user": user, "addr": address}
        self._pruned_at = -math.inf

    def take(self, conn: sqlite3.Connection, username: str, address: str, now: float) -> int:
        """Take a token for this attempt: 0, or the seconds to wait when refused."""
        keys = {"user": username.lower(), "addr": address}
        levels = {scope: self._level(conn, scope, key, now) for scope, key in keys.items()}
        waits = [
            math.ceil((1 - levels[scope]) / self.buckets[scope].per_second)
            for scope in keys
            if levels[scope] < 1
        ]
        if waits:
            return max(1, *waits)
        for scope, key in keys.items():
            self._store(conn, scope, key, levels[scope] - 1, now)
        if now - self._pruned_at > 60:
            self._prune(conn, now)
        return 0

    def give_back(self, conn: sqlite3.Connection, username: str, address: str, now: float) -> None:
        """Return the tokens of an attempt that succeeded."""
        for scope, key in (("user", username.lower()), ("addr", address)):
            level = self._level(conn, scope, key, now)
            self._store(conn, scope, key, min(self.buckets[scope].burst, level + 1), now)

    def _level(self, conn: sqlite3.Connection, scope: str, key: str, now: float) -> float:
        bucket = self.buckets[scope]
        row = conn.execute(
            "SELECT tokens, ts FROM login_buckets WHERE scope = ? AND key = ?", (scope, key)
        ).fetchone()
        if row is None:
            return float(bucket.burst)
        tokens, ts = row
        return float(min(bucket.burst, tokens + max(0.0, now - ts) * bucket.per_second))

    def _store(
        self, conn: sqlite3.Connection, scope: str, key: str, tokens: float, now: float
    ) -> None:
        conn.execute(
            "INSERT INTO login_buckets (scope, key, tokens, ts) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (scope, key) DO UPDATE SET tokens = excluded.tokens, ts = excluded.ts",
            (scope, key, tokens, now),
        )

    def _prune(self, conn: sqlite3.Connection, now: float) -> None:
        self._pruned_at = now
        for scope, bucket in self.buckets.items():
            conn.execute(
                "DELETE FROM login_buckets WHERE scope = ? AND ts < ? - (? - tokens) / ?",
                (scope, now, bucket.burst, bucket.per_second),
            )
