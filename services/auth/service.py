"""The auth service: users and passwords in, short-lived EdDSA access tokens out.

| method and path | answer |
|---|---|
| ``POST /token`` | ``{username, password}``: ``{access_token, token_type, expires_in, refresh_token, refresh_expires_in}`` |
| ``POST /token/refresh`` | ``{refresh_token}``: new tokens; the refresh token given is spent |
| ``POST /token/revoke`` | ``{refresh_token}``: 200 whether or not it was known (RFC 7009) |
| ``GET /.well-known/jwks.json`` | the public keys, by ``kid`` |
| ``POST /keys/rotate`` | a new key signs from now on (needs a token with the admin role) |

Wrong credentials answer 401 with one body whether the user exists or not,
after the same amount of work (an unknown user's password is checked
against a dummy hash). Guessing is throttled per user name and per client
address (:mod:`services.auth.throttle`): past the burst, 429 with
``Retry-After``, before any password is checked. The client address is the
peer, or the last ``X-Forwarded-For`` entry when the peer is a trusted proxy
(the gateway appends the address it saw).

Access tokens carry ``iss``, ``aud``, ``sub`` (the user id), ``exp``,
``iat``, ``nbf``, ``jti``, ``roles`` and ``preferred_username``, signed by
the current key of the :class:`~services.auth.keys.KeyRing`, which is kept in
the service's database and rotated every ``key_rotation_interval``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import ipaddress
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web

from core import log
from core.errors import SettingsError, TooManyRequests, Unauthorized
from core.http import json_response, read_json
from core.security.access import Policy, authorize_async
from core.security.jwks import KeySet
from core.security.tokens import Verifier
from core.service.scaffold import DB, SETTINGS, CleanupContext, Service, ServiceSettings, build_app
from core.settings import Secret, option
from core.validation import Fields
from services.auth import refresh, throttle, users
from services.auth.keys import KeyRing, KeyRow
from services.auth.openapi import describe
from services.auth.passwords import hash_password, verify_password

logger = log.get("auth")

BODY_LIMIT = 16 * 1024
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}

MIGRATIONS = (
    users.SCHEMA
    + throttle.SCHEMA
    + refresh.SCHEMA
    + """
    CREATE TABLE signing_keys (
        kid          TEXT PRIMARY KEY,
        private      TEXT NOT NULL,
        created_at   REAL NOT NULL,
        activated_at REAL,
        retired_at   REAL
    );
    """,
)


@dataclasses.dataclass(frozen=True)
class AuthSettings(ServiceSettings):
    """The auth service's settings (prefix ``AUTH_``)."""

    issuer: str = dataclasses.field(
        default="essaim-auth", metadata=option("the tokens' iss claim (verifiers expect it)")
    )
    audience: str = dataclasses.field(
        default="essaim", metadata=option("the tokens' aud claim (verifiers expect it)")
    )
    access_ttl: int = dataclasses.field(
        default=300, metadata=option("seconds an access token is valid")
    )
    refresh_ttl: int = dataclasses.field(
        default=8 * 3600, metadata=option("seconds a refresh token is valid")
    )
    key_rotation_interval: float = dataclasses.field(
        default=86400.0,
        metadata=option("seconds a signing key signs before the next one takes over"),
    )
    seed_users: Secret = dataclasses.field(
        default=Secret(""),
        metadata=option("users created or reset at start: name:password:role,role;name:..."),
    )
    password_cost: int = dataclasses.field(
        default=15, metadata=option("log2 of scrypt's N for new password hashes (10-20)")
    )
    login_user_burst: int = dataclasses.field(
        default=5, metadata=option("failed logins of one user name allowed at once")
    )
    login_user_per_minute: float = dataclasses.field(
        default=1.0, metadata=option("failed logins a minute of one user name, past the burst")
    )
    login_address_burst: int = dataclasses.field(
        default=20, metadata=option("failed logins from one address allowed at once")
    )
    login_address_per_minute: float = dataclasses.field(
        default=10.0, metadata=option("failed logins a minute from one address, past the burst")
    )
    trusted_proxies: str = dataclasses.field(
        default="127.0.0.1,::1",
        metadata=option("peers whose X-Forwarded-For gives the client address (comma-separated)"),
    )
    admin_role: str = dataclasses.field(
        default="admin", metadata=option("role allowed to rotate the signing key")
    )

    def validate(self) -> None:
        super().validate()
        if not 10 <= self.access_ttl <= 86400:
            raise SettingsError(f"AUTH_ACCESS_TTL: expected 10-86400 s, got {self.access_ttl}")
        if not self.access_ttl <= self.refresh_ttl <= 90 * 86400:
            raise SettingsError(
                f"AUTH_REFRESH_TTL: expected access_ttl-{90 * 86400} s, got {self.refresh_ttl}"
            )
        if self.key_rotation_interval < self.access_ttl:
            raise SettingsError(
                "AUTH_KEY_ROTATION_INTERVAL: expected at least the access token TTL "
                f"({self.access_ttl} s), got {self.key_rotation_interval}"
            )
        if not 10 <= self.password_cost <= 20:
            raise SettingsError(f"AUTH_PASSWORD_COST: expected 10-20, got {self.password_cost}")
        checks: list[tuple[str, Callable[[], object]]] = [
            ("AUTH_SEED_USERS", lambda: users.parse_seed(self.seed_users.reveal())),
            (
                "AUTH_LOGIN_USER_BURST, AUTH_LOGIN_USER_PER_MINUTE",
                lambda: throttle.Bucket(self.login_user_burst, self.login_user_per_minute),
            ),
            (
                "AUTH_LOGIN_ADDRESS_BURST, AUTH_LOGIN_ADDRESS_PER_MINUTE",
                lambda: throttle.Bucket(self.login_address_burst, self.login_address_per_minute),
            ),
            ("AUTH_TRUSTED_PROXIES", self.proxies),
        ]
        for variable, check in checks:
            try:
                check()
            except ValueError as exc:
                raise SettingsError(f"{variable}: {exc}") from None

    def login_buckets(self) -> tuple[throttle.Bucket, throttle.Bucket]:
        return (
            throttle.Bucket(self.login_user_burst, self.login_user_per_minute),
            throttle.Bucket(self.login_address_burst, self.login_address_per_minute),
        )

    def proxies(self) -> frozenset[str]:
        found = frozenset(p.strip() for p in self.trusted_proxies.split(",") if p.strip())
        for proxy in found:
            try:
                ipaddress.ip_address(proxy)
            except ValueError:
                raise ValueError(f"{proxy!r} is not an IP address") from None
        return found


