"""Sessions in Redis, their renewal across processes, the cookie and the CSRF checks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest

from core.errors import Forbidden, ServiceUnavailable
from core.redis import Redis, connect
from core.security.csrf import Origins, check_origin, check_token
from core.security.relay import SessionGate, session_cookie
from core.security.resp import RespClient
from core.security.sessions import KEY_PREFIX, SessionStore, Tokens, session_key
from core.security.tokens import Identity
from core.testing import RedisServer, wait_until


def tokens(
    n: int, *, ttl: float = 300.0, age: float = 0.0, roles: tuple[str, ...] = ("user",)
) -> Tokens:
    """Tokens issued ``age`` seconds ago, expiring ``ttl`` seconds from now."""
    now = time.time()
    claims = {"iat": now - age, "preferred_username": "alice"}
    identity = Identity("7", roles, now + ttl, claims, ",".join(roles))
    return Tokens(f"access-{n}", f"refresh-{n}", identity)


class Issuer:
    """The auth service's refresh grant, counted (sessions' Redis is real; this is not Redis)."""

    def __init__(self, *, ttl: float = 300.0) -> None:
        self.refreshes: list[str] = []
        self.revoked: list[str] = []
        self.ttl = ttl

    async def password(self, username: str, password: str, address: str, request_id: str) -> Tokens:
        return tokens(0)

    async def refresh(self, refresh_token: str) -> Tokens | None:
        self.refreshes.append(refresh_token)
        await asyncio.sleep(0.05)  # the auth service takes a while: others arrive meanwhile
        return tokens(len(self.refreshes), ttl=self.ttl)

    async def revoke(self, refresh_token: str) -> None:
        self.revoked.append(refresh_token)


@pytest.fixture
async def resp(redis_url: str) -> AsyncIterator[RespClient]:
    client = RespClient(redis_url)
    yield client
    await client.close()


@pytest.fixture
async def inspect(redis_url: str) -> AsyncIterator[Redis]:
    client = connect(redis_url)
    yield client
    await client.aclose()


async def test_a_session_is_stored_under_a_digest_with_the_idle_timeout_as_ttl(
    resp: RespClient, inspect: Redis
) -> None:
    store = SessionStore(resp, idle=60, absolute=3600, cache=0)
    session = await store.create(tokens(1, roles=("admin", "user")))
    key = session_key(session.id)
    assert key.startswith(KEY_PREFIX + "{")
    assert session.id not in key
    assert len(session.id) == len(session.csrf) == 43
    assert 59_000 < await inspect.pttl(key) <= 60_000
    stored = await inspect.hgetall(key)
    assert stored["access"] == "access-1"
    assert stored["refresh"] == "refresh-1"
    assert stored["roles"] == "admin,user"
    loaded = await store.load(session.id)
    assert loaded is not None
    assert (loaded.sub, loaded.user, loaded.roles) == ("7", "alice", ("admin", "user"))
    assert (loaded.csrf, loaded.access, loaded.refresh) == (session.csrf, "access-1", "refresh-1")
    assert loaded.absolute == pytest.approx(session.absolute)
    assert loaded.upstream_lines == (
        b"x-user-id: 7\r\nx-user-roles: admin,user\r\nauthorization: Bearer access-1\r\n"
    )
    assert await store.load("B" * 43) is None


async def test_a_load_renews_the_idle_timeout_but_never_past_the_absolute_one(
    resp: RespClient, inspect: Redis
) -> None:
    store = SessionStore(resp, idle=2, absolute=2.5, cache=0)
    session = await store.create(tokens(1))
    key = session_key(session.id)
    await wait_until(
        lambda: time.time() > session.read_at + 1, 5, 0.05, "a second of the idle timeout spent"
    )
    assert await inspect.pttl(key) < 1100
    assert await store.load(session.id) is not None
    # Renewed, but only up to the absolute deadline (about 1.5 s away by now).
    assert 1000 < await inspect.pttl(key) <= 1600

    async def ended() -> bool:
        return await store.load(session.id) is None

    await wait_until(ended, 5, 0.05, "the absolute timeout")
    assert time.time() >= session.absolute - 0.1
    assert not await inspect.exists(key)


async def test_delete_returns_the_refresh_token_once(resp: RespClient, inspect: Redis) -> None:
    store = SessionStore(resp, cache=5)
    session = await store.create(tokens(3))
    assert store.cached(session.id) == session
    assert await store.delete(session.id) == "refresh-3"
    assert store.cached(session.id) is None
    assert not await inspect.exists(session_key(session.id))
    assert await store.delete(session.id) is None


async def test_only_one_process_spends_the_refresh_token(resp: RespClient, redis_url: str) -> None:
    issuer = Issuer()
    store = SessionStore(resp, cache=0)
    # A 5-minute token 8 s from its expiry (the margin is 60 s): due for renewal.
    session = await store.create(tokens(0, ttl=8, age=292))
    other = RespClient(redis_url)  # a second gateway process, with its own connection
    try:
        gates = [
            SessionGate(store, issuer, origins=Origins()),
            SessionGate(SessionStore(other, cache=0), issuer, origins=Origins()),
        ]
        results = await asyncio.gather(*(gates[i % 2].fresh(session.id) for i in range(10)))
    finally:
        await other.close()
    assert issuer.refreshes == ["refresh-0"]
    accesses = {r.access for r in results if r is not None}
    # Those that lost the claim used the token still valid for 8 s, or the new one.
    assert accesses <= {"access-0", "access-1"}
    assert "access-1" in accesses
    current = await store.load(session.id)
    assert current is not None
    assert (current.access, current.refresh, current.csrf) == (
        "access-1",
        "refresh-1",
        session.csrf,
    )


async def test_an_expired_token_is_waited_for_while_another_process_renews_it(
    resp: RespClient, redis_url: str
) -> None:
    issuer = Issuer()
    store = SessionStore(resp, cache=0)
    session = await store.create(tokens(0, ttl=1, age=299))  # unusable: under 5 s left
    other = RespClient(redis_url)
    try:
        a = SessionGate(store, issuer, origins=Origins())
        b = SessionGate(SessionStore(other, cache=0), issuer, origins=Origins())
        first, second = await asyncio.gather(a.fresh(session.id), b.fresh(session.id))
    finally:
        await other.close()
    assert issuer.refreshes == ["refresh-0"]
    assert first is not None
    assert second is not None
    assert first.access == second.access == "access-1"


async def test_a_refused_refresh_ends_the_session(resp: RespClient, inspect: Redis) -> None:
    class Refusing(Issuer):
        async def refresh(self, refresh_token: str) -> Tokens | None:
            return None

    store = SessionStore(resp, cache=0)
    session = await store.create(tokens(0, ttl=1, age=299))
    assert await SessionGate(store, Refusing(), origins=Origins()).fresh(session.id) is None
    assert not await inspect.exists(session_key(session.id))


async def test_without_redis_sessions_are_503_at_once_then_work_again(
    redis_factory: Callable[..., RedisServer],
) -> None:
    server = redis_factory()
    resp = RespClient(server.url)
    try:
        store = SessionStore(resp, cache=0, retry_interval=0.5)
        session = await store.create(tokens(1))
        server.kill()
        with pytest.raises(ServiceUnavailable) as caught:
            await store.load(session.id)
        assert caught.value.headers == {"Retry-After": "1"}
        began = time.monotonic()
        with pytest.raises(ServiceUnavailable):  # within retry_interval: not even tried
            await store.load(session.id)
        assert time.monotonic() - began < 0.05
        assert store.outages == 1
        redis_factory(server.port)

        async def back() -> bool:
            try:
                await store.create(tokens(2))
            except ServiceUnavailable:
                return False
            return True

        await wait_until(back, 10, 0.1, "sessions working again")
        assert await store.load(session.id) is None  # Redis came back empty
    finally:
        await resp.close()


def test_the_session_cookie_is_read_only_when_it_is_ours_and_well_formed() -> None:
    sid = "Ab_-" * 10 + "xyz"
    assert len(sid) == 43

    def read(*values: bytes) -> str | None:
        return session_cookie([(b"Host", b"h"), *((b"Cookie", v) for v in values)])

    assert read(b"essaim_session=" + sid.encode()) == sid
    assert read(b"theme=dark; essaim_session=" + sid.encode() + b"; lang=fr") == sid
    assert read(b"theme=dark", b"essaim_session=" + sid.encode()) == sid
    assert read(b"my_essaim_session=" + sid.encode()) is None
    assert read(b"essaim_session=" + sid.encode() + b"x") is None
    assert read(b"essaim_session=short") is None
    assert read(b"essaim_session=" + sid.replace("A", "%").encode()) is None
    assert read() is None


def test_origin_checks() -> None:
    own = [(b"Host", b"gw.example:8080")]
    allowed = Origins.parse("https://app.example, http://localhost:3000")
    for origin in (b"http://gw.example:8080", b"https://gw.example:8080", b"https://app.example"):
        check_origin([*own, (b"Origin", origin)], allowed)
    check_origin([*own, (b"Sec-Fetch-Site", b"same-origin")], allowed)
    check_origin([*own, (b"Sec-Fetch-Site", b"none")], allowed)
    check_origin(own, allowed)  # neither header: the token decides
    for bad in (
        [(b"Origin", b"http://evil.example")],
        [(b"Origin", b"null")],
        [(b"Origin", b"http://gw.example:8081")],
        [(b"Sec-Fetch-Site", b"cross-site")],
        [(b"Sec-Fetch-Site", b"same-site")],
        [(b"Origin", b"http://evil.example"), (b"Sec-Fetch-Site", b"same-origin")],
    ):
        with pytest.raises(Forbidden):
            check_origin([*own, *bad], allowed)
    for text in ("app.example", "ftp://x", "https://a.example/path", "https://"):
        with pytest.raises(ValueError, match="expected an origin"):
            Origins.parse(text)


def test_the_csrf_token_must_be_the_sessions() -> None:
    check_token([(b"X-CSRF-Token", b"t" * 43)], "t" * 43)
    with pytest.raises(Forbidden, match="needs the X-CSRF-Token header"):
        check_token([], "t" * 43)
    with pytest.raises(Forbidden, match="not this session's"):
        check_token([(b"X-CSRF-Token", b"u" * 43)], "t" * 43)
