"""Who may write what in the registry: the operator token and per-service tokens.

Two kinds of bearer token open the registry's writes (register, heartbeat,
change, deregister), as Consul's ACLs grant ``service:write`` on a name:

- the **operator token** (``REGISTRY_TOKEN``) may write every service;
- a **service token**, ``svc.<service>.<mac>``, may write the instances of
  ``<service>`` only. ``<mac>`` is the HMAC-SHA256 of the service name under
  the operator token (base64url, unpadded), so the registry checks one
  without storing anything, every registry process sharing the operator
  token accepts the same tokens, and whoever holds the operator token (the
  launcher, an operator: ``python -m registry token NAME``) issues them.

A token is presented as a bearer (``Authorization: Bearer <token>``) or as
the password of HTTP Basic (Eureka clients: ``http://app:<token>@host/eureka/``).
Reads stay open to all. With no operator token set, writes are open too
(a registry alone on loopback, for development); the registry says so at
start. A refusal is problem details: 401 for a missing, malformed or forged
token, 403 naming what the token may do when it names another service.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from aiohttp import web

from core.errors import Forbidden, Unauthorized
from core.http import presented_secret
from core.registry.model import SERVICE_RE
from core.settings import Secret

__all__ = ["SERVICE_TOKEN_PREFIX", "Credentials", "Grant", "service_token"]

SERVICE_TOKEN_PREFIX = "svc."
#: Domain separation: a MAC made for this purpose is never valid for another.
_CONTEXT = b"essaim registry service token\x00"
_REALM = 'Bearer realm="essaim-registry"'


def _mac(operator: Secret, service: str) -> str:
    digest = hmac.new(
        operator.reveal().encode(), _CONTEXT + service.encode(), hashlib.sha256
    ).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def service_token(operator: Secret, service: str) -> str:
    """The token that may write ``service``'s instances only, under ``operator``.

    ``ValueError`` when ``operator`` is empty or ``service`` is not a valid name.
    """
    if not operator:
        raise ValueError("a service token needs the operator token (REGISTRY_TOKEN)")
    if not SERVICE_RE.match(service):
        raise ValueError(f"invalid service name {service!r}: expected {SERVICE_RE.pattern}")
    return f"{SERVICE_TOKEN_PREFIX}{service}.{_mac(operator, service)}"


class Grant:
    """What one verified token may write: every service (``service`` None) or one."""

    __slots__ = ("service",)

    def __init__(self, service: str | None) -> None:
        self.service = service

    def describe(self) -> str:
        if self.service is None:
            return "the operator token may write every service"
        return (
            f"this token may register, heartbeat, change and deregister instances "
            f"of the service {self.service!r} only"
        )


class Credentials:
    """The registry's write check, built once from the operator token."""

    def __init__(self, operator: Secret) -> None:
        self.operator = operator
        self._operator = operator.reveal().encode()

    @property
    def open(self) -> bool:
        """Whether writes need no token at all (none configured)."""
        return not self.operator

    def verify(self, token: str | None) -> Grant:
        """The grant of a presented token; :class:`Unauthorized` when it grants nothing.

        Every comparison takes the same time whatever the token.
        """
        if not token:
            raise Unauthorized(
                "this request requires 'Authorization: Bearer <token>': the operator's "
                "REGISTRY_TOKEN or the service's own token (svc.<service>.<mac>)",
                headers={"WWW-Authenticate": _REALM},
            )
        if hmac.compare_digest(token.encode(), self._operator):
            return Grant(None)
        if token.startswith(SERVICE_TOKEN_PREFIX):
            service, _, mac = token[len(SERVICE_TOKEN_PREFIX) :].rpartition(".")
            if SERVICE_RE.match(service) and hmac.compare_digest(
                mac.encode(), _mac(self.operator, service).encode()
            ):
                return Grant(service)
        raise Unauthorized(
            "the bearer token is not the registry's operator token nor a service token "
            "issued with it",
            headers={"WWW-Authenticate": f'{_REALM}, error="invalid_token"'},
        )

    def authorize(self, request: web.Request, service: str) -> Grant | None:
        """Allow a write on ``service``'s instances, or raise 401/403 problem details.

        Returns None when writes are open (no operator token).
        """
        if self.open:
            return None
        grant = self.verify(presented_secret(request))
        if grant.service is not None and grant.service != service:
            raise Forbidden(
                f"{grant.describe()}; not {service!r}",
                headers={
                    "WWW-Authenticate": f'{_REALM}, error="insufficient_scope", '
                    f'scope="service:{grant.service}:write"'
                },
                may_write=grant.service,
            )
        return grant
