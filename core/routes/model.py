"""A route of the gateway's static table, and the error that rejects a table.

The model that both the format (:mod:`core.routes.parse`) and the table
(:mod:`core.routes.table`) build on; it imports neither of them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from core.errors import EssaimError
from core.security.access import AuthVia
from core.security.ratelimit import RateLimitPolicy
from core.upstream.retry import RetryPolicy
from core.upstream.upstream import UpstreamPolicy

__all__ = ["RewriteTemplate", "Route", "RouteError", "Timeouts", "UrlTarget"]


class RouteError(EssaimError, ValueError):
    """A route table was rejected; the message names the route id and the field.

    ``route`` is the route's id (or its position, ``routes[3]``, before the id
    is known; None for a table-level error) and ``field`` the offending key.
    """

    def __init__(self, route: str | None, field: str | None, reason: str) -> None:
        where = []
        if route is not None:
            where.append(f"route {route!r}" if not route.startswith("routes[") else route)
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(f"{', '.join(where)}: {reason}" if where else reason)
        self.route = route
        self.field = field
        self.reason = reason


@dataclasses.dataclass(frozen=True, slots=True)
class UrlTarget:
    """One fixed upstream of a route: ``scheme://host:port`` and its weight."""

    url: str
    host: str
    port: int
    scheme: str
    weight: int = 1


@dataclasses.dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds: to connect to an upstream, for one try, for the whole request with retries."""

    connect: float = 1.0
    per_try: float = 10.0
    total: float = 30.0


@dataclasses.dataclass(frozen=True, slots=True)
class RewriteTemplate:
    """A compiled rewrite: literal parts, ``{name}`` parameters and the ``{**}`` tail."""

    parts: tuple[tuple[int, str], ...]  # (0, literal) | (1, param name) | (2, "") for the tail


@dataclasses.dataclass(frozen=True, slots=True)
class Route:
    """One static route: what it matches, where it sends, and how.

    ``methods`` None means any method; ``host`` is lower-case, ``*.`` for a
    suffix; ``headers`` are (lower-case name, exact value) pairs that must all
    be present. Exactly one of ``service`` and ``urls`` is set. Header names in
    the add/remove fields are lower-case. ``auth_via`` says which credential
    the ``auth`` policy accepts: ``token`` (a bearer token), ``session``
    (the gateway's session cookie) or ``either``. ``rate_limit`` None: not limited.
    """

    id: str
    path: str
    methods: frozenset[str] | None
    host: str | None
    headers: tuple[tuple[str, str], ...]
    service: str | None
    urls: tuple[UrlTarget, ...]
    strip_prefix: int = 0
    rewrite: str | None = None
    request_headers_add: tuple[tuple[str, str], ...] = ()
    request_headers_remove: frozenset[str] = frozenset()
    response_headers_add: tuple[tuple[str, str], ...] = ()
    response_headers_remove: frozenset[str] = frozenset()
    timeouts: Timeouts = Timeouts()
    retry: RetryPolicy = dataclasses.field(default_factory=RetryPolicy)
    upstream: UpstreamPolicy = dataclasses.field(default_factory=UpstreamPolicy)
    auth: str = "public"
    auth_via: AuthVia = "token"
    rate_limit: RateLimitPolicy | None = None
    order: int = 0
    _params: tuple[tuple[int, str], ...] = dataclasses.field(default=(), repr=False, compare=False)
    _fixed: int = dataclasses.field(default=0, repr=False, compare=False)
    _template: RewriteTemplate | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def is_prefix(self) -> bool:
        return self.path.endswith("/**")

    @property
    def roles(self) -> frozenset[str]:
        """The roles of a ``roles:a,b`` auth policy (empty for the others)."""
        if not self.auth.startswith("roles:"):
            return frozenset()
        return frozenset(self.auth[6:].split(","))

    def params(self, segments: list[str]) -> dict[str, str]:
        """The path parameters, from the matched path's segments."""
        if not self._params:
            return {}
        return {name: segments[i] for i, name in self._params}

    def upstream_path(self, params: Mapping[str, str], path: str) -> str:
        """The path to send upstream for request ``path`` (without its query).

        ``rewrite`` replaces the path by its template, ``{name}`` by the
        matched parameter and ``{**}`` by what a ``/**`` route matched after
        its prefix (``/a/**`` with ``/x/{**}``: ``/a/b/c`` to ``/x/b/c``);
        ``strip_prefix = n`` removes the first n segments (``/`` if none is
        left); otherwise the path is unchanged.
        """
        template = self._template
        if template is not None:
            out = []
            for kind, value in template.parts:
                if kind == 0:
                    out.append(value)
                elif kind == 1:
                    out.append(params[value])
                else:
                    out.append(_tail(path, self._fixed))
            return "".join(out)
        if self.strip_prefix:
            i = 0
            for _ in range(self.strip_prefix):
                i = path.find("/", i + 1)
                if i < 0:
                    return "/"
            return path[i:]
        return path

    def describe(self) -> dict[str, Any]:
        """The route in the config format, as JSON-able data (the admin ``/routes`` view).

        Keys left at their "absent" value are omitted; policies are complete.
        ``RouteTable.parse({"routes": [route.describe()]})`` gives the route back.
        """
        doc: dict[str, Any] = {"id": self.id, "path": self.path}
        if self.methods is not None:
            doc["methods"] = sorted(self.methods)
        if self.host is not None:
            doc["host"] = self.host
        if self.headers:
            doc["headers"] = dict(self.headers)
        if self.service is not None:
            doc["service"] = self.service
        else:
            doc["urls"] = [{"url": u.url, "weight": u.weight} for u in self.urls]
        if self.strip_prefix:
            doc["strip_prefix"] = self.strip_prefix
        if self.rewrite is not None:
            doc["rewrite"] = self.rewrite
        for name, add, remove in (
            ("request_headers", self.request_headers_add, self.request_headers_remove),
            ("response_headers", self.response_headers_add, self.response_headers_remove),
        ):
            if add or remove:
                doc[name] = {"add": dict(add), "remove": sorted(remove)}
        doc.update(
            timeouts=_plain(self.timeouts),
            retry=self._retry_doc(),
            balancer=self.upstream.balancer,
            breaker=_plain(self.upstream.breaker),
            outlier=_plain(self.upstream.outlier),
            auth=self.auth,
            auth_via=self.auth_via,
        )
        if self.rate_limit is not None:
            doc["rate_limit"] = _plain(self.rate_limit)
        return doc

    def _retry_doc(self) -> dict[str, Any]:
        doc = _plain(self.retry)
        del doc["per_try_timeout"]  # timeouts.per_try
        doc["budget_ratio"] = self.upstream.retry_budget_ratio
        doc["budget_min_per_second"] = self.upstream.retry_budget_min_per_second
        return doc


def _plain(policy: Any) -> dict[str, Any]:
    """A policy dataclass as JSON-able data: sets become sorted lists."""
    return {
        f.name: sorted(value) if isinstance(value, frozenset | set) else value
        for f in dataclasses.fields(policy)
        for value in (getattr(policy, f.name),)
    }


def _tail(path: str, fixed: int) -> str:
    """What follows the first ``fixed`` segments of ``path``, without its leading slash."""
    i = 0
    for _ in range(fixed):
        i = path.find("/", i + 1)
        if i < 0:
            return ""
    return path[i + 1 :]
