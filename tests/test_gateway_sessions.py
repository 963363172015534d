"""Sessions at the gateway (the stateful model, Backend for Frontend), as a browser meets them.

Real processes: Redis, the auth service (found by the gateway in the
registry, as any service), the gateway, and an upstream that answers with
what it received. Cookies are read from ``Set-Cookie`` and sent back by hand,
as a browser would, so that every attribute is seen.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest
import pytest_asyncio
from aiohttp import web

from core.proxy import openapi
from core.redis import connect
from core.security.jwks import KeySet
from core.security.sessions import KEY_PREFIX
from core.security.tokens import Verifier
from core.testing import Component, ComponentFactory, RedisServer, free_port, wait_until

USERS = "alice:alice-pw:user;root:root-pw:admin,user"

ROUTES = """
[[routes]]
id = "open"
prefix = "/open"
urls = ["http://127.0.0.1:{port}"]

[[routes]]
id = "by-session"
prefix = "/by-session"
urls = ["http://127.0.0.1:{port}"]
auth = "authenticated"
auth_via = "session"

[[routes]]
id = "by-token"
prefix = "/by-token"
urls = ["http://127.0.0.1:{port}"]
auth = "authenticated"

[[routes]]
id = "by-either"
prefix = "/by-either"
urls = ["http://127.0.0.1:{port}"]
auth = "authenticated"
auth_via = "either"

