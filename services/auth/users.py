"""The users table: name, password hash, roles; and the seed format the launcher uses.

User names are case-insensitive (``Alice`` and ``alice`` are one user). A
user's id (the token's ``sub``) never changes; roles are stored comma-joined.
"""

from __future__ import annotations

import dataclasses
import re
import sqlite3

from core.security.tokens import ROLE_RE

__all__ = ["SCHEMA", "USERNAME_RE", "Seed", "User", "find", "get", "parse_seed", "upsert"]

SCHEMA = """
CREATE TABLE users (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    username      TEXT NOT NULL UNIQUE COLLATE NOCASE,
    password_hash TEXT NOT NULL,
    roles         TEXT NOT NULL DEFAULT '',
    disabled      INTEGER NOT NULL DEFAULT 0,
    created_at    REAL NOT NULL
);
"""

USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$")


@dataclasses.dataclass(frozen=True)
class User:
    id: int
    username: str
    password_hash: str
    roles: tuple[str, ...]
    disabled: bool

    @property
    def sub(self) -> str:
        """The subject of this user's tokens (``X-User-Id`` behind the gateway)."""
        return str(self.id)


@dataclasses.dataclass(frozen=True)
class Seed:
    """A user the launcher asks for: created, or its password and roles reset, at start."""

    username: str
    password: str
    roles: tuple[str, ...]


_COLUMNS = "id, username, password_hash, roles, disabled"


def _user(row: tuple[int, str, str, str, int] | None) -> User | None:
    if row is None:
        return None
    uid, username, password_hash, roles, disabled = row
    return User(
        uid, username, password_hash, tuple(r for r in roles.split(",") if r), bool(disabled)
    )


def find(conn: sqlite3.Connection, username: str) -> User | None:
    """The user named ``username`` (any case), or None."""
    return _user(
        conn.execute(f"SELECT {_COLUMNS} FROM users WHERE username = ?", (username,)).fetchone()
    )


def get(conn: sqlite3.Connection, user_id: int) -> User | None:
    return _user(conn.execute(f"SELECT {_COLUMNS} FROM users WHERE id = ?", (user_id,)).fetchone())


def upsert(
    conn: sqlite3.Connection, username: str, password_hash: str, roles: tuple[str, ...], now: float
) -> None:
    """Create the user, or reset its password and roles (and enable it)."""
    conn.execute(
        "INSERT INTO users (username, password_hash, roles, created_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (username) DO UPDATE SET password_hash = excluded.password_hash, "
        "roles = excluded.roles, disabled = 0",
        (username, password_hash, ",".join(roles), now),
    )


def parse_seed(text: str) -> list[Seed]:
    """``name:password:role,role;name:password:role``: ``ValueError`` naming a bad entry.

    The password is everything between the first and the last colon, so it
    may contain colons (not semicolons); roles may be empty.
    """
    seeds: list[Seed] = []
    for number, entry in enumerate((e.strip() for e in text.split(";")), start=1):
        if not entry:
            continue
        username, sep1, rest = entry.partition(":")
        password, sep2, roles_text = rest.rpartition(":")
        if not (sep1 and sep2):
            raise ValueError(f"entry {number}: expected name:password:roles")
        if not USERNAME_RE.match(username):
            raise ValueError(
                f"entry {number}: user name {username!r}: expected {USERNAME_RE.pattern}"
            )
        if not password:
            raise ValueError(f"entry {number} ({username}): empty password")
        roles = tuple(r.strip() for r in roles_text.split(",") if r.strip())
        for role in roles:
            if not ROLE_RE.match(role):
                raise ValueError(
                    f"entry {number} ({username}): role {role!r}: expected {ROLE_RE.pattern}"
                )
        seeds.append(Seed(username, password, roles))
    return seeds
