"""The auth service's public keys, by ``kid``, as a verifier sees them.

A :class:`KeySet` holds the Ed25519 public keys of one issuer, read from a
JSON Web Key Set (RFC 7517) at a URL or given as a document. It refreshes
periodically (:meth:`KeySet.run`) and on demand when a token names a ``kid``
it does not know (:meth:`KeySet.refresh`), at most once per
``min_refresh_interval`` so that tokens with made-up ``kid`` values cannot
turn the gateway into a load generator against the auth service. When a fetch
fails, the last good set stays in force: verification never depends on the
auth service being up, only on its keys having been seen once.

Only keys that can verify ``EdDSA`` signatures are kept (``kty`` ``OKP``,
``crv`` ``Ed25519``); any other key in the document is ignored, so an RSA or
symmetric key can never be picked for an algorithm-confusion attack.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from jwt import PyJWK
from jwt.exceptions import PyJWKError

from core import log
from core.redis import Backoff

logger = log.get("jwks")

__all__ = ["MAX_JWKS_BYTES", "KeySet", "parse_jwks"]

#: A key set larger than this is refused (a handful of keys is a few hundred bytes).
MAX_JWKS_BYTES = 64 * 1024


def parse_jwks(doc: Any) -> dict[str, Ed25519PublicKey]:
    """The Ed25519 signing keys of a JWKS document, by ``kid``.

    Raises ``ValueError`` when ``doc`` is not a JWKS (``{"keys": [...]}``).
    Keys without a ``kid``, of another type or curve, or marked for another
    use or algorithm are skipped. Only the public part (``x``) is read.
    """
    if not isinstance(doc, Mapping) or not isinstance(doc.get("keys"), list):
        raise ValueError('not a JWK set: expected {"keys": [...]}')
    keys: dict[str, Ed25519PublicKey] = {}
    for jwk in doc["keys"]:
        if not isinstance(jwk, Mapping):
            continue
        kid = jwk.get("kid")
        if not isinstance(kid, str) or not kid:
            continue
        if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
            continue
        if jwk.get("use", "sig") != "sig" or jwk.get("alg", "EdDSA") != "EdDSA":
            continue
        x = jwk.get("x")
        if not isinstance(x, str):
            continue
        try:
            key = PyJWK({"kty": "OKP", "crv": "Ed25519", "x": x}, algorithm="EdDSA").key
        except (PyJWKError, ValueError, TypeError):
            logger.warning("JWKS: key %r is not a valid Ed25519 public key; skipped", kid)
            continue
        if isinstance(key, Ed25519PrivateKey):  # pragma: no cover - "d" is never passed
            key = key.public_key()
        if isinstance(key, Ed25519PublicKey):
            keys[kid] = key
    return keys


class KeySet:
    """Ed25519 public keys by ``kid``: fetched from ``url``, or loaded with :meth:`load`.

    :meth:`get` is synchronous and never waits. ``generation`` increases each
    time a ``kid`` disappears from the set, so that caches of verified tokens
    know to forget tokens whose key was withdrawn. ``fetches``, ``failures``
    and ``limited`` (refreshes refused by the rate limit) are for metrics;
    ``last_success`` is the monotonic time of the last good fetch.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        refresh_interval: float = 300.0,
        min_refresh_interval: float = 10.0,
        timeout: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.refresh_interval = refresh_interval
        self.min_refresh_interval = min_refresh_interval
        self.timeout = timeout
        self.clock = clock
        self.keys: dict[str, Ed25519PublicKey] = {}
        self.generation = 0
        self.fetches = 0
        self.failures = 0
        self.limited = 0
        self.last_success: float | None = None
        self._last_demand = -math.inf
        self._inflight: asyncio.Future[bool] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._failing = False

    def get(self, kid: str) -> Ed25519PublicKey | None:
        """The key named ``kid``, or None when the set does not hold it."""
        return self.keys.get(kid)

    def load(self, doc: Any) -> None:
        """Replace the set by the keys of JWKS document ``doc`` (``ValueError`` if not one)."""
        keys = parse_jwks(doc)
        if self.keys.keys() - keys.keys():
            self.generation += 1
        self.keys = keys

    async def refresh(self, *, force: bool = False) -> bool:
        """Fetch the set now; True when a fetch ran (or was joined) and succeeded.

        Concurrent callers share one fetch. Unless ``force`` (the periodic
        refresh), a call less than ``min_refresh_interval`` seconds after the
        last unforced fetch returns False at once without fetching: the
        periodic refresh never uses up the budget of on-demand ones. A failed
        fetch keeps the last good set.
        """
        if self._inflight is not None:
            return await asyncio.shield(self._inflight)
        if self.url is None:
            return False
        if not force:
            now = self.clock()
            if now - self._last_demand < self.min_refresh_interval:
                self.limited += 1
                return False
            self._last_demand = now
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._inflight = future
        try:
            ok = await self._fetch(self.url)
            future.set_result(ok)
            return ok
        except asyncio.CancelledError:
            future.set_result(False)  # joiners were not cancelled: they see a failed fetch
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: joiners re-raise it, nobody else must log it
            raise
        finally:
            self._inflight = None

    async def _fetch(self, url: str) -> bool:
        self.fetches += 1
        try:
            if self._session is None:
                self._session = aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=self.timeout)
                )
            async with self._session.get(url, headers={"Accept": "application/json"}) as resp:
                if resp.status != 200:
                    raise ValueError(f"HTTP {resp.status}")
                body = await resp.content.read(MAX_JWKS_BYTES + 1)
                if len(body) > MAX_JWKS_BYTES:
                    raise ValueError(f"the key set is over {MAX_JWKS_BYTES} bytes")
            self.load(orjson.loads(body))
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            self.failures += 1
            if not self._failing:
                logger.warning(
                    "JWKS: fetching %s failed (%s); keeping the %d known keys",
                    url,
                    exc or type(exc).__name__,
                    len(self.keys),
                )
            self._failing = True
            return False
        if self._failing:
            logger.info("JWKS: %s answers again (%d keys)", url, len(self.keys))
        self._failing = False
        self.last_success = self.clock()
        return True

    async def run(self) -> None:
        """Refresh every ``refresh_interval`` seconds until cancelled.

        Until the first success (and after a failure) it retries sooner, with
        backoff capped at ``refresh_interval``.
        """
        backoff = Backoff(base=0.2, cap=self.refresh_interval)
        while True:
            if await self.refresh(force=True):
                backoff.reset()
                await asyncio.sleep(self.refresh_interval)
            else:
                await backoff.sleep()

    async def __aenter__(self) -> KeySet:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session (the keys stay usable)."""
        if self._session is not None:
            await self._session.close()
            self._session = None
