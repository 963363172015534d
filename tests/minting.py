"""Minting test tokens: Ed25519 keys, their JWKS, and JWTs with any claims or header."""

from __future__ import annotations

import base64
import time
import uuid
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

ISSUER = "http://auth.test"
AUDIENCE = "essaim"


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class Signer:
    """One Ed25519 key named ``kid``: its public JWK and tokens signed with it."""

    def __init__(self, kid: str) -> None:
        self.kid = kid
        self.private = Ed25519PrivateKey.generate()
        self.public_raw = self.private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def jwk(self) -> dict[str, str]:
        return {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": b64url(self.public_raw),
            "kid": self.kid,
            "use": "sig",
            "alg": "EdDSA",
        }

    def claims(self, now: float | None = None, ttl: float = 300, **extra: Any) -> dict[str, Any]:
        now = time.time() if now is None else now
        base: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "u-42",
            "iat": int(now),
            "nbf": int(now),
            "exp": int(now + ttl),
            "jti": uuid.uuid4().hex,
            "roles": ["user"],
        }
        base.update(extra)
        return {k: v for k, v in base.items() if v is not None}

    def token(self, now: float | None = None, ttl: float = 300, **extra: Any) -> str:
        return jwt.encode(
            self.claims(now, ttl, **extra),
            self.private,
            algorithm="EdDSA",
            headers={"kid": self.kid},
        )


def jwks(*signers: Signer) -> dict[str, Any]:
    return {"keys": [s.jwk for s in signers]}
