"""Password hashes: scrypt (RFC 7914) with a random salt, in a self-describing string.

A hash reads ``scrypt$<log2 N>$<r>$<p>$<salt>$<key>`` (salt and key in
unpadded base64url), so that raising the cost later leaves old hashes
verifiable. Hashing is deliberately slow and memory-hard (N = 2^15, r = 8:
32 MiB and about 0.1 s by default): run it off the event loop.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

__all__ = ["DEFAULT_COST", "hash_password", "verify_password"]

DEFAULT_COST = 15
_R, _P, _KEY_BYTES, _SALT_BYTES = 8, 1, 32, 16


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _scrypt(password: str, salt: bytes, cost: int, r: int, p: int) -> bytes:
    n = 1 << cost
    return hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, maxmem=256 * n * r, dklen=_KEY_BYTES
    )


def hash_password(password: str, cost: int = DEFAULT_COST) -> str:
    """A new salted hash of ``password``; ``cost`` is log2 of scrypt's N (10-20)."""
    if not 10 <= cost <= 20:
        raise ValueError(f"cost: expected 10-20 (log2 of scrypt's N), got {cost}")
    salt = secrets.token_bytes(_SALT_BYTES)
    key = _scrypt(password, salt, cost, _R, _P)
    return f"scrypt${cost}${_R}${_P}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored``; False for a malformed hash (never raises)."""
    try:
        scheme, cost, r, p, salt, key = stored.split("$")
        if scheme != "scrypt" or not 10 <= int(cost) <= 20:
            return False
        expected = _unb64(key)
        actual = _scrypt(password, _unb64(salt), int(cost), int(r), int(p))
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(actual, expected)