class AuthState:
    """What the handlers share: settings, key ring, verifier, throttle, the dummy hash."""

    def __init__(self, settings: AuthSettings, ring: KeyRing, clock: Callable[[], float]) -> None:
        self.settings = settings
        self.ring = ring
        self.clock = clock
        self.keys = KeySet()
        self.keys.load(ring.jwks())
        self.verifier = Verifier(
            self.keys, issuer=settings.issuer, audience=settings.audience, clock=clock
        )
        self.throttle = throttle.LoginThrottle(*settings.login_buckets())
        self.proxies = settings.proxies()
        self.admin = Policy("roles", frozenset({settings.admin_role}))
        # Two scrypt computations at a time at most: each holds 32 MiB and a core.
        self.hashing = asyncio.Semaphore(2)
        self.dummy_hash = ""
        self.issued = 0
        self.failed = 0
        self.throttled = 0


AUTH = web.AppKey("auth", AuthState)


async def _save_ring(app: web.Application) -> None:
    state = app[AUTH]
    rows = state.ring.rows()

    def write(conn: sqlite3.Connection) -> None:
        conn.execute("DELETE FROM signing_keys")
        conn.executemany(
            "INSERT INTO signing_keys (kid, private, created_at, activated_at, retired_at) "
            "VALUES (?, ?, ?, ?, ?)",
            rows,
        )

    await app[DB].transaction(write)
    state.keys.load(state.ring.jwks())


