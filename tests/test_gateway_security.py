"""The gateway enforces route policies with signed tokens, and rate limits, as a real process."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import functools
import hashlib
import hmac
import json
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from core.testing import Component, ComponentFactory, RedisServer, free_port, wait_until
from tests.minting import AUDIENCE, ISSUER, Signer, b64url, jwks


@dataclasses.dataclass
class Keys:
    """The JWKS the gateway fetches; tests change ``signers`` to rotate keys."""

    signers: list[Signer]
    fetches: int = 0


@pytest_asyncio.fixture
async def jwks_server() -> AsyncIterator[tuple[str, Keys]]:
    keys = Keys([Signer("k1")])

    async def serve(request: web.Request) -> web.Response:
        keys.fetches += 1
        return web.json_response(jwks(*keys.signers))

    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}/.well-known/jwks.json", keys
    await runner.cleanup()


@pytest_asyncio.fixture
async def echo() -> AsyncIterator[int]:
    """An upstream that answers with the headers it received."""

    async def handler(request: web.Request) -> web.Response:
        return web.json_response({k.lower(): v for k, v in request.headers.items()})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield port
    await runner.cleanup()


ROUTES = """
[[routes]]
id = "open"
prefix = "/open"
urls = ["http://127.0.0.1:{port}"]
auth = "public"

[[routes]]
id = "members"
prefix = "/members"
urls = ["http://127.0.0.1:{port}"]
auth = "authenticated"

[[routes]]
id = "admin"
prefix = "/admin"
urls = ["http://127.0.0.1:{port}"]
auth = "roles:admin"

[[routes]]
id = "limited"
prefix = "/limited"
urls = ["http://127.0.0.1:{port}"]
auth = "public"
rate_limit = {{ replenish_rate = 1, burst_capacity = 3 }}

