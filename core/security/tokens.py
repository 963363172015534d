"""Verifying access tokens: EdDSA JWTs checked against a :class:`~core.security.jwks.KeySet`.

:class:`Verifier` turns a bearer token into an :class:`Identity` or raises
:class:`TokenError` (401 with ``WWW-Authenticate: Bearer error="invalid_token"``).
The signature is checked by PyJWT with ``algorithms=["EdDSA"]`` and nothing
else, against the key named by the token's ``kid``: ``alg: none``, an HS256
token "signed" with the public key, or a key of another type are refused
before any key is used. ``iss`` and ``aud`` must match; ``exp``, ``nbf`` and
``iat`` are checked against the verifier's own clock with ``leeway`` seconds
of tolerance, so that a cached verification and a full one always agree.

A verified token is cached, keyed by the whole token string (signature
included, so a forged token never hits), until it expires: the synchronous
:meth:`Verifier.verify` of a token already seen costs a dict lookup and a
clock read. The cache is bounded; when full it drops the oldest entry, which
is the one closest to expiry when tokens share one lifetime. When a key is
withdrawn from the key set, the whole cache is forgotten.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import jwt
from jwt.exceptions import (
    DecodeError,
    InvalidAlgorithmError,
    InvalidAudienceError,
    InvalidIssuerError,
    InvalidSignatureError,
    InvalidTokenError,
    MissingRequiredClaimError,
)

from core.errors import Unauthorized
from core.security.jwks import KeySet

__all__ = [
    "ROLE_RE",
    "SUBJECT_RE",
    "Identity",
    "TokenError",
    "UnknownKeyError",
    "Verifier",
    "bearer_token",
]

#: A role name, as in route policies (``roles:a,b``).
ROLE_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
#: A subject that can travel in a header as it is: visible ASCII, no comma.
SUBJECT_RE = re.compile(r"^[!-+\--~]{1,256}$")
#: Longer tokens are refused unread (ours are about 400 bytes).
MAX_TOKEN_BYTES = 8192
#: Claims every access token must carry.
REQUIRED_CLAIMS = ("exp", "iat", "sub", "iss", "aud")


class TokenError(Unauthorized):
    """The bearer token is not acceptable; ``reason`` says why, in a few words.

    Answered as 401 with ``WWW-Authenticate: Bearer error="invalid_token",
    error_description="<reason>"`` (RFC 6750 section 3.1).
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(
            f"the bearer token is invalid: {reason}",
            headers={
                "WWW-Authenticate": f'Bearer error="invalid_token", error_description="{reason}"'
            },
        )


class UnknownKeyError(TokenError):
    """The token's ``kid`` is not in the key set (yet): a refresh may help."""

    def __init__(self, kid: str) -> None:
        self.kid = kid
        super().__init__("unknown signing key")


