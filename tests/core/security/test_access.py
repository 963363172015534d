from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from core.errors import Forbidden, Unauthorized, problem_middleware
from core.security.access import IDENTITY, Policy, access_middleware, authorize, authorize_async
from core.security.jwks import KeySet
from core.security.tokens import Identity, TokenError, Verifier
from tests.minting import AUDIENCE, ISSUER, Signer, jwks


def verifier(*signers: Signer) -> Verifier:
    keys = KeySet()
    keys.load(jwks(*signers))
    return Verifier(keys, issuer=ISSUER, audience=AUDIENCE)


USER = Identity("u-1", ("user",), 2e9, {})
ADMIN = Identity("u-2", ("user", "admin"), 2e9, {})


def test_policy_parsing() -> None:
    assert Policy.parse("public").public
    assert Policy.parse("authenticated") == Policy("authenticated")
    assert Policy.parse("roles:admin,ops") == Policy("roles", frozenset({"admin", "ops"}))
    assert str(Policy.parse("roles:ops,admin")) == "roles:admin,ops"
    for bad in ("", "private", "roles:", "roles:a b", "roles:admin,"):
        with pytest.raises(ValueError, match="expected"):
            Policy.parse(bad)


def test_public_lets_anyone_through() -> None:
    Policy.parse("public").check(None)


def test_missing_identity_is_401_with_a_bearer_challenge() -> None:
    for text in ("authenticated", "roles:admin"):
        with pytest.raises(Unauthorized) as info:
            Policy.parse(text).check(None)
        assert info.value.status == 401
        assert info.value.headers["WWW-Authenticate"] == "Bearer"


def test_missing_role_is_403() -> None:
    policy = Policy.parse("roles:admin,ops")
    with pytest.raises(Forbidden) as info:
        policy.check(USER)
    assert info.value.status == 403
    assert info.value.detail == "this route needs one of the roles: admin, ops"
    assert 'error="insufficient_scope"' in info.value.headers["WWW-Authenticate"]
    policy.check(ADMIN)
    Policy.parse("authenticated").check(USER)


def test_authorize_verifies_only_where_the_policy_asks() -> None:
    a = Signer("a")
    v = verifier(a)
    assert authorize(v, Policy.parse("public"), "Bearer not-even-a-jwt") is None
    assert v.verified == 0
    identity = authorize(v, Policy.parse("authenticated"), f"Bearer {a.token()}")
    assert identity is not None
    assert identity.sub == "u-42"
    with pytest.raises(Unauthorized):
        authorize(v, Policy.parse("authenticated"), None)
    with pytest.raises(Unauthorized):
        authorize(v, Policy.parse("authenticated"), "Basic dXNlcjpwdw==")
    with pytest.raises(TokenError):
        authorize(v, Policy.parse("authenticated"), "Bearer x.y.z")
    with pytest.raises(Forbidden):
        authorize(v, Policy.parse("roles:admin"), f"Bearer {a.token()}")


async def test_authorize_async_refuses_an_unknown_kid_without_a_key_url() -> None:
    v = verifier(Signer("a"))
    with pytest.raises(TokenError) as info:
        await authorize_async(v, Policy.parse("authenticated"), f"Bearer {Signer('b').token()}")
    assert info.value.reason == "unknown signing key"


async def test_service_middleware_enforces_policies_and_sets_the_identity(
    aiohttp_client: Callable[
        [web.Application], Awaitable[TestClient[web.Request, web.Application]]
    ],
) -> None:
    a = Signer("a")

    async def whoami(request: web.Request) -> web.Response:
        identity = request[IDENTITY]
        return web.json_response({"sub": identity.sub if identity else None})

    def policy_for(request: web.Request) -> Policy:
        return Policy.parse("public" if request.method == "GET" else "roles:admin")

    app = web.Application(
        middlewares=[problem_middleware, access_middleware(verifier(a), policy_for)]
    )
    app.router.add_route("*", "/whoami", whoami)
    client = await aiohttp_client(app)

    r = await client.get("/whoami")
    assert (r.status, await r.json()) == (200, {"sub": None})
    r = await client.post("/whoami")
    assert r.status == 401
    assert r.headers["WWW-Authenticate"] == "Bearer"
    assert r.content_type == "application/problem+json"
    r = await client.post("/whoami", headers={"Authorization": f"Bearer {a.token()}"})
    assert r.status == 403
    token = a.token(sub="boss", roles=["admin"])
    r = await client.post("/whoami", headers={"Authorization": f"Bearer {token}"})
    assert (r.status, await r.json()) == (200, {"sub": "boss"})
    r = await client.post("/whoami", headers={"Authorization": f"Bearer {a.token(ttl=-60)}"})
    assert r.status == 401
    assert r.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')
