"""The auth service over real HTTP: tokens, refresh, revocation, keys and their rotation, throttling."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp.test_utils import TestClient

from core.errors import SettingsError
from core.security.jwks import KeySet
from core.security.tokens import TokenError, Verifier
from core.settings import Secret, load
from core.testing import ComponentFactory
from services.auth.service import AuthSettings, build_auth_app

Client = TestClient[Any, Any]
T0 = 1_800_000_000.0
SEED = "admin:admin-pw:admin,user;alice:alice pw:user"


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


MakeAuth = Callable[..., Awaitable[Client]]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_auth(
    aiohttp_client: Callable[..., Awaitable[Client]], redis_url: str, tmp_path: Path, clock: Clock
) -> MakeAuth:
    """``await make_auth(**settings)``: the auth service in-process, on the test's clock."""

    async def make(**overrides: Any) -> Client:
        values: dict[str, Any] = {
            "redis_url": redis_url,
            "data_dir": str(tmp_path / "auth"),
            "instance_id": "auth-test",
            "seed_users": Secret(SEED),
            "password_cost": 10,
            "issuer": "test-issuer",
            "audience": "test-api",
        }
        values.update(overrides)
        return await aiohttp_client(build_auth_app(AuthSettings(**values), clock))

    return make


@pytest.fixture
async def auth(make_auth: MakeAuth) -> Client:
    return await make_auth()


@pytest.fixture
async def keysets() -> AsyncIterator[Callable[[str], KeySet]]:
    made: list[KeySet] = []

    def make(url: str) -> KeySet:
        made.append(KeySet(url))
        return made[-1]

    yield make
    for keys in made:
        await keys.close()


def gateway_verifier(keys: KeySet, clock: Clock) -> Verifier:
    """What the gateway holds: the service's public keys and its issuer and audience."""
    return Verifier(keys, issuer="test-issuer", audience="test-api", clock=clock)


async def login(auth: Client, username: str, password: str, **headers: str) -> Any:
    return await auth.post(
        "/token", json={"username": username, "password": password}, headers=headers
    )


async def tokens(
    auth: Client, username: str = "alice", password: str = "alice pw"
) -> dict[str, Any]:
    r = await login(auth, username, password)
    assert r.status == 200, await r.text()
    body: dict[str, Any] = await r.json()
    return body


async def test_login_gives_an_access_token_the_gateway_verifies(
    auth: Client, clock: Clock, keysets: Callable[[str], KeySet]
) -> None:
    r = await login(auth, "alice", "alice pw")
    assert r.status == 200
    assert r.headers["Cache-Control"] == "no-store"
    body = await r.json()
    assert body["token_type"] == "Bearer"
    assert (body["expires_in"], body["refresh_expires_in"]) == (300, 8 * 3600)

    keys = keysets(str(auth.make_url("/.well-known/jwks.json")))
    assert await keys.refresh(force=True)
    identity = gateway_verifier(keys, clock).verify(body["access_token"])
    assert identity.roles == ("user",)
    claims = identity.claims
    assert claims["sub"] == identity.sub
    assert claims["preferred_username"] == "alice"
    assert (claims["iss"], claims["aud"]) == ("test-issuer", "test-api")
    assert claims["iat"] == claims["nbf"] == T0
    assert claims["exp"] == T0 + 300
    assert len(claims["jti"]) >= 16
    admin = gateway_verifier(keys, clock).verify(
        (await tokens(auth, "ADMIN", "admin-pw"))["access_token"]
    )
    assert set(admin.roles) == {"admin", "user"}  # user names are case-insensitive


async def test_wrong_password_and_unknown_user_get_the_same_answer(auth: Client) -> None:
    wrong = await login(auth, "alice", "guess")
    unknown = await login(auth, "mallory", "guess")
    assert wrong.status == unknown.status == 401
    assert (
        await wrong.json()
        == await unknown.json()
        == {
            "type": "about:blank",
            "title": "Unauthorized",
            "status": 401,
            "detail": "invalid user name or password",
            "instance": "/token",
        }
    )
    assert wrong.headers["WWW-Authenticate"] == unknown.headers["WWW-Authenticate"]
    assert (await login(auth, "alice", "alice pw ")).status == 401  # spaces are part of it


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{nope", 400),
        (b"[]", 400),
        (b'{"username": "alice"}', 422),
        (b'{"username": "alice", "password": 12}', 400),
        (b'{"username": "alice", "password": "x", "scope": "all"}', 422),
    ],
)
async def test_bad_login_requests_are_problem_details(
    auth: Client, body: bytes, status: int
) -> None:
    r = await auth.post("/token", data=body, headers={"Content-Type": "application/json"})
    assert r.status == status
    assert r.content_type == "application/problem+json"


