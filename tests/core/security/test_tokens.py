from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from core.security.jwks import KeySet
from core.security.tokens import Identity, TokenError, UnknownKeyError, Verifier, bearer_token
from tests.minting import AUDIENCE, ISSUER, Signer, b64url, jwks

NOW = 1_800_000_000.0


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def verifier(*signers: Signer, clock: Clock | None = None, **kw: Any) -> Verifier:
    keys = KeySet()
    keys.load(jwks(*signers))
    return Verifier(keys, issuer=ISSUER, audience=AUDIENCE, leeway=0, clock=clock or Clock(), **kw)


def reason(v: Verifier, token: str) -> str:
    with pytest.raises(TokenError) as info:
        v.verify(token)
    return info.value.reason


def unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    def part(doc: dict[str, Any]) -> str:
        return b64url(json.dumps(doc).encode())

    return f"{part(header)}.{part(claims)}."


def hs256(secret: bytes, header: dict[str, Any], claims: dict[str, Any]) -> str:
    signing_input = unsigned(header, claims)[:-1]
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


def test_valid_token_gives_the_identity() -> None:
    a = Signer("a")
    token = a.token(NOW, sub="u-7", roles=["user", "admin"])
    identity = verifier(a).verify(token)
    assert identity.sub == "u-7"
    assert identity.roles == ("user", "admin")
    assert identity.roles_header == "user,admin"
    assert identity.exp == NOW + 300
    assert identity.claims["iss"] == ISSUER


def test_error_is_a_401_with_an_invalid_token_challenge() -> None:
    a = Signer("a")
    with pytest.raises(TokenError) as info:
        verifier(a).verify(a.token(NOW - 1000))
    exc = info.value
    assert exc.status == 401
    assert exc.headers["WWW-Authenticate"] == (
        'Bearer error="invalid_token", error_description="token expired"'
    )
    assert exc.body()["detail"] == "the bearer token is invalid: token expired"


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        ({"exp": int(NOW)}, "token expired"),
        ({"nbf": int(NOW + 60)}, "token not yet valid"),
        ({"iat": int(NOW + 60)}, "token issued in the future"),
        ({"iss": "http://evil.test"}, "wrong issuer"),
        ({"aud": "another-api"}, "wrong audience"),
        ({"exp": None}, "missing claim exp"),
        ({"sub": None}, "missing claim sub"),
        ({"exp": "tomorrow"}, "claim exp is not a number"),
        ({"sub": "u-1\r\nX-User-Roles: admin"}, "bad subject"),
        ({"roles": "admin"}, "bad roles claim"),
        ({"roles": ["ad min"]}, "bad roles claim"),
    ],
)
def test_claims_are_checked(claims: dict[str, Any], expected: str) -> None:
    a = Signer("a")
    assert reason(verifier(a), a.token(NOW, **claims)) == expected


def test_leeway_tolerates_small_clock_skew() -> None:
    a = Signer("a")
    clock = Clock()
    v = verifier(a, clock=clock)
    v.leeway = 30
    assert v.verify(a.token(NOW - 310, nbf=int(NOW - 310))).sub == "u-42"  # expired 10 s ago
    assert v.verify(a.token(NOW + 20)).sub == "u-42"  # nbf and iat 20 s ahead


def test_signature_by_another_key_under_the_same_kid_is_refused() -> None:
    a, impostor = Signer("a"), Signer("a")
    assert reason(verifier(a), impostor.token(NOW)) == "bad signature"


def test_tampered_payload_is_refused() -> None:
    a = Signer("a")
    header, _, signature = a.token(NOW, roles=["user"]).split(".")
    forged = b64url(json.dumps(a.claims(NOW, roles=["admin"])).encode())
    assert reason(verifier(a), f"{header}.{forged}.{signature}") == "bad signature"


def test_alg_none_is_refused() -> None:
    a = Signer("a")
    token = unsigned({"alg": "none", "typ": "JWT", "kid": "a"}, a.claims(NOW))
    assert reason(verifier(a), token) == "algorithm not allowed"


