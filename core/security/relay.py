"""Requests authenticated by a session: the cookie in, a fresh access token relayed out.

:class:`SessionGate` is what a route guard (:mod:`core.proxy.guard`) asks
when a route accepts sessions (``auth_via = "session"`` or ``"either"``).
For one request it:

1. reads the session id from the ``essaim_session`` cookie (401 without one);
2. for a state-changing method (anything but GET, HEAD, OPTIONS, TRACE),
   checks where the request comes from and that it carries the session's
   CSRF token (:mod:`core.security.csrf`; 403 otherwise);
3. finds the session: in this process' short cache, else in Redis (one
   round trip, which renews the idle timeout); 401 when it has ended, 503
   when Redis can't be reached;
4. when the access token is near its expiry (within ``refresh_margin``
   seconds, or half its lifetime if that is shorter), spends the refresh
   token at the auth service for new ones, once for all the gateways:
   the process that claims the refresh in Redis does it, the others use the
   token they have while it is still valid, else wait (at most
   ``wait_refresh`` seconds) for the new one;
5. checks the route's policy against the session's roles and returns the
   lines to send upstream: ``X-User-Id``, ``X-User-Roles`` and
   ``Authorization: Bearer <access token>`` (token relay: services verify
   a token as they do for any client, and keep no session).

Steps 1, 2 and 5 never wait: :meth:`SessionGate.identify_now` answers from
the cache or raises :class:`SessionPending`, and the caller then awaits
:meth:`SessionGate.identify`.

The auth service is reached through an :class:`Issuer`, which the gateway
builds on its service calls (discovery, balancing, breaker, retries).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from core import log
from core.errors import HTTPProblem, ServiceUnavailable, Unauthorized
from core.security.access import Policy
from core.security.csrf import Origins, check_origin, check_token
from core.security.sessions import SESSION_COOKIE, Session, SessionStore, Tokens

logger = log.get("sessions")

__all__ = [
    "SAFE_METHODS",
    "Issuer",
    "SessionGate",
    "SessionPending",
    "cookie_challenge",
    "session_cookie",
]

#: Methods that change nothing (RFC 9110 9.2.1): no CSRF check.
SAFE_METHODS = frozenset((b"GET", b"HEAD", b"OPTIONS", b"TRACE"))

Headers = Sequence[tuple[bytes, bytes]]
_COOKIE_NAME = SESSION_COOKIE.encode()
# The cookie whole (its name after a ';' or the start) with a value as new_secret() makes.
_SESSION_RE = re.compile(rb"(?:^|;)[ \t]*" + _COOKIE_NAME + rb"=([A-Za-z0-9_-]{43})[ \t]*(?:;|$)")


class SessionPending(Exception):
    """The session must be read from Redis (or refreshed) first: await :meth:`SessionGate.identify`."""


class Issuer(Protocol):
    """The auth service, as the gateway's sessions use it.

    Each method raises :class:`~core.errors.HTTPProblem` when the service
    can't be reached or fails (503, 502, 504, marked with its name).
    """

    async def password(self, username: str, password: str, address: str, request_id: str) -> Tokens:
        """Tokens for a user name and password; 401 if wrong, 429 while throttled."""

    async def refresh(self, refresh_token: str) -> Tokens | None:
        """New tokens for a refresh token (which is spent); None if it is refused."""

    async def revoke(self, refresh_token: str) -> None:
        """End the refresh token's family (the session is over at the auth service too)."""


def cookie_challenge() -> str:
    """The ``WWW-Authenticate`` value of a route that wants a session cookie.

    The syntax of the (expired) draft-broyer-http-cookie-auth: where to log
    in and which cookie to carry.
    """
    return f'Cookie realm="essaim", form-action="/-/session", cookie-name="{SESSION_COOKIE}"'


def session_cookie(headers: Headers) -> str | None:
    """The session id of the request's ``essaim_session`` cookie (None: none, or not one of ours)."""
    for name, value in headers:
        if len(name) == 6 and _COOKIE_NAME in value and name.lower() == b"cookie":
            found = _SESSION_RE.search(value)
            if found is not None:
                return found.group(1).decode("ascii")
    return None


