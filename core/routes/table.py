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

import hashlib
import tomllib
from collections.abc import Iterable, Mapping
from os import PathLike
from typing import Any

from core.routes.model import RewriteTemplate, Route, RouteError, Timeouts, UrlTarget
from core.routes.parse import parse_table
from core.routes.trie import Headers, Trie, split_path

__all__ = [
    "RewriteTemplate",
    "Route",
    "RouteError",
    "RouteTable",
    "Timeouts",
    "UrlTarget",
]


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
