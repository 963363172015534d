"""The gateway's session endpoints on the traffic port: log in, see the session, log out.

The stateful model for browsers (Backend for Frontend): the browser never
holds a token, only an ``HttpOnly`` cookie naming a session that the
gateway keeps in Redis (:mod:`core.security.sessions`) with the tokens the
auth service issued; requests with the cookie are sent to services with the
session's access token (:mod:`core.security.relay`).

| method and path | answer |
|---|---|
| ``POST /-/session`` | ``{username, password}`` (JSON or a form): 200 ``{user, sub, roles, expires_at, absolute_expires_at, csrf}`` and the cookies; 401 wrong credentials, 429 throttled (the auth service's answers) |
| ``GET /-/session`` | the current session (the same document); 401 without one |
| ``DELETE /-/session`` | log out (CSRF checks apply): 204, the session deleted in Redis, its refresh token revoked, the cookies cleared |
| ``POST /-/session/logout`` | the same for an HTML form (the CSRF token in the ``X-CSRF-Token`` header or a ``csrf`` form field) |

Cookies: ``essaim_session`` (``HttpOnly; SameSite=Strict; Path=/``) and
``essaim_csrf`` (the CSRF token, readable by the page's scripts; the same
attributes but ``HttpOnly``), both ``Secure`` when the gateway is told it
is served over TLS (``--session-secure``). They are session cookies (no
``Max-Age``): the browser drops them when it closes; the gateway enforces
the idle and absolute timeouts itself.

Login is protected against login CSRF by the origin check of
:func:`core.security.csrf.check_origin`; logout by both CSRF checks.
Bodies over :data:`MAX_BODY` bytes are refused with 413; malformed ones
and missing fields with 400; nothing is stored then.
"""

from __future__ import annotations

import dataclasses
import hmac
from collections.abc import Callable, Sequence
from urllib.parse import parse_qs

import orjson

from core import log
from core.errors import (
    BadRequest,
    Forbidden,
    HTTPProblem,
    MethodNotAllowed,
    PayloadTooLarge,
    ServiceUnavailable,
    Unauthorized,
    UnsupportedMediaType,
)
from core.security.csrf import Origins, check_origin, check_token, header
from core.security.relay import Issuer, SessionGate, cookie_challenge, session_cookie
from core.security.sessions import CSRF_COOKIE, SESSION_COOKIE, Session

logger = log.get("gateway.sessions")

__all__ = ["MAX_BODY", "Answer", "SessionEndpoints"]

#: The largest body a session endpoint reads, in bytes.
MAX_BODY = 16 * 1024
_LOGIN = b"/-/session"
_LOGOUT = b"/-/session/logout"
_PATHS = {"/-/session": "GET, POST, DELETE", "/-/session/logout": "POST"}

Headers = Sequence[tuple[bytes, bytes]]


@dataclasses.dataclass(frozen=True, slots=True)
class Answer:
    """What a session endpoint answers: a status and JSON body, or a problem; header lines."""

    status: int = 200
    body: bytes = b""
    lines: tuple[bytes, ...] = ()
    problem: HTTPProblem | None = None


