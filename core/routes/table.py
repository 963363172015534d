"""The gateway's static route table: parsing, validation and matching.

A table is parsed from the ``routes`` section of the gateway's config document
(or a TOML file of the same structure, see ``docs/routes.md``) and is
immutable: a new document makes a new table, swapped in whole by the gateway.
:meth:`RouteTable.parse` rejects the whole table on the first error, with a
:class:`RouteError` naming the route and the field, so a bad document never
replaces a good one.

:meth:`RouteTable.match` runs on every proxied request. Its cost does not grow
with the number of routes: host-specific routes sit in their own tries, looked
up by host name, and each trie is walked segment by segment
(:mod:`core.routes.trie`). Precedence, most specific first:

1. host: routes for the exact host, then for the longest matching
   ``*.suffix``, then routes without a host;
2. path, segment by segment: literal, then ``{param}``, then ``/**`` prefix
   (so a longer prefix wins);
3. among routes with the same path: more header conditions first, then
   routes that list methods before those that take any;
4. declaration order (two routes that could only be told apart by it are
   rejected as ambiguous).
"""

from __future__ import annotations

import dataclasses
import hashlib
import tomllib
from collections.abc import Iterable, Mapping
from os import PathLike
from typing import Any

from core.errors import EssaimError
from core.routes.trie import Headers, Trie, split_path
from core.security.ratelimit import RateLimitPolicy
from core.upstream.retry import RetryPolicy
from core.upstream.upstream import UpstreamPolicy

__all__ = [
    "RewriteTemplate",
    "Route",
    "RouteError",
    "RouteTable",
    "Timeouts",
    "UrlTarget",
]


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
    the add/remove fields are lower-case. ``rate_limit`` None: not limited.
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


def _specificity(route: Route) -> tuple[int, ...]:
    return (-len(route.headers), 0 if route.methods is not None else 1, route.order)


def _host_of(host: str) -> str:
    """A Host header's name: lower-case, without port or trailing dot."""
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1].lower() if end > 0 else host.lower()
    name = host.partition(":")[0] if host.count(":") == 1 else host
    return name.rstrip(".").lower()


HOST_CACHE_SIZE = 1024


class RouteTable:
    """An immutable, validated set of routes and its matcher.

    ``version`` identifies the document it came from (the config version, or
    a hash of a file's content).
    """

    def __init__(self, routes: Iterable[Route], version: str | None = None) -> None:
        self.version = version
        self.routes: tuple[Route, ...] = tuple(routes)
        self._any: Trie[Route] = Trie()
        self._hosts: dict[str, Trie[Route]] = {}
        self._suffixes: dict[str, Trie[Route]] = {}
        for route in self.routes:
            if route.host is None:
                trie = self._any
            elif route.host.startswith("*."):
                trie = self._suffixes.setdefault(route.host[2:], Trie())
            else:
                trie = self._hosts.setdefault(route.host, Trie())
            pattern, prefix = _pattern(route.path)
            trie.add(pattern, prefix, route)
        for trie in (self._any, *self._hosts.values(), *self._suffixes.values()):
            trie.sort(_specificity)
        self._by_host = bool(self._hosts or self._suffixes)
        self._host_tries: dict[str, tuple[Trie[Route], ...]] = {}

    def __len__(self) -> int:
        return len(self.routes)

    def __repr__(self) -> str:
        return f"RouteTable(version={self.version!r}, routes={len(self.routes)})"

    @classmethod
    def parse(cls, doc: Mapping[str, Any], version: str | None = None) -> RouteTable:
        """Validate ``{"routes": [...], "defaults": {...}}`` into a table.

        Raises :class:`RouteError` on the first problem: an unknown key, a
        missing or malformed value, a duplicate id, or two routes that only
        declaration order could tell apart.
        """
        # route_config builds Route objects, so it imports this module.
        from core.routes.parse import parse_table

        return cls(parse_table(doc), version)

    @staticmethod
    def load_file(path: str | PathLike[str]) -> RouteTable:
        """Parse a TOML route file; the version is ``sha256:`` and 12 hex digits of its content.

        An unreadable file or invalid TOML is a :class:`RouteError` too.
        """
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except OSError as exc:
            raise RouteError(None, None, f"cannot read route file {path}: {exc.strerror}") from None
        try:
            doc = tomllib.loads(raw.decode())
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise RouteError(None, None, f"{path}: not valid TOML: {exc}") from None
        return RouteTable.parse(doc, "sha256:" + hashlib.sha256(raw).hexdigest()[:12])

    def match(
        self,
        method: str,
        host: str | None,
        path: str,
        headers: Headers,
    ) -> tuple[Route, dict[str, str]] | None:
        """The route for a request and its path parameters, or None.

        ``path`` is the request path without the query; ``host`` the Host
        header (a port and a trailing dot are ignored); ``headers`` a
        function or a mapping answering lower-case header names (aiohttp's
        case-insensitive headers do). The parameters are the path's segments
        with percent-encoded unreserved characters decoded and other escapes
        kept (RFC 3986 normalisation), so they can go upstream as they are.
        """
        segments = split_path(path)
        if segments is None:
            return None
        if host is not None and self._by_host:
            tries = self._host_tries.get(host)
            if tries is None:
                tries = self._tries_for(host)
            for trie in tries:
                hit = trie.find(segments, method, headers)
                if hit is not None:
                    return hit, hit.params(segments)
        hit = self._any.find(segments, method, headers)
        if hit is None:
            return None
        return hit, hit.params(segments)

    def _tries_for(self, host: str) -> tuple[Trie[Route], ...]:
        """The host tries to try for a Host header, most specific first; cached per header value."""
        name = _host_of(host)
        tries = []
        if name in self._hosts:
            tries.append(self._hosts[name])
        dot = name.find(".")
        while dot >= 0:
            trie = self._suffixes.get(name[dot + 1 :])
            if trie is not None:
                tries.append(trie)
            dot = name.find(".", dot + 1)
        found = tuple(tries)
        if len(self._host_tries) >= HOST_CACHE_SIZE:
            # Many distinct Host values (a scan, or an attack): start over
            # rather than grow without bound.
            self._host_tries.clear()
        self._host_tries[host] = found
        return found

    def describe(self) -> dict[str, Any]:
        """The table as plain JSON-able data, routes in declaration order."""
        return {"version": self.version, "routes": [r.describe() for r in self.routes]}


def _pattern(path: str) -> tuple[list[str | None], bool]:
    """The trie pattern of a validated path: literal segments, None for parameters."""
    prefix = path.endswith("/**")
    body = path[:-3] if prefix else path
    if prefix and body == "":
        return [], True
    segments = body[1:].split("/")
    return [None if s.startswith("{") else s for s in segments], prefix