class SessionGate:
    """Session authentication for routes; see the module docstring.

    ``issuer`` is the auth service (its tokens verified by the gateway's key
    set); ``origins`` the origins allowed besides the gateway's own for
    state-changing requests.
    """

    def __init__(
        self,
        store: SessionStore,
        issuer: Issuer,
        *,
        origins: Origins,
        refresh_margin: float = 60.0,
        wait_refresh: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.issuer = issuer
        self.origins = origins
        self.refresh_margin = refresh_margin
        self.wait_refresh = wait_refresh
        self.clock = clock
        self.refreshed = 0
        self.refresh_failed = 0
        self._inflight: dict[str, asyncio.Future[Session | None]] = {}

    # -- per request ------------------------------------------------------------------------

    def identify_now(
        self, headers: Headers, method: bytes, policy: Policy, *, either: bool = False
    ) -> tuple[bytes, str]:
        """``(upstream lines, user id)`` from the cache; :class:`SessionPending` when it must wait."""
        session_id = self._session_id(headers, either)
        unsafe = method not in SAFE_METHODS
        if unsafe:
            check_origin(headers, self.origins)
        session = self.store.cached(session_id)
        if session is None or self._needs_refresh(session):
            raise SessionPending
        return self._admit(session, headers, unsafe, policy)

    async def identify(
        self, headers: Headers, method: bytes, policy: Policy, *, either: bool = False
    ) -> tuple[bytes, str]:
        """:meth:`identify_now`, reading the session from Redis and refreshing its tokens if due."""
        session_id = self._session_id(headers, either)
        unsafe = method not in SAFE_METHODS
        if unsafe:
            check_origin(headers, self.origins)
        session = await self.fresh(session_id)
        if session is None:
            raise _ended(either)
        return self._admit(session, headers, unsafe, policy)

    def _session_id(self, headers: Headers, either: bool) -> str:
        session_id = session_cookie(headers)
        if session_id is None:
            raise Unauthorized(
                "this route needs a session (log in with POST /-/session)"
                + (" or a bearer token" if either else ""),
                headers={"WWW-Authenticate": _challenge(either)},
            )
        return session_id

    @staticmethod
    def _admit(
        session: Session, headers: Headers, unsafe: bool, policy: Policy
    ) -> tuple[bytes, str]:
        if unsafe:
            check_token(headers, session.csrf)
        policy.check(session.identity)
        return session.upstream_lines, session.sub

    # -- sessions with fresh tokens ---------------------------------------------------------

    def _needs_refresh(self, session: Session) -> bool:
        lifetime = max(0.0, session.access_exp - session.access_iat)
        return self.clock() >= session.access_exp - min(self.refresh_margin, lifetime / 2)

    def _usable(self, session: Session) -> bool:
        """The access token is still good for a request (a few seconds left at least)."""
        return self.clock() < session.access_exp - 5.0

    async def fresh(self, session_id: str) -> Session | None:
        """The session with an access token that is not near its expiry; None if it ended."""
        session = self.store.cached(session_id)
        if session is None:
            session = await self.store.load(session_id)
            if session is None:
                return None
        if not self._needs_refresh(session):
            return session
        running = self._inflight.get(session_id)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[Session | None] = asyncio.get_running_loop().create_future()
        self._inflight[session_id] = future
        try:
            result = await self._refresh(session)
        except BaseException as exc:
            future.set_exception(exc if isinstance(exc, Exception) else ServiceUnavailable())
            future.exception()  # retrieved: no "never retrieved" warning
            raise
        else:
            future.set_result(result)
            return result
        finally:
            del self._inflight[session_id]

    async def _refresh(self, session: Session) -> Session | None:
        claimed = await self.store.claim_refresh(session)
        if claimed < 0:
            return None
        if claimed == 0:
            return await self._await_refresh(session)
        try:
            tokens = await self.issuer.refresh(session.refresh)
        except HTTPProblem as problem:
            self.refresh_failed += 1
            if self._usable(session):
                logger.warning(
                    "session refresh failed (%s); the current token is still used", problem
                )
                return session
            raise
        if tokens is None:
            # Refused (revoked, expired, reused): the session can't go on.
            logger.info("session refresh refused by the auth service: the session ends")
            await self.store.delete(session.id)
            return None
        saved = await self.store.save_tokens(session, tokens)
        if saved is None:  # logged out meanwhile: the new family must not live on
            await self.issuer.revoke(tokens.refresh)
            return None
        self.refreshed += 1
        return saved

    async def _await_refresh(self, session: Session) -> Session | None:
        """Another process refreshes: use the token while it is valid, else wait for the new one."""
        deadline = time.monotonic() + self.wait_refresh
        while True:
            current = await self.store.load(session.id, touch=False)
            if current is None:
                return None
            if current.refresh != session.refresh or self._usable(current):
                return current
            if time.monotonic() >= deadline:
                raise ServiceUnavailable(
                    "the session's access token is being renewed; retry shortly",
                    headers={"Retry-After": "1"},
                )
            await asyncio.sleep(0.05)


def _challenge(either: bool) -> str:
    return 'Bearer realm="essaim", ' + cookie_challenge() if either else cookie_challenge()


def _ended(either: bool) -> Unauthorized:
    return Unauthorized(
        "the session has ended (logged out, or past its idle or absolute timeout); log in again",
        headers={"WWW-Authenticate": _challenge(either)},
    )
