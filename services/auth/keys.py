"""The auth service's signing keys: one signs, the next is published ahead, old ones linger.

A :class:`KeyRing` always holds a *current* key, which signs every new
token, and a *next* key, already published in the JWKS but not yet signing.
Rotation promotes next to current, retires the old current and makes a new
next. Since verifiers (the gateway) refresh their key set periodically, they
know the new signing key before its first token arrives: a rotation fails no
request, even when the verifier's on-demand refresh is rate-limited. A
retired key stays published until every token it signed has expired
(``token_ttl`` plus ``leeway`` after its retirement), then is dropped.

Keys are Ed25519; ``kid`` is the key's RFC 7638 thumbprint. The ring is
plain data with an injected clock: the service persists :meth:`KeyRing.rows`
after every change and rebuilds the ring from them at start.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import time
from collections.abc import Callable, Iterable
from typing import Any

import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = ["KeyRing", "KeyRow", "SigningKey"]

#: ``(kid, private key (raw, base64url), created_at, activated_at, retired_at)``.
KeyRow = tuple[str, str, float, float | None, float | None]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclasses.dataclass(frozen=True)
class SigningKey:
    """One Ed25519 key pair and its life: created, signing since, retired since."""

    kid: str
    private: Ed25519PrivateKey
    created_at: float
    activated_at: float | None = None
    retired_at: float | None = None

    @classmethod
    def generate(cls, now: float) -> SigningKey:
        private = Ed25519PrivateKey.generate()
        return cls(_thumbprint(_public_x(private)), private, now)

    @property
    def jwk(self) -> dict[str, str]:
        """The public JWK, with ``kid``, ``use`` and ``alg``."""
        return {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": _public_x(self.private),
            "kid": self.kid,
            "use": "sig",
            "alg": "EdDSA",
        }

    def row(self) -> KeyRow:
        raw = self.private.private_bytes_raw()
        return (self.kid, _b64(raw), self.created_at, self.activated_at, self.retired_at)

    @classmethod
    def from_row(cls, row: KeyRow) -> SigningKey:
        kid, private, created_at, activated_at, retired_at = row
        key = Ed25519PrivateKey.from_private_bytes(_unb64(private))
        return cls(kid, key, created_at, activated_at, retired_at)


def _public_x(private: Ed25519PrivateKey) -> str:
    return _b64(private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))


def _thumbprint(x: str) -> str:
    """RFC 7638: SHA-256 of the required members in lexical order, no spaces."""
    canonical = orjson.dumps({"crv": "Ed25519", "kty": "OKP", "x": x}, option=orjson.OPT_SORT_KEYS)
    return _b64(hashlib.sha256(canonical).digest())


class KeyRing:
    """The current, next and retired signing keys of one issuer.

    ``rotation_interval`` is how long a key signs before :meth:`maintain`
    rotates; ``token_ttl + leeway`` how long a retired key stays published.
    """

    def __init__(
        self,
        keys: Iterable[SigningKey] = (),
        *,
        token_ttl: float,
        rotation_interval: float,
        leeway: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.keys = list(keys)
        self.token_ttl = token_ttl
        self.rotation_interval = rotation_interval
        self.leeway = leeway
        self.clock = clock
        self.rotations = 0

    @property
    def current(self) -> SigningKey:
        """The key that signs; :meth:`maintain` must have run once."""
        return next(k for k in self.keys if k.activated_at is not None and k.retired_at is None)

    @property
    def next(self) -> SigningKey:
        """The key published ahead, which signs after the next rotation."""
        return next(k for k in self.keys if k.activated_at is None)

    def maintain(self) -> bool:
        """Make the ring whole and current; True when it changed (persist it then).

        Creates the current and next keys when missing, rotates when the
        current key has signed for ``rotation_interval``, and drops retired
        keys whose tokens have all expired.
        """
        now = self.clock()
        changed = False
        if not any(k.activated_at is None for k in self.keys):
            self.keys.append(SigningKey.generate(now))
            changed = True
        signing = [k for k in self.keys if k.activated_at is not None and k.retired_at is None]
        if not signing:
            self._promote(now)
            changed = True
        elif now >= (signing[0].activated_at or now) + self.rotation_interval:
            self.rotate()
            return True
        kept = [
            k
            for k in self.keys
            if k.retired_at is None or now < k.retired_at + self.token_ttl + self.leeway
        ]
        if len(kept) != len(self.keys):
            self.keys = kept
            changed = True
        return changed

    def rotate(self) -> SigningKey:
        """Promote the next key to current now, retire the old one; the new current key."""
        now = self.clock()
        self.keys = [
            dataclasses.replace(k, retired_at=now)
            if k.activated_at is not None and k.retired_at is None
            else k
            for k in self.keys
        ]
        if not any(k.activated_at is None for k in self.keys):
            self.keys.append(SigningKey.generate(now))
        self._promote(now)
        self.rotations += 1
        self.maintain()
        return self.current

    def _promote(self, now: float) -> None:
        pending = self.next
        self.keys[self.keys.index(pending)] = dataclasses.replace(pending, activated_at=now)
        self.keys.append(SigningKey.generate(now))

    def jwks(self) -> dict[str, Any]:
        """The JWKS document: current, next and still-valid retired keys, current first."""
        now = self.clock()
        order = sorted(
            (
                k
                for k in self.keys
                if k.retired_at is None or now < k.retired_at + self.token_ttl + self.leeway
            ),
            key=lambda k: (k.retired_at is not None, k.activated_at is None, -(k.created_at)),
        )
        return {"keys": [k.jwk for k in order]}

    def sign(self, claims: dict[str, Any]) -> str:
        """``claims`` as a JWT signed by the current key (``alg`` EdDSA, ``typ`` at+jwt)."""
        key = self.current
        return jwt.encode(
            claims, key.private, algorithm="EdDSA", headers={"kid": key.kid, "typ": "at+jwt"}
        )

    def rows(self) -> list[KeyRow]:
        return [k.row() for k in self.keys]

    @classmethod
    def from_rows(cls, rows: Iterable[KeyRow], **options: Any) -> KeyRing:
        return cls((SigningKey.from_row(r) for r in rows), **options)