@pytest.mark.parametrize("secret", ["raw", "x"])
def test_hs256_signed_with_the_public_key_is_refused(secret: str) -> None:
    a = Signer("a")
    key = a.public_raw if secret == "raw" else a.jwk["x"].encode()
    token = hs256(key, {"alg": "HS256", "typ": "JWT", "kid": "a"}, a.claims(NOW))
    assert reason(verifier(a), token) == "algorithm not allowed"


def test_symmetric_key_in_the_key_set_is_never_used() -> None:
    secret = b"s3cret-s3cret-s3cret-s3cret-s3cret"
    keys = KeySet()
    keys.load({"keys": [{"kty": "oct", "k": b64url(secret), "kid": "h"}]})
    assert keys.keys == {}
    v = Verifier(keys, issuer=ISSUER, audience=AUDIENCE, clock=Clock())
    token = hs256(secret, {"alg": "HS256", "kid": "h"}, Signer("h").claims(NOW))
    assert reason(v, token) == "algorithm not allowed"


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "x" * 9000, "e30.e30.e30"])
def test_garbage_is_refused(token: str) -> None:
    assert reason(verifier(Signer("a")), token) in {
        "malformed token",
        "token too long",
        "algorithm not allowed",
    }


def test_unknown_kid_raises_unknown_key() -> None:
    with pytest.raises(UnknownKeyError) as info:
        verifier(Signer("a")).verify(Signer("b").token(NOW))
    assert info.value.status == 401
    assert info.value.reason == "unknown signing key"


def test_cached_token_returns_the_same_identity_without_verifying_again() -> None:
    a = Signer("a")
    v = verifier(a)
    token = a.token(NOW)
    first = v.verify(token)
    assert v.verify(token) is first
    assert (v.verified, v.hits) == (1, 1)


def test_cached_token_still_fails_after_exp() -> None:
    a = Signer("a")
    clock = Clock()
    v = verifier(a, clock=clock)
    token = a.token(NOW, ttl=60)
    v.verify(token)
    clock.now = NOW + 59.9
    assert v.verify(token).sub == "u-42"
    clock.now = NOW + 60
    assert reason(v, token) == "token expired"
    assert reason(v, token) == "token expired"  # no longer cached: fully verified, same answer


def test_cache_is_bounded() -> None:
    a = Signer("a")
    v = verifier(a, cache_size=2)
    tokens = [a.token(NOW, sub=f"u-{i}") for i in range(3)]
    for token in tokens:
        v.verify(token)
    v.verify(tokens[2])
    v.verify(tokens[0])  # the oldest was dropped: verified again
    assert (v.verified, v.hits) == (4, 1)


def test_token_of_a_withdrawn_key_fails_even_when_cached() -> None:
    a, b = Signer("a"), Signer("b")
    v = verifier(a, b)
    old = a.token(NOW)
    v.verify(old)
    v.keys.load(jwks(b))  # "a" rotated out
    with pytest.raises(UnknownKeyError):
        v.verify(old)
    assert v.verify(b.token(NOW)).sub == "u-42"


def test_bearer_token_parsing() -> None:
    assert bearer_token(None) is None
    assert bearer_token("Basic dXNlcjpwdw==") is None
    assert bearer_token("Bearer abc.def.ghi") == "abc.def.ghi"
    assert bearer_token("bearer   abc ") == "abc"
    with pytest.raises(TokenError):
        bearer_token("Bearer ")


# --------------------------------------------------------------------------- with a JWKS URL


