"""Route access policies and the per-request authorization step.

A policy is written ``public``, ``authenticated`` or ``roles:a,b`` (any one
of the roles suffices), the format of the gateway's route ``auth`` field.
:meth:`Policy.check` answers the question "may this identity pass?" with
nothing, :class:`~core.errors.Unauthorized` (no identity: 401 with a
``WWW-Authenticate: Bearer realm="essaim"`` challenge) or :class:`~core.errors.Forbidden`
(403, ``error="insufficient_scope"``).

:func:`authorize` is the whole step for one request: the ``Authorization``
header in, the identity (or None on a public route) out. The identity is
passed upstream in :data:`USER_ID_HEADER` and :data:`USER_ROLES_HEADER`;
whatever the client sent in those headers must be removed first, on every
route, public ones included (:data:`IDENTITY_HEADERS`).

:func:`access_middleware` is the same check inside a service (defence in
depth): a service behind the gateway can verify the token again itself.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Awaitable, Callable
from typing import Literal

from aiohttp import web
from aiohttp.typedefs import Middleware

from core.errors import Forbidden, Unauthorized
from core.security.tokens import (
    ROLE_RE,
    Identity,
    UnknownKeyError,
    Verifier,
    bearer_token,
    challenge,
)

__all__ = [
    "AUTH_VIA",
    "IDENTITY",
    "IDENTITY_HEADERS",
    "USER_ID_HEADER",
    "USER_ROLES_HEADER",
    "AuthVia",
    "Policy",
    "access_middleware",
    "authorize",
    "authorize_async",
]

USER_ID_HEADER = "X-User-Id"
USER_ROLES_HEADER = "X-User-Roles"
#: Lower-case names of the headers that carry the identity upstream.
IDENTITY_HEADERS = frozenset({USER_ID_HEADER.lower(), USER_ROLES_HEADER.lower()})

#: Where :func:`access_middleware` leaves the identity (None on public routes).
IDENTITY: web.RequestKey[Identity | None] = web.RequestKey("identity")

PolicyKind = Literal["public", "authenticated", "roles"]

#: Which credential a route's policy accepts (a route's ``auth_via``).
AuthVia = Literal["token", "session", "either"]
AUTH_VIA: tuple[AuthVia, ...] = ("token", "session", "either")


@dataclasses.dataclass(frozen=True, slots=True)
class Policy:
    """Who may use a route: anyone, any authenticated user, or holders of a role."""

    kind: PolicyKind
    roles: frozenset[str] = frozenset()

    @staticmethod
    @functools.lru_cache(maxsize=256)
    def parse(text: str) -> Policy:
        """``public`` | ``authenticated`` | ``roles:a,b``; ``ValueError`` otherwise."""
        if text == "public":
            return PUBLIC
        if text == "authenticated":
            return AUTHENTICATED
        if text.startswith("roles:"):
            roles = text[6:].split(",")
            if all(ROLE_RE.match(r) for r in roles):
                return Policy("roles", frozenset(roles))
            raise ValueError(f"{text!r}: expected roles:a,b with roles ^[A-Za-z0-9_.:-]+$")
        raise ValueError(f"expected 'public', 'authenticated' or 'roles:<role>,...', got {text!r}")

    @property
    def public(self) -> bool:
        return self.kind == "public"

    def check(self, identity: Identity | None) -> None:
        """Return if ``identity`` may pass; raise 401 without one, 403 without a role."""
        if self.kind == "public":
            return
        if identity is None:
            raise Unauthorized(
                "this route needs a bearer token", headers={"WWW-Authenticate": challenge()}
            )
        if self.kind == "roles" and not identity.has_any(self.roles):
            wanted = ", ".join(sorted(self.roles))
            raise Forbidden(
                f"this route needs one of the roles: {wanted}",
                headers={
                    "WWW-Authenticate": challenge(
                        "insufficient_scope", f"needs one of the roles: {wanted}"
                    )
                },
            )

    def __str__(self) -> str:
        if self.kind == "roles":
            return "roles:" + ",".join(sorted(self.roles))
        return self.kind


PUBLIC = Policy("public")
AUTHENTICATED = Policy("authenticated")


def authorize(verifier: Verifier, policy: Policy, authorization: str | None) -> Identity | None:
    """The identity allowed through by ``policy``, without waiting.

    Public routes return None at once (no token is verified). Otherwise the
    bearer token of ``authorization`` is verified and ``policy`` checked:
    :class:`~core.security.tokens.TokenError` (401), ``Unauthorized`` (401, no
    token), ``Forbidden`` (403). Raises :class:`~core.security.tokens.UnknownKeyError`
    when the key set must be refreshed first: call :func:`authorize_async`.
    """
    if policy.kind == "public":
        return None
    token = bearer_token(authorization)
    identity = None if token is None else verifier.verify(token)
    policy.check(identity)
    return identity


async def authorize_async(
    verifier: Verifier, policy: Policy, authorization: str | None
) -> Identity | None:
    """:func:`authorize`, refreshing the key set (rate-limited) on an unknown ``kid``."""
    try:
        return authorize(verifier, policy, authorization)
    except UnknownKeyError:
        token = bearer_token(authorization)
        assert token is not None
        identity = await verifier.verify_async(token)
        policy.check(identity)
        return identity


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def access_middleware(
    verifier: Verifier, policy_for: Callable[[web.Request], Policy]
) -> Middleware:
    """An aiohttp middleware that enforces ``policy_for(request)`` on every request.

    The identity is stored in ``request[IDENTITY]``. Place it after
    :func:`~core.errors.problem_middleware` so that refusals render as
    problem details.
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        request[IDENTITY] = await authorize_async(
            verifier, policy_for(request), request.headers.get("Authorization")
        )
        return await handler(request)

    return middleware