async def test_guessing_one_user_is_throttled_even_with_the_right_password(
    make_auth: MakeAuth, clock: Clock
) -> None:
    auth = await make_auth(login_user_burst=3, login_user_per_minute=2)
    for _ in range(3):
        assert (await login(auth, "alice", "guess")).status == 401
    throttled = await login(auth, "alice", "alice pw")
    assert throttled.status == 429
    assert throttled.headers["Retry-After"] == "30"
    assert (await throttled.json())["detail"] == "too many failed logins; retry in 30 s"
    assert (await login(auth, "admin", "admin-pw")).status == 200  # other users are not affected
    clock.now += 30
    assert (await login(auth, "alice", "alice pw")).status == 200


async def test_unknown_user_names_are_throttled_alike(make_auth: MakeAuth) -> None:
    auth = await make_auth(login_user_burst=2)
    statuses = [(await login(auth, "mallory", "guess")).status for _ in range(3)]
    assert statuses == [401, 401, 429]


async def test_successful_logins_do_not_count(make_auth: MakeAuth) -> None:
    auth = await make_auth(login_user_burst=2)
    for _ in range(5):
        await tokens(auth)
    assert (await login(auth, "alice", "guess")).status == 401


async def test_concurrent_guesses_cannot_slip_past_the_burst(make_auth: MakeAuth) -> None:
    auth = await make_auth(login_user_burst=3)
    answers = await asyncio.gather(*(login(auth, "alice", f"guess-{i}") for i in range(10)))
    assert sorted(r.status for r in answers) == [401] * 3 + [429] * 7


async def test_guessing_from_one_address_is_throttled_across_user_names(
    make_auth: MakeAuth,
) -> None:
    auth = await make_auth(login_address_burst=4)
    # The test client is on loopback, a trusted proxy: X-Forwarded-For's last entry is the client.
    for name in ("a1", "a2", "a3", "a4"):
        assert (
            await login(auth, name, "x", **{"X-Forwarded-For": "1.2.3.4, 10.0.0.9"})
        ).status == 401
    assert (await login(auth, "a5", "x", **{"X-Forwarded-For": "6.6.6.6, 10.0.0.9"})).status == 429
    assert (await login(auth, "a5", "x", **{"X-Forwarded-For": "10.0.0.8"})).status == 401


async def test_refresh_spends_the_token_and_a_reuse_revokes_the_session(auth: Client) -> None:
    first = await tokens(auth)
    r = await auth.post("/token/refresh", json={"refresh_token": first["refresh_token"]})
    assert r.status == 200
    second = await r.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]

    reuse = await auth.post("/token/refresh", json={"refresh_token": first["refresh_token"]})
    assert reuse.status == 401
    assert (await reuse.json())["detail"] == "invalid refresh token: reused: the session is revoked"
    # The thief may hold the second token: it is revoked too.
    r = await auth.post("/token/refresh", json={"refresh_token": second["refresh_token"]})
    assert (r.status, (await r.json())["detail"]) == (401, "invalid refresh token: revoked")


async def test_revoked_refresh_token_no_longer_works(auth: Client) -> None:
    session = await tokens(auth)
    r = await auth.post("/token/revoke", json={"refresh_token": session["refresh_token"]})
    assert (r.status, await r.json()) == (200, {})
    r = await auth.post("/token/refresh", json={"refresh_token": session["refresh_token"]})
    assert r.status == 401
    unknown = await auth.post("/token/revoke", json={"refresh_token": "never-issued"})
    assert unknown.status == 200  # RFC 7009: no oracle for valid tokens


async def test_refresh_token_expires(auth: Client, clock: Clock) -> None:
    session = await tokens(auth)
    clock.now += 8 * 3600
    r = await auth.post("/token/refresh", json={"refresh_token": session["refresh_token"]})
    assert (r.status, (await r.json())["detail"]) == (401, "invalid refresh token: expired")


async def test_jwks_publishes_the_signing_key_and_the_next_one(auth: Client) -> None:
    r = await auth.get("/.well-known/jwks.json")
    assert r.status == 200
    keys = (await r.json())["keys"]
    assert len(keys) == 2
    for key in keys:
        assert set(key) == {"kty", "crv", "x", "kid", "use", "alg"}  # never "d"
        assert (key["kty"], key["crv"], key["alg"], key["use"]) == (
            "OKP",
            "Ed25519",
            "EdDSA",
            "sig",
        )
    token = (await tokens(auth))["access_token"]
    assert jwt.get_unverified_header(token)["kid"] == keys[0]["kid"]