async def maintain_keys(app: web.Application) -> None:
    """Rotate when due and drop expired keys; persisted and republished when it changed."""
    if app[AUTH].ring.maintain():
        await _save_ring(app)


def _upsert(conn: sqlite3.Connection, *, seed: users.Seed, hashed: str, now: float) -> None:
    users.upsert(conn, seed.username, hashed, seed.roles, now)


def auth_context(clock: Callable[[], float] = time.time) -> CleanupContext:
    """The cleanup context that loads the key ring and seeds the users (after the database's)."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        settings = app[SETTINGS]
        assert isinstance(settings, AuthSettings)
        rows: list[KeyRow] = await app[DB].run(
            lambda c: c.execute(
                "SELECT kid, private, created_at, activated_at, retired_at FROM signing_keys"
            ).fetchall()
        )
        ring = KeyRing.from_rows(
            rows,
            token_ttl=settings.access_ttl,
            rotation_interval=settings.key_rotation_interval,
            clock=clock,
        )
        ring.maintain()
        app[AUTH] = AuthState(settings, ring, clock)
        await _save_ring(app)
        cost = settings.password_cost
        app[AUTH].dummy_hash = await asyncio.to_thread(hash_password, secrets.token_urlsafe(), cost)
        for seed in users.parse_seed(settings.seed_users.reveal()):
            hashed = await asyncio.to_thread(hash_password, seed.password, cost)
            await app[DB].transaction(
                functools.partial(_upsert, seed=seed, hashed=hashed, now=clock())
            )
            logger.info("user %s ready with roles %s", seed.username, ",".join(seed.roles) or "-")
        logger.info("issuer %s, signing with key %s", settings.issuer, ring.current.kid)
        yield

    return ctx


# ----------------------------------------------------------------------------- handlers

routes = web.RouteTableDef()


def client_address(request: web.Request, proxies: frozenset[str]) -> str:
    """The peer, or the last ``X-Forwarded-For`` entry when the peer is a trusted proxy."""
    peer = request.remote or ""
    if peer in proxies:
        forwarded = request.headers.get("X-Forwarded-For", "")
        last = forwarded.rsplit(",", 1)[-1].strip()
        if last:
            return last[:64]
    return peer


def _tokens(state: AuthState, user: users.User, refresh_token: str) -> dict[str, Any]:
    now = state.clock()
    settings = state.settings
    claims = {
        "iss": settings.issuer,
        "aud": settings.audience,
        "sub": user.sub,
        "iat": int(now),
        "nbf": int(now),
        "exp": int(now) + settings.access_ttl,
        "jti": secrets.token_urlsafe(16),
        "roles": list(user.roles),
        "preferred_username": user.username,
    }
    state.issued += 1
    return {
        "access_token": state.ring.sign(claims),
        "token_type": "Bearer",
        "expires_in": settings.access_ttl,
        "refresh_token": refresh_token,
        "refresh_expires_in": settings.refresh_ttl,
    }


def _bad_credentials() -> Unauthorized:
    return Unauthorized(
        "invalid user name or password", headers={"WWW-Authenticate": 'Bearer realm="essaim"'}
    )


@routes.post("/token")
async def token(request: web.Request) -> web.Response:
    """Password in, tokens out; 401 for wrong credentials, 429 while throttled."""
    app = request.app
    state, db = app[AUTH], app[DB]
    body = await read_json(request, BODY_LIMIT)
    fields = Fields(body, {"username", "password"})
    username = fields.text("username", max_length=128)
    fields.text("password", max_length=1024)
    fields.check()
    password: str = body["password"]  # unstripped: spaces are part of a password
    address = client_address(request, state.proxies)
    now = state.clock()
    wait = await db.transaction(lambda c: state.throttle.take(c, username, address, now))
    if wait:
        state.throttled += 1
        logger.warning("login throttled for user %r from %s", username, address)
        raise TooManyRequests(
            f"too many failed logins; retry in {wait} s", headers={"Retry-After": str(wait)}
        )
    user = await db.run(lambda c: users.find(c, username))
    async with state.hashing:
        ok = await asyncio.to_thread(
            verify_password, password, user.password_hash if user else state.dummy_hash
        )
    if not ok or user is None or user.disabled:
        state.failed += 1
        logger.info("failed login for user %r from %s", username, address)
        raise _bad_credentials()
    await maintain_keys(app)
    settings = state.settings

    def grant(conn: sqlite3.Connection) -> str:
        state.throttle.give_back(conn, username, address, now)
        return refresh.issue(conn, user.id, now, settings.refresh_ttl)

    refresh_token = await db.transaction(grant)
    return json_response(_tokens(state, user, refresh_token), headers=NO_STORE)


def _refresh_token(body: Any) -> str:
    fields = Fields(body, {"refresh_token"})
    value = fields.text("refresh_token", max_length=256)
    fields.check()
    return value


@routes.post("/token/refresh")
async def refresh_tokens(request: web.Request) -> web.Response:
    """Spend a refresh token for new tokens; a reused one revokes its whole family."""
    app = request.app
    state, db = app[AUTH], app[DB]
    given = _refresh_token(await read_json(request, BODY_LIMIT))
    now = state.clock()
    ttl = state.settings.refresh_ttl

    def spend(
        conn: sqlite3.Connection,
    ) -> tuple[users.User | None, str] | refresh.InvalidRefreshToken:
        outcome = refresh.use(conn, given, now, ttl)
        if isinstance(outcome, refresh.InvalidRefreshToken):
            return outcome
        user_id, new_token = outcome
        return users.get(conn, user_id), new_token

    result = await db.transaction(spend)
    if isinstance(result, refresh.InvalidRefreshToken):
        logger.info("refresh refused: %s", result.reason)
        raise Unauthorized(f"invalid refresh token: {result.reason}")
    user, new_token = result
    if user is None or user.disabled:
        raise Unauthorized("invalid refresh token: the user is gone")
    await maintain_keys(app)
    return json_response(_tokens(state, user, new_token), headers=NO_STORE)


@routes.post("/token/revoke")
async def revoke(request: web.Request) -> web.Response:
    """End the session of a refresh token; 200 even when unknown (RFC 7009 section 2.2)."""
    app = request.app
    given = _refresh_token(await read_json(request, BODY_LIMIT))
    now = app[AUTH].clock()
    await app[DB].transaction(lambda c: refresh.revoke(c, given, now))
    return json_response({}, headers=NO_STORE)


@routes.get("/.well-known/jwks.json")
async def jwks(request: web.Request) -> web.Response:
    """The public keys: the current, the next, and the retired ones whose tokens live on."""
    await maintain_keys(request.app)
    return json_response(request.app[AUTH].ring.jwks(), headers={"Cache-Control": "max-age=60"})


@routes.post("/keys/rotate")
async def rotate(request: web.Request) -> web.Response:
    """Make the next key sign from now on (admin role); the old one stays published."""
    app = request.app
    state = app[AUTH]
    identity = await authorize_async(
        state.verifier, state.admin, request.headers.get("Authorization")
    )
    current = state.ring.rotate()
    await _save_ring(app)
    logger.warning(
        "signing key rotated to %s by user %s", current.kid, identity.sub if identity else "?"
    )
    return json_response(
        {"kid": current.kid, "keys": [k["kid"] for k in state.ring.jwks()["keys"]]}
    )


SERVICE = Service(
    name="auth",
    description="users, passwords, access and refresh tokens, signing keys",
    routes=routes,
    migrations=MIGRATIONS,
    settings=AuthSettings,
    contexts=(auth_context(),),
    default_access="public",  # logins are anonymous; /keys/rotate checks its token itself
    openapi=describe,
)


def build_auth_app(
    settings: AuthSettings, clock: Callable[[], float] = time.time
) -> web.Application:
    """The service's application, on ``clock`` (tests move time)."""
    return build_app(dataclasses.replace(SERVICE, contexts=(auth_context(clock),)), settings)
