"""Who may write what in the registry: the operator token and per-service tokens.

Two kinds of bearer token open the registry's writes (register, heartbeat,
change, deregister), as Consul's ACLs grant ``service:write`` on a name:

- the **operator token** (``REGISTRY_TOKEN``) may write every service;
- a **service token**, ``svc.<service>.<mac>``, may write the instances of
  ``<service>`` only. ``<mac>`` is the HMAC-SHA256 of the service name under
  the operator token (base64url, unpadded), so the registry checks one
  without storing anything, every registry process sharing the operator
  token accepts the same tokens, and whoever holds the operator token (the
  launcher, an operator: ``python -m registry token NAME``) issues them;
- a **status token**, ``ops.status.<mac>``, may change the ``status`` of any
  service's instances and nothing else (not register, heartbeat, change
  metadata or deregister): what a console or an operator's tool needs to
  take an instance out of service and back (``python -m registry token
  --status``). Its MAC is made under another context than the service
  tokens', so neither can be turned into the other.

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

__all__ = [
    "SERVICE_TOKEN_PREFIX",
    "STATUS_TOKEN_PREFIX",
    "Credentials",
    "Grant",
    "service_token",
    "status_token",
]

SERVICE_TOKEN_PREFIX = "svc."
STATUS_TOKEN_PREFIX = "ops.status."
#: Domain separation: a MAC made for this purpose is never valid for another.
_CONTEXT = b"essaim registry service token\x00"
_STATUS_CONTEXT = b"essaim registry status token\x00"
_REALM = 'Bearer realm="essaim-registry"'


def _mac(operator: Secret, service: str, context: bytes = _CONTEXT) -> str:
    digest = hmac.new(
        operator.reveal().encode(), context + service.encode(), hashlib.sha256
    ).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def status_token(operator: Secret) -> str:
    """The token that may change instances' status only, under ``operator``.

    ``ValueError`` when ``operator`` is empty.
    """
    if not operator:
        raise ValueError("a status token needs the operator token (REGISTRY_TOKEN)")
    return STATUS_TOKEN_PREFIX + _mac(operator, "", _STATUS_CONTEXT)


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
    """What one verified token may write: every service (``service`` None) or one.

    ``status_only``: it may change instances' ``status`` and nothing else.
    """

    __slots__ = ("service", "status_only")

    def __init__(self, service: str | None, *, status_only: bool = False) -> None:
        self.service = service
        self.status_only = status_only

    def describe(self) -> str:
        if self.status_only:
            return "this token may change the status of any service's instances, nothing else"
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
        if token.startswith(STATUS_TOKEN_PREFIX) and hmac.compare_digest(
            token.encode(), status_token(self.operator).encode()
        ):
            return Grant(None, status_only=True)
        raise Unauthorized(
            "the bearer token is not the registry's operator token nor a service token "
            "issued with it",
            headers={"WWW-Authenticate": f'{_REALM}, error="invalid_token"'},
        )

    def authorize(
        self, request: web.Request, service: str, *, status_change: bool = False
    ) -> Grant | None:
        """Allow a write on ``service``'s instances, or raise 401/403 problem details.

        ``status_change``: the write may be a change of status alone (a
        PATCH), which a status token may make; the caller checks that it is.
        Returns None when writes are open (no operator token).
        """
        if self.open:
            return None
        grant = self.verify(presented_secret(request))
        if grant.status_only and not status_change:
            raise Forbidden(
                grant.describe(),
                headers={
                    "WWW-Authenticate": f'{_REALM}, error="insufficient_scope", scope="status:write"'
                },
            )
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