async def test_rotation_needs_the_admin_role(auth: Client) -> None:
    assert (await auth.post("/keys/rotate")).status == 401
    user = (await tokens(auth))["access_token"]
    r = await auth.post("/keys/rotate", headers={"Authorization": f"Bearer {user}"})
    assert r.status == 403


async def test_rotation_fails_no_request_and_the_old_key_lives_until_its_tokens_expire(
    auth: Client, clock: Clock, keysets: Callable[[str], KeySet]
) -> None:
    keys = keysets(str(auth.make_url("/.well-known/jwks.json")))
    assert await keys.refresh(force=True)  # the gateway's periodic refresh, before the rotation
    gateway = gateway_verifier(keys, clock)
    before = (await tokens(auth))["access_token"]
    admin = (await tokens(auth, "admin", "admin-pw"))["access_token"]
    old_kid = jwt.get_unverified_header(before)["kid"]

    r = await auth.post("/keys/rotate", headers={"Authorization": f"Bearer {admin}"})
    assert r.status == 200
    rotated = await r.json()
    assert rotated["kid"] != old_kid
    assert old_kid in rotated["keys"]

    after = (await tokens(auth))["access_token"]
    assert jwt.get_unverified_header(after)["kid"] == rotated["kid"]
    assert gateway.verify(after).sub == gateway.verify(before).sub  # no refresh was needed
    assert keys.fetches == 1

    clock.now += 300 + 60  # every token of the old key has expired (with the verifiers' leeway)
    published = [
        k["kid"] for k in (await (await auth.get("/.well-known/jwks.json")).json())["keys"]
    ]
    assert old_kid not in published
    assert await keys.refresh(force=True)
    with pytest.raises(TokenError):
        gateway.verify(before)


async def test_keys_rotate_by_themselves_and_survive_a_restart(
    make_auth: MakeAuth, clock: Clock
) -> None:
    auth = await make_auth(key_rotation_interval=3600)
    first = jwt.get_unverified_header((await tokens(auth))["access_token"])["kid"]
    clock.now += 3600
    second = jwt.get_unverified_header((await tokens(auth))["access_token"])["kid"]
    assert second != first
    await auth.close()

    again = await make_auth(key_rotation_interval=3600, seed_users=Secret("alice:new pw:user"))
    assert (
        jwt.get_unverified_header((await tokens(again, "alice", "new pw"))["access_token"])["kid"]
        == second
    )
    assert (await login(again, "alice", "alice pw")).status == 401  # the seed reset the password


def test_bad_settings_fail_at_start_naming_the_variable() -> None:
    with pytest.raises(SettingsError, match="AUTH_SEED_USERS: entry 2"):
        load(AuthSettings, prefix="AUTH_", argv=[], environ={"AUTH_SEED_USERS": "a:b:c;oops"})
    with pytest.raises(SettingsError, match="AUTH_KEY_ROTATION_INTERVAL"):
        load(AuthSettings, prefix="AUTH_", argv=[], environ={"AUTH_KEY_ROTATION_INTERVAL": "60"})
    with pytest.raises(SettingsError, match="AUTH_TRUSTED_PROXIES: 'gateway' is not"):
        load(AuthSettings, prefix="AUTH_", argv=[], environ={"AUTH_TRUSTED_PROXIES": "gateway"})


async def test_runs_as_its_own_process(
    components: ComponentFactory, redis_url: str, tmp_path: Path
) -> None:
    auth = await components.start(
        "services.auth",
        "--redis-url",
        redis_url,
        "--data-dir",
        str(tmp_path / "proc"),
        env={"AUTH_SEED_USERS": "alice:pw:user", "AUTH_PASSWORD_COST": "10"},
    )
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{auth.url}/token", json={"username": "alice", "password": "pw"}
        ) as r:
            assert r.status == 200
            token = (await r.json())["access_token"]
        keys = KeySet(f"{auth.url}/.well-known/jwks.json")
        try:
            identity = await Verifier(keys, issuer="essaim-auth", audience="essaim").verify_async(
                token
            )
        finally:
            await keys.close()
    assert identity.roles == ("user",)
    assert auth.terminate() == 0


def test_bad_setting_exits_2_with_one_line(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "services.auth", "--seed-users", "alice"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert run.returncode == 2
    assert run.stderr == "auth: AUTH_SEED_USERS: entry 1: expected name:password:roles\n"