class SessionEndpoints:
    """``/-/session`` and ``/-/session/logout``; see the module docstring.

    ``gate`` holds the sessions; ``issuer`` is the auth service; ``secure``
    adds ``Secure`` to the cookies. ``timeout`` bounds how long one call may
    take (the auth service and Redis included) before the client gets 504.
    """

    def __init__(
        self,
        gate: SessionGate,
        issuer: Issuer,
        *,
        secure: bool = False,
        timeout: float = 15.0,
        max_body: int = MAX_BODY,
        ready: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.gate = gate
        self.store = gate.store
        self.issuer = issuer
        self.secure = secure
        self.timeout = timeout
        self.max_body = max_body
        # Why sessions can't be created now (no key set to verify tokens), or None.
        self.ready = ready
        self.logins = 0
        self.failed_logins = 0
        self.logouts = 0
        attrs = "; Path=/; SameSite=Strict" + ("; Secure" if secure else "")
        self._attrs = attrs
        self._clear = (
            f"set-cookie: {SESSION_COOKIE}=; Max-Age=0; HttpOnly{attrs}\r\n".encode()
            + f"set-cookie: {CSRF_COOKIE}=; Max-Age=0{attrs}\r\n".encode()
        )

    @property
    def origins(self) -> Origins:
        return self.gate.origins

    # -- called by the data plane ----------------------------------------------------------

    @staticmethod
    def owns(url: bytes) -> bool:
        """Whether the request target is one of these endpoints (with or without a query)."""
        if not url.startswith(_LOGIN):
            return False
        rest = url[len(_LOGIN) :]
        return not rest or rest[:1] == b"?" or rest == b"/logout" or rest.startswith(b"/logout?")

    def refuse_early(self, method: bytes, path: str, headers: Headers) -> HTTPProblem | None:
        """The answer known from the head alone (a wrong method, a body too large), or None."""
        allowed = _PATHS[path]
        if method.decode("latin-1") not in allowed.split(", "):
            return MethodNotAllowed(f"{path} answers {allowed}", headers={"Allow": allowed})
        length = header(headers, b"content-length")
        if length is not None and length.strip().isdigit() and int(length) > self.max_body:
            return PayloadTooLarge(f"the request body is over the limit of {self.max_body} bytes")
        return None

    def failed(self, problem: HTTPProblem) -> Answer:
        return Answer(problem=problem)

    async def handle(
        self,
        method: bytes,
        path: str,
        headers: Headers,
        body: bytes,
        peer: bytes,
        request_id: bytes,
    ) -> Answer:
        """The answer to one request (problems included: never raises an :class:`HTTPProblem`)."""
        try:
            if path == "/-/session/logout":
                return await self._logout(headers, body, form=True)
            if method == b"POST":
                return await self._login(headers, body, peer.decode("latin-1"), request_id)
            if method == b"DELETE":
                return await self._logout(headers, body, form=False)
            return await self._current(headers)
        except HTTPProblem as problem:
            return Answer(problem=problem)

    # -- the endpoints -----------------------------------------------------------------------

    async def _login(
        self, headers: Headers, body: bytes, address: str, request_id: bytes
    ) -> Answer:
        check_origin(headers, self.origins)
        username, password = _credentials(headers, body)
        why = self.ready()
        if why is not None:
            raise ServiceUnavailable(why, headers={"Retry-After": "30"})
        try:
            tokens = await self.issuer.password(
                username, password, address, request_id.decode("latin-1")
            )
        except HTTPProblem as problem:
            if problem.status in (401, 429):
                self.failed_logins += 1
            raise
        try:
            session = await self.store.create(tokens)
        except HTTPProblem:
            # Stored nowhere: the refresh token must not outlive the attempt.
            await self._revoke(tokens.refresh)
            raise
        old = session_cookie(headers)
        if old is not None:
            # A new id on every login (no session fixation); the old session ends.
            await self._end(old)
        self.logins += 1
        logger.info("session opened for user %s", session.user)
        return Answer(200, orjson.dumps(session.describe()), self._set_cookies(session))

    async def _current(self, headers: Headers) -> Answer:
        session_id = session_cookie(headers)
        if session_id is None:
            raise _no_session()
        session = await self.store.load(session_id)
        if session is None:
            return Answer(problem=_no_session(), lines=(self._clear,))
        return Answer(200, orjson.dumps(session.describe()))

    async def _logout(self, headers: Headers, body: bytes, *, form: bool) -> Answer:
        session_id = session_cookie(headers)
        session = None if session_id is None else await self.store.load(session_id, touch=False)
        if session is None:
            # Nothing to end (and nothing an attacker could end): clear the cookies.
            return Answer(204, lines=(self._clear,))
        check_origin(headers, self.origins)
        given = None if not form else _form_field(headers, body, "csrf")
        if given is not None:
            if not hmac.compare_digest(given.encode(), session.csrf.encode()):
                raise Forbidden("the csrf field is not this session's CSRF token")
        else:
            check_token(headers, session.csrf)
        await self._end(session.id)
        self.logouts += 1
        logger.info("session closed for user %s", session.user)
        return Answer(204, lines=(self._clear,))

    # -- helpers -------------------------------------------------------------------------------

    async def _end(self, session_id: str) -> None:
        refresh = await self.store.delete(session_id)
        if refresh is not None:
            await self._revoke(refresh)

    async def _revoke(self, refresh: str) -> None:
        try:
            await self.issuer.revoke(refresh)
        except HTTPProblem as problem:
            # The session is gone from the gateway; the auth service's family
            # ends with its TTL. Said, not hidden.
            logger.warning("revoking a session's refresh token failed: %s", problem)

    def _set_cookies(self, session: Session) -> tuple[bytes, ...]:
        attrs = self._attrs
        return (
            f"set-cookie: {SESSION_COOKIE}={session.id}; HttpOnly{attrs}\r\n".encode(),
            f"set-cookie: {CSRF_COOKIE}={session.csrf}{attrs}\r\n".encode(),
        )


def _no_session() -> Unauthorized:
    return Unauthorized(
        "no session: log in with POST /-/session",
        headers={"WWW-Authenticate": cookie_challenge()},
    )


def _media_type(headers: Headers) -> str:
    value = header(headers, b"content-type") or ""
    return value.split(";", 1)[0].strip().lower()


def _form_field(headers: Headers, body: bytes, name: str) -> str | None:
    if _media_type(headers) != "application/x-www-form-urlencoded" or not body:
        return None
    try:
        values = parse_qs(body.decode("utf-8"), keep_blank_values=True).get(name)
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("the form body is not valid UTF-8 url-encoded data") from None
    return values[-1] if values else None


def _credentials(headers: Headers, body: bytes) -> tuple[str, str]:
    """``(username, password)`` of a login body; :class:`BadRequest` (or 415) when unusable."""
    kind = _media_type(headers)
    if kind in ("", "application/json"):
        try:
            doc = orjson.loads(body) if body.strip() else None
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"malformed JSON: {exc}") from None
        if doc is None:
            raise BadRequest("the request body is empty; {username, password} is expected")
        if not isinstance(doc, dict):
            raise BadRequest("the body must be a JSON object {username, password}")
    elif kind == "application/x-www-form-urlencoded":
        try:
            pairs = parse_qs(
                body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body)
            )
        except (UnicodeDecodeError, ValueError):
            raise BadRequest("the form body is not valid UTF-8 url-encoded data") from None
        doc = {}
        for name, values in pairs.items():
            if len(values) != 1:
                raise BadRequest(f"the form field {name!r} is given {len(values)} times")
            doc[name] = values[0]
    else:
        raise UnsupportedMediaType(
            "log in with application/json or application/x-www-form-urlencoded"
        )
    errors = []
    for name, limit in (("username", 128), ("password", 1024)):
        value = doc.get(name)
        if value is None:
            errors.append({"field": name, "reason": "required"})
        elif not isinstance(value, str):
            errors.append({"field": name, "reason": "expected a string"})
        elif not value.strip() or len(value) > limit:
            errors.append({"field": name, "reason": f"expected 1 to {limit} characters"})
    if errors:
        raise BadRequest(
            "expected {username, password}: "
            + ", ".join(f"{e['field']}: {e['reason']}" for e in errors),
            errors=errors,
        )
    return doc["username"].strip(), doc["password"]