[[routes]]
id = "limited-too"
prefix = "/also-limited"
urls = ["http://127.0.0.1:{port}"]
auth = "public"
rate_limit = {{ replenish_rate = 1, burst_capacity = 3 }}
"""


@dataclasses.dataclass
class Gateway:
    comp: Component
    keys: Keys
    admin: int

    @property
    def url(self) -> str:
        return self.comp.url


Start = Callable[[str], Any]


@pytest.fixture
def start(
    components: ComponentFactory,
    jwks_server: tuple[str, Keys],
    echo: int,
    tmp_path: Path,
) -> Callable[[str], Any]:
    async def go(redis_url: str) -> Gateway:
        routes = tmp_path / "routes.toml"
        routes.write_text(ROUTES.format(port=echo))
        admin = free_port()
        comp = await components.start(
            "gateway",
            "--host", "127.0.0.1", "--admin-port", str(admin), "--redis-url", redis_url,
            "--routes", str(routes), "--jwks-url", jwks_server[0],
            "--jwt-issuer", ISSUER, "--jwt-audience", AUDIENCE, "--workers", "1",
            health_port=admin,
            timeout=60,
        )  # fmt: skip
        return Gateway(comp, jwks_server[1], admin)

    return go


async def call(url: str, token: str | None = None, **headers: str) -> tuple[int, Any, Any]:
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as resp:
        body = await resp.json(content_type=None)
        return resp.status, body, resp.headers


async def test_a_valid_token_passes_with_its_identity_and_a_forged_identity_never_does(
    redis_url: str, start: Start
) -> None:
    gw = await start(redis_url)
    signer = gw.keys.signers[0]
    status, seen, _ = await call(
        gw.url + "/members/x",
        signer.token(sub="ada", roles=["user", "ops"]),
        **{"X-User-Id": "root"},
    )
    assert status == 200
    assert seen["x-user-id"] == "ada"
    assert seen["x-user-roles"] == "user,ops"
    # On a public route, a client's claim to be someone is dropped.
    status, seen, _ = await call(
        gw.url + "/open/x", **{"X-User-Id": "root", "X-User-Roles": "admin"}
    )
    assert status == 200
    assert "x-user-id" not in seen
    assert "x-user-roles" not in seen


def _hs256_with_public_key(signer: Signer) -> str:
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": signer.kid}).encode())
    payload = b64url(json.dumps(signer.claims()).encode())
    mac = hmac.new(signer.public_raw, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64url(mac)}"


def _alg_none(signer: Signer) -> str:
    header = b64url(json.dumps({"alg": "none", "typ": "JWT", "kid": signer.kid}).encode())
    return f"{header}.{b64url(json.dumps(signer.claims()).encode())}."


async def test_every_bad_token_is_401_with_invalid_token(redis_url: str, start: Start) -> None:
    gw = await start(redis_url)
    good = gw.keys.signers[0]
    impostor = Signer(good.kid)  # the same kid, another key
    bad = {
        "expired": good.token(ttl=-120),
        "not yet valid": good.token(nbf=int(__import__("time").time()) + 600),
        "wrong issuer": good.token(iss="http://evil.test"),
        "wrong audience": good.token(aud="other"),
        "bad signature": impostor.token(),
        "unknown kid": Signer("nobody").token(),
        "alg none": _alg_none(good),
        "HS256 with the public key": _hs256_with_public_key(good),
        "garbage": "not.a.jwt",
    }
    for what, token in bad.items():
        status, body, headers = await call(gw.url + "/members/x", token)
        assert status == 401, what
        assert headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"'), what
        assert body["status"] == 401, what
    status, body, headers = await call(gw.url + "/members/x")
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Bearer")


async def test_a_missing_role_is_403(redis_url: str, start: Start) -> None:
    gw = await start(redis_url)
    signer = gw.keys.signers[0]
    status, body, _ = await call(gw.url + "/admin/x", signer.token(roles=["user"]))
    assert status == 403
    assert "admin" in body["detail"]
    status, seen, _ = await call(gw.url + "/admin/x", signer.token(roles=["admin"]))
    assert status == 200
    assert seen["x-user-roles"] == "admin"
    status, _, _ = await call(gw.url + "/admin/x")
    assert status == 401
    # Refusals are counted under the route that refused them, not as "unmatched".
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{gw.admin}/metrics") as resp,
    ):
        text = await resp.text()
    for status in (200, 401, 403):
        assert (
            f'gateway_requests_total{{route="admin",service="route:admin",status="{status}"}} 1.0'
            in text
        )


async def test_a_new_key_is_fetched_on_first_sight_and_no_request_fails(
    redis_url: str, start: Start
) -> None:
    gw = await start(redis_url)
    old = gw.keys.signers[0]
    new = Signer("k2")
    gw.keys.signers = [old, new]  # the auth service rotates: both published
    for token in (old.token(), new.token(), old.token(), new.token()):
        status, _, _ = await call(gw.url + "/members/x", token)
        assert status == 200
    gw.keys.signers = [new]  # the old key is withdrawn once its tokens expired


async def test_a_rate_limited_route_allows_the_burst_then_429(redis_url: str, start: Start) -> None:
    gw = await start(redis_url)
    async with aiohttp.ClientSession() as session:

        async def one() -> tuple[int, Any]:
            async with session.get(gw.url + "/limited/x") as resp:
                await resp.read()
                return resp.status, resp.headers

        results = await asyncio.gather(*(one() for _ in range(6)))
    statuses = sorted(status for status, _ in results)
    assert statuses == [200, 200, 200, 429, 429, 429]
    allowed = [h for s, h in results if s == 200]
    assert sorted(h["X-RateLimit-Remaining"] for h in allowed) == ["0", "1", "2"]
    assert {h["X-RateLimit-Burst-Capacity"] for h in allowed} == {"3"}
    refused = [h for s, h in results if s == 429]
    assert all(int(h["Retry-After"]) >= 1 for h in refused)


async def test_the_rate_limit_fails_open_while_redis_is_away(
    start: Start, redis_factory: Callable[..., RedisServer]
) -> None:
    server = redis_factory()
    gw = await start(server.url)
    server.kill()
    statuses = [(await call(gw.url + "/limited/x"))[0] for _ in range(5)]
    assert statuses == [200] * 5  # more than the burst: nothing could count them


async def test_a_redis_outage_is_counted_and_logged_once_and_its_end_logged(
    start: Start, redis_factory: Callable[..., RedisServer]
) -> None:
    server = redis_factory()
    gw = await start(server.url)
    assert (await call(gw.url + "/limited/x"))[2]["X-RateLimit-Remaining"] == "2"

    async def fail_open_total() -> float:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{gw.admin}/metrics") as resp,
        ):
            text = await resp.text()
        found = re.search(r"^gateway_ratelimit_fail_open_total ([0-9.e+]+)$", text, re.M)
        assert found is not None, text
        return float(found.group(1))

    assert await fail_open_total() == 0
    server.stop()
    # Two limited routes, many requests: one outage.
    for path in ("/limited/x", "/also-limited/x") * 4:
        status, _, headers = await call(gw.url + path)
        assert (status, headers["X-RateLimit-Remaining"]) == (200, "-1")
    assert await fail_open_total() == 8
    assert gw.comp.log.count("rate limit: Redis unreachable") == 1

    server.start()  # the same port, empty

    async def checked_again(path: str) -> bool:
        return (await call(gw.url + path))[2]["X-RateLimit-Remaining"] != "-1"

    for path in ("/limited/x", "/also-limited/x"):
        await wait_until(functools.partial(checked_again, path), 10, 0.2, f"{path} checked")
    await wait_until(lambda: "rate limit: Redis answers again" in gw.comp.log, 5)
    assert gw.comp.log.count("rate limit: Redis answers again") == 1
    assert gw.comp.log.count("rate limit: Redis unreachable") == 1
    counted = await fail_open_total()
    assert counted >= 8  # the requests of the retry window after the restart fail open too
    for path in ("/limited/x", "/also-limited/x"):
        assert (await call(gw.url + path))[0] == 200
    assert await fail_open_total() == counted  # Redis decides again: nothing more counted


def test_token_minting_helper_is_base64url() -> None:
    assert b64url(b"\xff\xfe") == base64.urlsafe_b64encode(b"\xff\xfe").rstrip(b"=").decode()
