"""The auth service as a client that holds tokens for others sees it: the gateway's sessions.

:class:`AuthService` implements :class:`core.security.relay.Issuer` over
:class:`~core.service.calls.Calls`, so the auth service is found in the
registry snapshot and reached with the same balancing, breaker and retries
as any call (a login, a POST, is retried only when nothing was sent). Every
access token it returns was verified with the caller's key set.

| method | auth service endpoint |
|---|---|
| :meth:`AuthService.password` | ``POST /token`` |
| :meth:`AuthService.refresh` | ``POST /token/refresh`` |
| :meth:`AuthService.revoke` | ``POST /token/revoke`` |

The auth service's answers become problems the gateway passes on: 401
(wrong credentials), 429 (throttled, with its ``Retry-After``), 400 (a body
it refused); any other failure is 502, and the calls' own 502/503/504 when
it can't be reached. The login is sent with ``X-Forwarded-For`` set to the
client's address, so that the auth service throttles guesses per client
and not per gateway (it trusts the forwarded address from loopback peers,
``--trusted-proxies``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from core.errors import (
    BadGateway,
    BadRequest,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
)
from core.registry.discovery import Watcher
from core.security.relay import cookie_challenge
from core.security.sessions import Tokens
from core.security.tokens import TokenError, Verifier
from core.service.calls import CallResponse, Calls, Timeouts

__all__ = ["AuthService"]

_TIMEOUTS = Timeouts(connect=1.0, per_try=5.0, total=10.0)


class AuthService:
    """Password and refresh grants at the service named ``service``.

    ``verifier`` gives the key set's verifier at call time (None: the
    gateway has none, and every grant answers 503).
    """

    def __init__(
        self,
        watcher: Watcher,
        service: str,
        verifier: Callable[[], Verifier | None],
        *,
        timeouts: Timeouts = _TIMEOUTS,
    ) -> None:
        self.service = service
        self.verifier = verifier
        self.calls = Calls(watcher, timeouts=timeouts)

    async def close(self) -> None:
        await self.calls.close()

    async def _post(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> CallResponse:
        return await self.calls.post(self.service, path, json=body, headers=headers)

    async def _tokens(self, answer: CallResponse) -> Tokens:
        verifier = self.verifier()
        if verifier is None:
            raise ServiceUnavailable(
                "sessions need the auth service's key set: start the gateway with --jwks-url",
                headers={"Retry-After": "30"},
            )
        try:
            doc = answer.json()
            access, refresh = doc["access_token"], doc["refresh_token"]
            if not isinstance(access, str) or not isinstance(refresh, str):
                raise TypeError
        except (ValueError, TypeError, KeyError):
            raise BadGateway("the auth service answered tokens this gateway can't read") from None
        try:
            identity = await verifier.verify_async(access)
        except TokenError as exc:
            raise BadGateway(
                f"the auth service issued a token this gateway can't verify: {exc.detail}"
            ) from None
        return Tokens(access, refresh, identity)

    async def password(self, username: str, password: str, address: str, request_id: str) -> Tokens:
        answer = await self._post(
            "/token",
            {"username": username, "password": password},
            {"X-Forwarded-For": address, "X-Request-ID": request_id},
        )
        if answer.status == 200:
            return await self._tokens(answer)
        detail = _detail(answer)
        if answer.status == 401:
            raise Unauthorized(
                "invalid user name or password", headers={"WWW-Authenticate": cookie_challenge()}
            )
        if answer.status == 429:
            retry = answer.headers.get("Retry-After", "60")
            raise TooManyRequests(
                detail or "too many failed logins", headers={"Retry-After": retry}
            )
        if answer.status in (400, 422):
            raise BadRequest(detail or "the auth service refused the login request")
        raise BadGateway(f"the auth service answered {answer.status} to a login")

    async def refresh(self, refresh_token: str) -> Tokens | None:
        answer = await self._post("/token/refresh", {"refresh_token": refresh_token}, {})
        if answer.status == 200:
            return await self._tokens(answer)
        if answer.status == 400:
            return None  # invalid_grant: spent, revoked or expired
        raise BadGateway(f"the auth service answered {answer.status} to a token refresh")

    async def revoke(self, refresh_token: str) -> None:
        answer = await self._post("/token/revoke", {"refresh_token": refresh_token}, {})
        if answer.status != 200:
            raise BadGateway(f"the auth service answered {answer.status} to a revocation")


def _detail(answer: CallResponse) -> str:
    try:
        doc = answer.json()
    except ValueError:
        return ""
    detail = doc.get("detail") if isinstance(doc, dict) else None
    return detail if isinstance(detail, str) else ""