[[routes]]
id = "admins"
prefix = "/admins"
urls = ["http://127.0.0.1:{port}"]
auth = "roles:admin"
auth_via = "session"
"""


@dataclasses.dataclass
class Seen:
    """What the upstream received, newest last."""

    requests: list[dict[str, Any]] = dataclasses.field(default_factory=list)


@pytest_asyncio.fixture
async def upstream() -> AsyncIterator[tuple[int, Seen]]:
    seen = Seen()

    async def handler(request: web.Request) -> web.Response:
        doc = {
            "method": request.method,
            "path": request.path,
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "body": (await request.read()).decode(),
        }
        seen.requests.append(doc)
        return web.json_response(doc)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield port, seen
    await runner.cleanup()


@dataclasses.dataclass
class System:
    gateway: Component
    auth: Component
    redis_url: str
    seen: Seen

    @property
    def url(self) -> str:
        return self.gateway.url

    @property
    def jwks(self) -> str:
        return f"{self.auth.url}/.well-known/jwks.json"


Start = Callable[..., Awaitable[System]]


@pytest.fixture
def start(
    components: ComponentFactory, upstream: tuple[int, Seen], tmp_path: Path, redis_url: str
) -> Start:
    """``await start(redis=URL, auth_env={...}, *gateway flags)``: auth, then the gateway."""

    async def go(*flags: str, redis: str | None = None, auth_env: Mapping[str, str] = {}) -> System:
        url = redis or redis_url
        env = {"AUTH_SEED_USERS": USERS, "AUTH_PASSWORD_COST": "10", **auth_env}
        auth = await components.start(
            "services.auth", "--redis-url", url, "--data-dir", str(tmp_path / "auth"), env=env
        )
        routes = tmp_path / "routes.toml"
        routes.write_text(ROUTES.format(port=upstream[0]))
        admin = free_port()
        gateway = await components.start(
            "gateway",
            "--host", "127.0.0.1", "--admin-port", str(admin), "--redis-url", url,
            "--routes", str(routes), "--jwks-url", f"{auth.url}/.well-known/jwks.json",
            "--workers", "1", *flags,
            health_port=admin,
            timeout=60,
        )  # fmt: skip
        system = System(gateway, auth, url, upstream[1])

        async def auth_found() -> bool:
            status, _, _ = await login(system, "alice", "alice-pw")
            return status == 200

        # The gateway finds the auth service in the registry (one heartbeat at most).
        await wait_until(auth_found, 20, 0.1, "the gateway reaching the auth service")
        return system

    return go


# ----------------------------------------------------------------------------- helpers


async def request(
    method: str,
    url: str,
    *,
    cookies: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> tuple[int, Any, Any]:
    send = dict(headers or {})
    if cookies:
        send["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
    async with (
        aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session,
        session.request(method, url, headers=send, **kwargs) as resp,
    ):
        raw = await resp.read()
        body = json.loads(raw) if raw else None
        return resp.status, body, resp.headers


async def login(system: System, username: str, password: str) -> tuple[int, Any, Any]:
    return await request(
        "POST", system.url + "/-/session", json={"username": username, "password": password}
    )


def set_cookies(headers: Any) -> dict[str, str]:
    """``name -> the whole Set-Cookie line`` of a response."""
    return {line.split("=", 1)[0]: line for line in headers.getall("Set-Cookie", [])}


def cookie_value(line: str) -> str:
    return line.split(";", 1)[0].split("=", 1)[1]


def attributes(line: str) -> set[str]:
    return {part.strip() for part in line.split(";")[1:]}


@dataclasses.dataclass
class Browser:
    """A logged-in browser: its cookies and the CSRF token the page was given."""

    cookies: dict[str, str]
    csrf: str
    body: dict[str, Any]


async def logged_in(system: System, username: str = "alice", password: str = "alice-pw") -> Browser:
    status, body, headers = await login(system, username, password)
    assert status == 200, body
    lines = set_cookies(headers)
    cookies = {name: cookie_value(line) for name, line in lines.items()}
    return Browser(cookies, body["csrf"], body)


async def session_keys(redis_url: str) -> list[str]:
    client = connect(redis_url)
    try:
        return sorted([k async for k in client.scan_iter(match=KEY_PREFIX + "*")])
    finally:
        await client.aclose()


async def verified_sub(system: System, token: str) -> str:
    keys = KeySet(system.jwks)
    try:
        identity = await Verifier(keys, issuer="essaim-auth", audience="essaim").verify_async(token)
    finally:
        await keys.close()
    return identity.sub


# ----------------------------------------------------------------------------- login, cookies, relay


async def test_login_sets_an_httponly_strict_cookie_and_the_route_gets_a_relayed_token(
    start: Start,
) -> None:
    system = await start()
    status, body, headers = await login(system, "alice", "alice-pw")
    assert status == 200
    assert body["user"] == "alice"
    assert body["roles"] == ["user"]
    assert set(body) == {"user", "sub", "roles", "expires_at", "absolute_expires_at", "csrf"}
    now = time.time()
    assert now + 1700 < body["expires_at"] <= now + 1800 + 5  # the idle timeout, 30 min
    assert now + 8 * 3600 - 100 < body["absolute_expires_at"] <= now + 8 * 3600 + 5
    assert "access_token" not in json.dumps(body)
    assert "refresh" not in json.dumps(body)
    assert headers["Cache-Control"] == "no-store"
    lines = set_cookies(headers)
    assert set(lines) == {"essaim_session", "essaim_csrf"}
    assert attributes(lines["essaim_session"]) == {"HttpOnly", "SameSite=Strict", "Path=/"}
    assert attributes(lines["essaim_csrf"]) == {"SameSite=Strict", "Path=/"}
    assert cookie_value(lines["essaim_csrf"]) == body["csrf"]
    session_id = cookie_value(lines["essaim_session"])
    assert len(session_id) == 43  # 256 bits, base64url
    # Redis holds the session under a digest of the id, never the id itself.
    keys = await session_keys(system.redis_url)
    assert len(keys) == 2  # alice's first login (the fixture's probe) and this one
    assert all(session_id not in key for key in keys)

    cookies = {"essaim_session": session_id, "theme": "dark", "essaim_csrf": body["csrf"]}
    status, seen, _ = await request("GET", system.url + "/by-session/x", cookies=cookies)
    assert status == 200
    upstream = seen["headers"]
    scheme, _, token = upstream["authorization"].partition(" ")
    assert scheme == "Bearer"
    assert await verified_sub(system, token) == body["sub"] == upstream["x-user-id"]
    assert upstream["x-user-roles"] == "user"
    # The gateway's cookies never reach a service; the page's own do.
    assert upstream["cookie"] == "theme=dark"

    status, current, _ = await request("GET", system.url + "/-/session", cookies=cookies)
    assert status == 200
    assert current["user"] == "alice"
    assert current["csrf"] == body["csrf"]


async def test_a_form_login_works_and_the_session_cookie_is_never_forwarded_even_on_public_routes(
    start: Start,
) -> None:
    system = await start()
    status, body, headers = await request(
        "POST",
        system.url + "/-/session",
        data="username=root&password=root-pw",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 200
    assert body["roles"] == ["admin", "user"]
    session_id = cookie_value(set_cookies(headers)["essaim_session"])
    status, seen, _ = await request(
        "GET", system.url + "/open/x", cookies={"essaim_session": session_id}
    )
    assert status == 200
    assert "cookie" not in seen["headers"]
    assert "authorization" not in seen["headers"]


async def test_wrong_credentials_are_401_without_a_cookie_and_guessing_is_throttled(
    start: Start,
) -> None:
    system = await start(auth_env={"AUTH_LOGIN_USER_BURST": "3"})
    before = await session_keys(system.redis_url)
    statuses = []
    for _ in range(4):
        status, body, headers = await login(system, "alice", "wrong")
        statuses.append(status)
        assert set_cookies(headers) == {}
        assert headers["Content-Type"] == "application/problem+json"
    assert statuses == [401, 401, 401, 429]
    assert int(headers["Retry-After"]) >= 1
    status, body, headers = await login(system, "nobody", "x")
    assert status == 401
    assert body["detail"] == "invalid user name or password"
    assert headers["WWW-Authenticate"].startswith("Cookie ")
    assert await session_keys(system.redis_url) == before


BAD_LOGINS = [
    ("application/json", b'{"username": "alice", ', 400, "malformed JSON"),
    ("application/json", b"", 400, "empty"),
    ("application/json", b'["alice", "alice-pw"]', 400, "JSON object"),
    ("application/json", b'{"username": "alice"}', 400, "password: required"),
    ("application/json", b'{"username": 7, "password": "x"}', 400, "expected a string"),
    ("application/x-www-form-urlencoded", b"username=alice", 400, "password: required"),
    ("application/x-www-form-urlencoded", b"username=a&username=b&password=x", 400, "2 times"),
    ("text/plain", b"alice:alice-pw", 415, "application/json"),
    (
        "application/json",
        b'{"username": "alice", "password": "' + b"x" * 17000 + b'"}',
        413,
        "limit",
    ),
]


async def test_bad_login_bodies_are_problems_and_store_nothing(start: Start) -> None:
    system = await start()
    before = await session_keys(system.redis_url)
    for content_type, body, status, detail in BAD_LOGINS:
        got, problem, headers = await request(
            "POST", system.url + "/-/session", data=body, headers={"Content-Type": content_type}
        )
        assert (got, problem["status"]) == (status, status), body[:40]
        assert detail in problem["detail"]
        assert headers["Content-Type"] == "application/problem+json"
        assert set_cookies(headers) == {}
    # Login CSRF: another site can't log the browser into an account of its choosing.
    got, problem, headers = await request(
        "POST",
        system.url + "/-/session",
        json={"username": "alice", "password": "alice-pw"},
        headers={"Origin": "http://evil.example"},
    )
    assert got == 403
    assert "cross-origin" in problem["detail"]
    assert set_cookies(headers) == {}
    assert await session_keys(system.redis_url) == before


async def test_the_session_endpoints_answer_only_their_methods(start: Start) -> None:
    system = await start()
    status, problem, headers = await request("PUT", system.url + "/-/session", data=b"{}")
    assert status == 405
    assert headers["Allow"] == "GET, POST, DELETE"
    status, problem, headers = await request("GET", system.url + "/-/session")
    assert status == 401
    assert problem["detail"] == "no session: log in with POST /-/session"
    status, problem, _ = await request(
        "GET", system.url + "/-/session", cookies={"essaim_session": "A" * 43}
    )
    assert status == 401  # a well-formed id of no session


# ----------------------------------------------------------------------------- logout and CSRF


async def test_logout_needs_the_csrf_token_then_ends_the_session_everywhere(start: Start) -> None:
    system = await start()
    browser = await logged_in(system)
    url = system.url + "/-/session"
    own = {"Origin": system.url}
    for headers in (
        own,  # no token
        {**own, "X-CSRF-Token": "not-it"},
        {"Origin": "http://evil.example", "X-CSRF-Token": browser.csrf},
        {"Sec-Fetch-Site": "cross-site", "X-CSRF-Token": browser.csrf},
    ):
        status, problem, _ = await request("DELETE", url, cookies=browser.cookies, headers=headers)
        assert status == 403, headers
        assert problem["status"] == 403
    status, _, _ = await request("GET", system.url + "/by-session/x", cookies=browser.cookies)
    assert status == 200  # still logged in

    client = connect(system.redis_url)
    try:
        keys = await session_keys(system.redis_url)
        refresh = {
            await client.hget(key, "refresh")
            for key in keys
            if await client.hget(key, "csrf") == browser.csrf
        }
    finally:
        await client.aclose()
    assert len(refresh) == 1

    status, body, headers = await request(
        "DELETE", url, cookies=browser.cookies, headers={**own, "X-CSRF-Token": browser.csrf}
    )
    assert (status, body) == (204, None)
    cleared = set_cookies(headers)
    assert set(cleared) == {"essaim_session", "essaim_csrf"}
    assert all("Max-Age=0" in attributes(line) for line in cleared.values())
    assert len(await session_keys(system.redis_url)) == len(keys) - 1
    status, problem, headers = await request(
        "GET", system.url + "/by-session/x", cookies=browser.cookies
    )
    assert status == 401
    assert "log in again" in problem["detail"]
    # The refresh token was revoked at the auth service: the session is over there too.
    status, problem, _ = await request(
        "POST", system.auth.url + "/token/refresh", json={"refresh_token": refresh.pop()}
    )
    assert (status, problem["error"]) == (400, "invalid_grant")
    # Logging out again is harmless: nothing to end.
    status, _, _ = await request("DELETE", url, cookies=browser.cookies)
    assert status == 204


async def test_a_form_can_log_out_with_the_csrf_field(start: Start) -> None:
    system = await start()
    browser = await logged_in(system)
    status, _, _ = await request(
        "POST",
        system.url + "/-/session/logout",
        cookies=browser.cookies,
        data=f"csrf={browser.csrf}",
        headers={"Content-Type": "application/x-www-form-urlencoded", "Origin": system.url},
    )
    assert status == 204
    status, _, _ = await request("GET", system.url + "/-/session", cookies=browser.cookies)
    assert status == 401


async def test_state_changing_requests_with_a_session_need_both_csrf_checks(start: Start) -> None:
    system = await start()
    browser = await logged_in(system)
    url = system.url + "/by-session/orders"
    before = len(system.seen.requests)
    refused = [
        {},  # no token
        {"X-CSRF-Token": "wrong"},
        {"X-CSRF-Token": browser.csrf, "Origin": "http://evil.example"},
        {"X-CSRF-Token": browser.csrf, "Origin": "null"},
        {"X-CSRF-Token": browser.csrf, "Sec-Fetch-Site": "same-site"},
    ]
    for headers in refused:
        status, problem, _ = await request(
            "POST", url, cookies=browser.cookies, headers=headers, json={"n": 1}
        )
        assert status == 403, headers
        assert problem["type"] == "about:blank"
        assert problem["status"] == 403
    assert len(system.seen.requests) == before  # nothing was forwarded
    for headers in (
        {"X-CSRF-Token": browser.csrf, "Origin": system.url, "Sec-Fetch-Site": "same-origin"},
        {"X-CSRF-Token": browser.csrf},  # not a browser: the token alone
    ):
        status, seen, _ = await request(
            "POST", url, cookies=browser.cookies, headers=headers, json={"n": 1}
        )
        assert status == 200
        assert (seen["method"], seen["body"]) == ("POST", '{"n": 1}')
        assert "x-csrf-token" in seen["headers"]  # the service may see it; it is no credential
    # Reads need no token.
    status, _, _ = await request("GET", url, cookies=browser.cookies)
    assert status == 200


# ----------------------------------------------------------------------------- auth_via per route


async def test_each_route_accepts_the_credentials_its_auth_via_names(start: Start) -> None:
    system = await start()
    browser = await logged_in(system)
    cookie = {"essaim_session": browser.cookies["essaim_session"]}
    status, tokens, _ = await request(
        "POST", system.auth.url + "/token", json={"username": "alice", "password": "alice-pw"}
    )
    assert status == 200
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}

    async def status_of(path: str, **kwargs: Any) -> tuple[int, Any, Any]:
        return await request("GET", system.url + path, **kwargs)

    status, _, headers = await status_of("/by-session/x", headers=bearer)
    assert status == 401  # a bearer token is not a session
    assert headers["WWW-Authenticate"].startswith('Cookie realm="essaim"')
    status, _, headers = await status_of("/by-token/x", cookies=cookie)
    assert status == 401  # a session is not a bearer token
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert (await status_of("/by-session/x", cookies=cookie))[0] == 200
    assert (await status_of("/by-token/x", headers=bearer))[0] == 200
    status, seen, _ = await status_of("/by-either/x", headers=bearer)
    assert status == 200
    assert seen["headers"]["authorization"] == bearer["Authorization"]
    status, seen, _ = await status_of("/by-either/x", cookies=cookie)
    assert status == 200
    assert seen["headers"]["authorization"] != bearer["Authorization"]
    status, _, headers = await status_of("/by-either/x")
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Bearer")
    # On a session route, a bearer the client adds is replaced by the session's own token.
    status, seen, _ = await status_of(
        "/by-session/x", cookies=cookie, headers={"Authorization": "Bearer forged"}
    )
    assert status == 200
    assert seen["headers"]["authorization"].startswith("Bearer ey")
    assert await verified_sub(system, seen["headers"]["authorization"][7:]) == browser.body["sub"]
    # Roles come from the session.
    assert (await status_of("/admins/x", cookies=cookie))[0] == 403
    admin = await logged_in(system, "root", "root-pw")
    status, seen, _ = await status_of(
        "/admins/x", cookies={"essaim_session": admin.cookies["essaim_session"]}
    )
    assert status == 200
    assert seen["headers"]["x-user-roles"] == "admin,user"


# ----------------------------------------------------------------------------- timeouts


async def test_an_unused_session_ends_after_the_idle_timeout(start: Start) -> None:
    system = await start("--session-idle-timeout", "1.5", "--session-cache", "0")
    browser = await logged_in(system)
    began = time.monotonic()
    assert (await request("GET", system.url + "/by-session/x", cookies=browser.cookies))[0] == 200

    async def ended() -> bool:
        status, _, _ = await request("GET", system.url + "/-/session", cookies=browser.cookies)
        return status == 401

    # GET /-/session renews the idle timeout too: ask rarely, from past the timeout.
    await wait_until(lambda: time.monotonic() - began > 1.6, 5, 0.05, "the idle timeout passing")
    await wait_until(ended, 5, 0.5, "the idle timeout ending the session")
    assert await session_keys(system.redis_url) == []  # alice's probe session idled out too


async def test_a_busy_session_still_ends_at_its_absolute_timeout(start: Start) -> None:
    system = await start(
        "--session-idle-timeout", "1", "--session-absolute-timeout", "3", "--session-cache", "0"
    )
    browser = await logged_in(system)
    began = time.monotonic()
    statuses = []

    async def refused() -> bool:
        # Polled every 0.1 s: the session never idles, so only the absolute timeout ends it.
        status, _, _ = await request("GET", system.url + "/by-session/x", cookies=browser.cookies)
        statuses.append(status)
        return status == 401

    await wait_until(refused, 10, 0.1, "the absolute timeout")
    lasted = time.monotonic() - began
    assert 2.5 < lasted < 6, lasted
    assert set(statuses[:-1]) == {200}
    assert len(statuses) > 10


async def test_the_relayed_token_is_renewed_from_the_refresh_token_before_it_expires(
    start: Start,
) -> None:
    # Access tokens of 10 s: the gateway renews them once half their life is gone.
    system = await start(auth_env={"AUTH_ACCESS_TTL": "10"})
    browser = await logged_in(system)

    async def relayed() -> str:
        status, seen, _ = await request(
            "GET", system.url + "/by-session/x", cookies=browser.cookies
        )
        assert status == 200
        return str(seen["headers"]["authorization"][7:])

    first = await relayed()

    async def renewed() -> str | None:
        token = await relayed()
        return token if token != first else None

    second = await wait_until(renewed, 15, 0.2, "a renewed access token")
    assert await verified_sub(system, second) == browser.body["sub"]
    status, current, _ = await request("GET", system.url + "/-/session", cookies=browser.cookies)
    assert status == 200
    assert current["csrf"] == browser.csrf  # the same session


# ----------------------------------------------------------------------------- Redis away


async def test_with_redis_away_session_routes_answer_503_token_routes_work_and_then_it_heals(
    start: Start, redis_factory: Callable[..., RedisServer]
) -> None:
    server = redis_factory()
    system = await start("--session-cache", "0", redis=server.url)
    browser = await logged_in(system)
    status, tokens, _ = await request(
        "POST", system.auth.url + "/token", json={"username": "alice", "password": "alice-pw"}
    )
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    server.kill()

    status, problem, headers = await request(
        "GET", system.url + "/by-session/x", cookies=browser.cookies
    )
    assert status == 503
    assert headers["Retry-After"] == "1"
    assert "Redis" in problem["detail"]
    status, problem, _ = await login(system, "alice", "alice-pw")
    assert status == 503
    status, problem, _ = await request("GET", system.url + "/-/session", cookies=browser.cookies)
    assert status == 503
    assert (await request("GET", system.url + "/by-token/x", headers=bearer))[0] == 200

    redis_factory(server.port)  # back, empty: the old session is gone, not unavailable

    async def healed() -> bool:
        status, _, _ = await request("GET", system.url + "/by-session/x", cookies=browser.cookies)
        return status == 401

    await wait_until(healed, 15, 0.1, "sessions working again")

    async def logs_in() -> Browser | None:
        status, _, _ = await login(system, "alice", "alice-pw")
        return await logged_in(system) if status == 200 else None

    again = await wait_until(logs_in, 20, 0.2, "a new login")
    status, _, _ = await request("GET", system.url + "/by-session/x", cookies=again.cookies)
    assert status == 200


# ----------------------------------------------------------------------------- workers, TLS, origins


async def test_with_workers_a_logout_is_seen_by_every_worker_within_the_session_cache(
    start: Start,
) -> None:
    """Two workers, each with its own 1 s cache; behind TLS; one other origin allowed."""
    system = await start(
        "--workers", "2", "--session-cache", "1", "--session-secure",
        "--session-origins", "https://console.example",
    )  # fmt: skip
    status, body, headers = await login(system, "alice", "alice-pw")
    assert status == 200
    lines = set_cookies(headers)
    assert attributes(lines["essaim_session"]) == {
        "HttpOnly", "SameSite=Strict", "Path=/", "Secure",
    }  # fmt: skip
    assert attributes(lines["essaim_csrf"]) == {"SameSite=Strict", "Path=/", "Secure"}
    cookies = {name: cookie_value(line) for name, line in lines.items()}
    csrf = {"X-CSRF-Token": body["csrf"]}

    # Every new connection may land on either worker: both now hold the session in cache.
    for _ in range(10):
        assert (await request("GET", system.url + "/by-session/x", cookies=cookies))[0] == 200
    status, _, _ = await request(
        "POST", system.url + "/by-session/x", cookies=cookies,
        headers={**csrf, "Origin": "https://console.example"},
    )  # fmt: skip
    assert status == 200  # an allowed origin
    status, _, _ = await request(
        "DELETE", system.url + "/-/session", cookies=cookies,
        headers={**csrf, "Origin": "https://console.example"},
    )  # fmt: skip
    assert status == 204
    logged_out = time.monotonic()
    # The stated bound: past --session-cache after the logout, no worker accepts the session.
    await wait_until(lambda: time.monotonic() - logged_out > 1.05, 5, 0.02, "the cache bound")
    statuses = [
        (await request("GET", system.url + "/by-session/x", cookies=cookies))[0] for _ in range(20)
    ]
    assert statuses == [401] * 20


# ----------------------------------------------------------------------------- the document


async def test_the_edge_endpoints_answer_as_the_traffic_document_says(start: Start) -> None:
    """Every answer below is one the document lists, with a body of its schema."""
    doc = openapi.traffic("/-/health").document()
    system = await start()
    seen: list[tuple[str, str, int]] = []

    async def check(method: str, path: str, **kwargs: Any) -> tuple[int, Any, Any]:
        status, body, headers = await request(method, system.url + path, **kwargs)
        answers = doc["paths"][path][method.lower()]["responses"]
        assert str(status) in answers, (method, path, status, body)
        content = answers[str(status)].get("content", {})
        if body is not None:
            media = headers["Content-Type"].split(";")[0]
            assert media in content, (method, path, status, media)
            jsonschema.validate(body, content[media]["schema"])
        else:
            assert not content, (method, path, status)
        seen.append((method, path, status))
        return status, body, headers

    await check("GET", "/-/health")
    await check("POST", "/-/session", json={"username": "alice", "password": "wrong"})
    await check("POST", "/-/session", data=b"{", headers={"Content-Type": "application/json"})
    await check("POST", "/-/session", data=b"x", headers={"Content-Type": "text/plain"})
    await check("GET", "/-/session")
    _, body, headers = await check(
        "POST", "/-/session", json={"username": "alice", "password": "alice-pw"}
    )
    cookies = {name: cookie_value(line) for name, line in set_cookies(headers).items()}
    await check("GET", "/-/session", cookies=cookies)
    own = {"Origin": system.url}
    await check("DELETE", "/-/session", cookies=cookies, headers=own)
    await check(
        "POST",
        "/-/session/logout",
        cookies=cookies,
        data=f"csrf={body['csrf']}",
        headers={**own, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert [s for _, _, s in seen] == [200, 401, 400, 415, 401, 200, 200, 403, 204]
