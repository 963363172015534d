"""Refresh tokens: opaque, stored hashed, single-use, revocable by family.

A refresh token is 32 random bytes (base64url); only its SHA-256 is stored,
so a copy of the database yields no usable token. Each use returns a new
token of the same *family* and marks the old one used. Presenting a used
token again means that it was stolen (either the thief or the user used it
first: RFC 9700 section 4.14.2), so the whole family is revoked. Revoking a
token revokes its family: the user's session ends on every copy.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import sqlite3

__all__ = ["SCHEMA", "InvalidRefreshToken", "issue", "revoke", "use"]

SCHEMA = """
CREATE TABLE refresh_tokens (
    hash       TEXT PRIMARY KEY,
    user_id    INTEGER NOT NULL,
    family     TEXT NOT NULL,
    issued_at  REAL NOT NULL,
    expires_at REAL NOT NULL,
    used_at    REAL,
    revoked_at REAL
) WITHOUT ROWID;
CREATE INDEX refresh_tokens_family ON refresh_tokens (family);
CREATE INDEX refresh_tokens_expiry ON refresh_tokens (expires_at);
"""


class InvalidRefreshToken(Exception):
    """The token is unknown, expired, revoked or already used; ``reason`` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue(
    conn: sqlite3.Connection, user_id: int, now: float, ttl: float, family: str | None = None
) -> str:
    """A new refresh token for ``user_id`` valid ``ttl`` seconds (a new family unless given)."""
    token = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    conn.execute(
        "INSERT INTO refresh_tokens (hash, user_id, family, issued_at, expires_at) "
        "VALUES (?, ?, ?, ?, ?)",
        (_hash(token), user_id, family or secrets.token_hex(16), now, now + ttl),
    )
    return token


def use(
    conn: sqlite3.Connection, token: str, now: float, ttl: float
) -> tuple[int, str] | InvalidRefreshToken:
    """Spend ``token``: ``(user_id, new token)``, or the reason it can't be used.

    The refusal is returned, not raised, so that the transaction around this
    call commits what it did: a token used twice revokes its family (the
    second use is refused, and so is every later use of any token of the
    family).
    """
    row = conn.execute(
        "SELECT user_id, family, expires_at, used_at, revoked_at FROM refresh_tokens "
        "WHERE hash = ?",
        (_hash(token),),
    ).fetchone()
    if row is None:
        return InvalidRefreshToken("unknown")
    user_id, family, expires_at, used_at, revoked_at = row
    if revoked_at is not None:
        return InvalidRefreshToken("revoked")
    if used_at is not None:
        _revoke_family(conn, family, now)
        return InvalidRefreshToken("reused: the session is revoked")
    if now >= expires_at:
        return InvalidRefreshToken("expired")
    conn.execute("UPDATE refresh_tokens SET used_at = ? WHERE hash = ?", (now, _hash(token)))
    conn.execute("DELETE FROM refresh_tokens WHERE expires_at < ?", (now,))
    return user_id, issue(conn, user_id, now, ttl, family)


def revoke(conn: sqlite3.Connection, token: str, now: float) -> bool:
    """Revoke the family of ``token``; False when the token is unknown."""
    row = conn.execute(
        "SELECT family FROM refresh_tokens WHERE hash = ?", (_hash(token),)
    ).fetchone()
    if row is None:
        return False
    _revoke_family(conn, row[0], now)
    return True


def _revoke_family(conn: sqlite3.Connection, family: str, now: float) -> None:
    conn.execute(
        "UPDATE refresh_tokens SET revoked_at = ? WHERE family = ? AND revoked_at IS NULL",
        (now, family),
    )
