"""A route's access policy and rate limit, as the data plane checks them per request.

A :class:`Guard` is built once per route (and for the discovery routes) when
a route table is installed; routes that are public and unlimited get none and
pay nothing. Per request:

1. :meth:`Guard.identify` verifies the route's credential against its
   policy without waiting: the bearer token (``auth_via = "token"``, the
   default), the session cookie (``"session"``, see
   :mod:`core.security.relay`), or either (a bearer token when the request
   has one, else the session). For the token, it verifies it (the verifier caches tokens already seen until they
   expire) and returns the ``x-user-id`` / ``x-user-roles`` lines to send
   upstream. It raises the problem to answer instead: 401 (no token, or a bad
   one) with ``WWW-Authenticate``, 403 (a missing role), 503 (the route needs
   a token but the gateway has no key set). :class:`~core.security.tokens.UnknownKeyError`
   means the key set must be refreshed first, and
   :class:`~core.security.relay.SessionPending` that the session must be
   read from Redis first: :meth:`identify_async`. A session-authenticated
   request sends upstream ``Authorization: Bearer`` with the session's
   access token (token relay); on routes that accept sessions the client's
   own ``Authorization`` header is dropped (the router does it) and a
   bearer token it presented on an ``either`` route is sent again here.
2. :meth:`admit` takes a token from the route's bucket in Redis (keyed by the
   user id, else the client address) and returns the decision (with a
   ``synced`` limit, :meth:`admit_now` decides from the local bucket without
   waiting, see :mod:`core.security.synced`); the caller
   answers :meth:`~core.security.ratelimit.RateLimiter.problem` when refused and adds
   :meth:`rate_headers` to the response otherwise.

The client's own ``X-User-Id`` and ``X-User-Roles`` never reach a service: the
request scan drops them on every route (``core.proxy.wire``).
"""

from __future__ import annotations

from core.errors import ServiceUnavailable
from core.proxy.wire import header_value
from core.security.access import AUTH_VIA, AuthVia, Policy, authorize, authorize_async
from core.security.ratelimit import Decision, RateLimiter, bucket_key, rate_key
from core.security.relay import SessionGate
from core.security.synced import SyncedRateLimiter
from core.security.tokens import Identity, Verifier

__all__ = ["AUTH_VIA", "AuthVia", "Guard"]

_KEYS_KEPT = 10_000


class Guard:
    """The checks of one route: ``policy`` with ``verifier`` (or ``sessions``), ``limiter`` if limited."""

    __slots__ = (
        "_keys",
        "decide",
        "limiter",
        "policy",
        "route_id",
        "sessions",
        "verifier",
        "via",
    )

    def __init__(
        self,
        route_id: str,
        policy: Policy,
        verifier: Verifier | None,
        limiter: RateLimiter | None = None,
        *,
        via: AuthVia = "token",
        sessions: SessionGate | None = None,
    ) -> None:
        self.route_id = route_id
        self.policy = policy
        self.verifier = verifier
        self.limiter = limiter
        self.via = via
        self.sessions = sessions
        # A synced limiter decides from memory (core.security.synced).
        self.decide = limiter.decide_bucket if isinstance(limiter, SyncedRateLimiter) else None
        # Bucket keys by user id or client address, made once (two string builds a request less).
        self._keys: dict[str | bytes, str] = {}

    def _verifier(self) -> Verifier:
        if self.verifier is None:
            raise ServiceUnavailable(
                "this route needs a bearer token but the gateway has no key set "
                "(start it with --jwks-url)",
                headers={"Retry-After": "30"},
            )
        return self.verifier

    def _sessions(self) -> SessionGate:
        if self.sessions is None:
            raise ServiceUnavailable(
                "this route accepts sessions but the gateway has none (start it with --jwks-url)",
                headers={"Retry-After": "30"},
            )
        return self.sessions

    def identify(
        self, headers: list[tuple[bytes, bytes]], method: bytes = b"GET"
    ) -> tuple[bytes, str | None]:
        """``(identity header lines, user id)`` for a request allowed through; see the module doc."""
        if self.policy.public:
            return b"", None
        via = self.via
        if via == "token":
            return _lines(authorize(self._verifier(), self.policy, _authorization(headers)))
        if via == "either":
            authorization = _authorization(headers)
            if _is_bearer(authorization):
                lines, user = _lines(authorize(self._verifier(), self.policy, authorization))
                return lines + _relayed(authorization), user
        return self._sessions().identify_now(headers, method, self.policy, either=via == "either")

    async def identify_async(
        self, headers: list[tuple[bytes, bytes]], method: bytes = b"GET"
    ) -> tuple[bytes, str | None]:
        """:meth:`identify` after a (rate-limited) refresh of the key set, or reading the session."""
        via = self.via
        if via == "token":
            return _lines(
                await authorize_async(self._verifier(), self.policy, _authorization(headers))
            )
        if via == "either":
            authorization = _authorization(headers)
            if _is_bearer(authorization):
                identity = await authorize_async(self._verifier(), self.policy, authorization)
                lines, user = _lines(identity)
                return lines + _relayed(authorization), user
        return await self._sessions().identify(headers, method, self.policy, either=via == "either")

    async def admit(self, user_id: str | None, address: str) -> Decision:
        """The rate limit's decision for this request (allowed when not limited)."""
        assert self.limiter is not None
        return await self.limiter.check(self.route_id, rate_key(user_id, address))

    def admit_now(self, user_id: str | None, address: bytes) -> Decision | None:
        """The decision without waiting when the limit is ``synced`` and knows the key, else None.

        None means :meth:`admit` must be awaited (the exact mode, or a key
        this process has not read from Redis yet).
        """
        decide = self.decide
        if decide is None:
            return None
        who = user_id or address
        key = self._keys.get(who)
        if key is None:
            if len(self._keys) >= _KEYS_KEPT:
                self._keys.clear()
            key = self._keys[who] = bucket_key(
                self.route_id, rate_key(user_id, address.decode("latin-1"))
            )
        return decide(key)

    def rate_headers(self, decision: Decision) -> bytes:
        """``X-RateLimit-*`` response header lines for an allowed request."""
        assert self.limiter is not None
        # What limiter.headers() says for an allowed request, with one format per request.
        return b"X-RateLimit-Remaining: %d\r\n%s" % (decision.remaining, self.limiter.static_lines)


def _authorization(headers: list[tuple[bytes, bytes]]) -> str | None:
    value = header_value(headers, b"authorization")
    return value.decode("latin-1") if value else None


def _is_bearer(authorization: str | None) -> bool:
    return authorization is not None and authorization[:7].lower() == "bearer "


def _relayed(authorization: str | None) -> bytes:
    """The client's own bearer line, sent on (an ``either`` route drops the original)."""
    assert authorization is not None
    return b"authorization: " + authorization.encode("latin-1") + b"\r\n"


def _lines(identity: Identity | None) -> tuple[bytes, str | None]:
    if identity is None:
        return b"", None
    return (
        f"x-user-id: {identity.sub}\r\nx-user-roles: {identity.roles_header}\r\n".encode("latin-1"),
        identity.sub,
    )