@dataclasses.dataclass(frozen=True, slots=True)
class Identity:
    """Who a verified token speaks for.

    ``sub`` is the user id, ``roles`` the granted roles in token order,
    ``exp`` the expiry (seconds since the epoch), ``claims`` every claim
    (read-only: one identity is shared by every request of its token).
    ``roles_header`` is ``roles`` comma-joined, as sent in ``X-User-Roles``.
    """

    sub: str
    roles: tuple[str, ...]
    exp: float
    claims: Mapping[str, Any]
    roles_header: str = ""

    def has_any(self, roles: frozenset[str]) -> bool:
        """Whether this identity holds at least one of ``roles``."""
        return not roles.isdisjoint(self.roles)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value.

    None when there is no header or it uses another scheme (the request is
    then anonymous); :class:`TokenError` when the scheme is Bearer but no
    token follows.
    """
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = token.strip()
    if not token:
        raise TokenError("empty bearer token")
    return token


class Verifier:
    """Verifies access tokens of ``issuer`` for ``audience`` against ``keys``.

    ``clock`` gives seconds since the epoch (injectable for tests);
    ``cache_size`` bounds the cache of verified tokens. ``hits``, ``verified``
    and ``rejected`` count outcomes for metrics.
    """

    def __init__(
        self,
        keys: KeySet,
        *,
        issuer: str,
        audience: str,
        leeway: float = 10.0,
        clock: Callable[[], float] = time.time,
        cache_size: int = 10_000,
    ) -> None:
        if cache_size < 1:
            raise ValueError(f"cache_size: expected >= 1, got {cache_size}")
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway
        self.clock = clock
        self.cache_size = cache_size
        self.hits = 0
        self.verified = 0
        self.rejected = 0
        self._cache: dict[str, Identity] = {}
        self._generation = keys.generation

    def verify(self, token: str) -> Identity:
        """The identity of ``token``, without waiting; :class:`TokenError` if invalid.

        Raises :class:`UnknownKeyError` when the ``kid`` is unknown: call
        :meth:`verify_async` then, which refreshes the key set first.
        """
        if self._generation != self.keys.generation:
            self._cache.clear()
            self._generation = self.keys.generation
        identity = self._cache.get(token)
        if identity is not None:
            if self.clock() < identity.exp + self.leeway:
                self.hits += 1
                return identity
            del self._cache[token]
            self.rejected += 1
            raise TokenError("token expired")
        try:
            identity = self._verify(token)
        except TokenError:
            self.rejected += 1
            raise
        self.verified += 1
        cache = self._cache
        if len(cache) >= self.cache_size:
            del cache[next(iter(cache))]
        cache[token] = identity
        return identity

    async def verify_async(self, token: str) -> Identity:
        """:meth:`verify`, refreshing the key set once when the ``kid`` is unknown.

        The refresh is rate-limited by the key set; a ``kid`` still unknown
        after it is a :class:`TokenError`.
        """
        try:
            return self.verify(token)
        except UnknownKeyError:
            await self.keys.refresh()
        return self.verify(token)

    def forget(self) -> None:
        """Drop every cached verification."""
        self._cache.clear()

    def _verify(self, token: str) -> Identity:
        if len(token) > MAX_TOKEN_BYTES:
            raise TokenError("token too long")
        try:
            header = jwt.get_unverified_header(token)
        except DecodeError:
            raise TokenError("malformed token") from None
        if header.get("alg") != "EdDSA":
            raise TokenError("algorithm not allowed")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise TokenError("no key id")
        key = self.keys.get(kid)
        if key is None:
            raise UnknownKeyError(kid)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=["EdDSA"],
                issuer=self.issuer,
                audience=self.audience,
                options={
                    "require": list(REQUIRED_CLAIMS),
                    # Times are checked below against self.clock, as the cache does.
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except InvalidSignatureError:
            raise TokenError("bad signature") from None
        except InvalidAlgorithmError:
            raise TokenError("algorithm not allowed") from None
        except InvalidIssuerError:
            raise TokenError("wrong issuer") from None
        except InvalidAudienceError:
            raise TokenError("wrong audience") from None
        except MissingRequiredClaimError as exc:
            raise TokenError(f"missing claim {exc.claim}") from None
        except DecodeError:
            raise TokenError("malformed token") from None
        except InvalidTokenError:
            raise TokenError("invalid token") from None
        return self._identity(claims)

    def _identity(self, claims: dict[str, Any]) -> Identity:
        now = self.clock()
        exp = _number(claims, "exp")
        if now >= exp + self.leeway:
            raise TokenError("token expired")
        if "nbf" in claims and now + self.leeway < _number(claims, "nbf"):
            raise TokenError("token not yet valid")
        if now + self.leeway < _number(claims, "iat"):
            raise TokenError("token issued in the future")
        sub = claims["sub"]
        if not isinstance(sub, str) or not SUBJECT_RE.match(sub):
            raise TokenError("bad subject")
        raw_roles = claims.get("roles", [])
        if not isinstance(raw_roles, list) or not all(
            isinstance(r, str) and ROLE_RE.match(r) for r in raw_roles
        ):
            raise TokenError("bad roles claim")
        roles = tuple(raw_roles)
        return Identity(sub, roles, exp, MappingProxyType(claims), ",".join(roles))


def _number(claims: Mapping[str, Any], name: str) -> float:
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenError(f"claim {name} is not a number")
    return float(value)