class JWKSServer:
    """A JWKS endpoint on loopback whose document the test changes."""

    def __init__(self, *signers: Signer) -> None:
        self.doc: dict[str, Any] = jwks(*signers)
        self.status = 200
        self.requests = 0
        self.app = web.Application()
        self.app.router.add_get("/.well-known/jwks.json", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self.status != 200:
            return web.Response(status=self.status)
        return web.json_response(self.doc)


ServerFactory = Callable[..., Awaitable[TestServer]]


async def served(aiohttp_server: ServerFactory, fake: JWKSServer) -> str:
    server = await aiohttp_server(fake.app)
    return str(server.make_url("/.well-known/jwks.json"))


@pytest.fixture
async def keysets() -> AsyncIterator[Callable[..., KeySet]]:
    """``keysets(url, **options)``: key sets closed after the test."""
    made: list[KeySet] = []

    def make(url: str, **options: Any) -> KeySet:
        made.append(KeySet(url, **options))
        return made[-1]

    yield make
    for keys in made:
        await keys.close()


KeySets = Callable[..., KeySet]


async def test_unknown_kid_refreshes_the_key_set_then_verifies(
    aiohttp_server: ServerFactory, keysets: KeySets
) -> None:
    a, b = Signer("a"), Signer("b")
    fake = JWKSServer(a)
    keys = keysets(await served(aiohttp_server, fake))
    assert await keys.refresh(force=True)
    v = Verifier(keys, issuer=ISSUER, audience=AUDIENCE)
    fake.doc = jwks(a, b)  # the auth service rotated to "b"
    identities = await asyncio.gather(*(v.verify_async(b.token()) for _ in range(20)))
    assert {i.sub for i in identities} == {"u-42"}
    assert fake.requests == 2  # the 20 concurrent unknown kids shared one fetch


async def test_unknown_kid_after_refresh_is_refused_and_refreshes_are_rate_limited(
    aiohttp_server: ServerFactory, keysets: KeySets
) -> None:
    a = Signer("a")
    fake = JWKSServer(a)
    clock = Clock(100.0)
    keys = keysets(await served(aiohttp_server, fake), min_refresh_interval=10, clock=clock)
    v = Verifier(keys, issuer=ISSUER, audience=AUDIENCE)
    for _ in range(5):
        with pytest.raises(TokenError) as info:
            await v.verify_async(Signer("forged").token())
        assert info.value.reason == "unknown signing key"
    assert fake.requests == 1
    assert keys.limited == 4
    clock.now += 10
    with pytest.raises(TokenError):
        await v.verify_async(Signer("forged").token())
    assert fake.requests == 2


async def test_token_from_a_rotated_out_key_is_refused(
    aiohttp_server: ServerFactory, keysets: KeySets
) -> None:
    a, b = Signer("a"), Signer("b")
    fake = JWKSServer(a, b)
    keys = keysets(await served(aiohttp_server, fake))
    assert await keys.refresh()
    fake.doc = jwks(b)
    assert await keys.refresh(force=True)
    with pytest.raises(TokenError) as info:
        await Verifier(keys, issuer=ISSUER, audience=AUDIENCE).verify_async(a.token())
    assert info.value.reason == "unknown signing key"


async def test_last_good_key_set_is_kept_while_the_auth_service_is_away(
    aiohttp_server: ServerFactory, keysets: KeySets
) -> None:
    a = Signer("a")
    fake = JWKSServer(a)
    url = await served(aiohttp_server, fake)
    keys = keysets(url)
    assert await keys.refresh()
    fake.status = 503
    assert not await keys.refresh(force=True)
    fake.doc = {"not": "a key set"}
    fake.status = 200
    assert not await keys.refresh(force=True)
    keys.url = url.replace("/.well-known", "/nowhere")  # a 404
    assert not await keys.refresh(force=True)
    assert keys.failures == 3
    v = Verifier(keys, issuer=ISSUER, audience=AUDIENCE)
    assert v.verify(a.token()).sub == "u-42"


async def test_key_set_refreshes_periodically(
    aiohttp_server: ServerFactory, keysets: KeySets
) -> None:
    from core.testing import wait_until

    a, b = Signer("a"), Signer("b")
    fake = JWKSServer(a)
    keys = keysets(await served(aiohttp_server, fake), refresh_interval=0.05)
    task = asyncio.create_task(keys.run())
    try:
        await wait_until(lambda: keys.get("a") is not None, message="first fetch")
        fake.doc = jwks(b)
        await wait_until(lambda: keys.get("b") is not None and keys.get("a") is None)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_identity_roles() -> None:
    identity = Identity("u", ("user",), NOW, {})
    assert identity.has_any(frozenset({"user", "admin"}))
    assert not identity.has_any(frozenset({"admin"}))
