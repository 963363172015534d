"""The matcher behind :class:`core.routes.table.RouteTable`: a trie over path segments.

A request's cost is a walk down the trie, one dictionary lookup per path
segment (plus the backtracking that precedence needs), and a filter over the
few routes that share the path found, never a scan of the route list. So
1,000 routes cost what 1 route costs.

Each node has literal children (a dict keyed by the segment), at most one
``{param}`` child, the routes whose pattern ends at the node (``exact``) and
the routes whose pattern is a prefix ending at the node (``prefix``, written
``/**``). The walk tries, at each segment, the literal child, then the
``{param}`` child, then the node's prefix routes; so a literal beats a
parameter, which beats a prefix, segment by segment, and a longer prefix beats
a shorter one. A route that matches the path but not the method or headers
lets the walk go on to the next candidate in that order. Each node knows how
many more segments the routes below it can take, so the walk does not enter
a subtree that can't match the rest of the path.

Paths are compared as segments of the raw path with one normalisation:
percent-encoded unreserved characters (``A-Z a-z 0-9 - . _ ~``) are decoded
and other escapes upper-cased (RFC 3986, 6.2.2), so ``/%61dmin`` is
``/admin``. A path with a ``.`` or ``..`` segment (also encoded) matches no
route: the upstream might resolve it to a path that a less permissive route
guards.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Generic, Protocol, TypeVar

__all__ = ["HeaderGetter", "Headers", "Matchable", "Trie", "split_path"]

HeaderGetter = Callable[[str], "str | None"]
Headers = HeaderGetter | Mapping[str, str]

_PCT = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_DOTS = frozenset((".", ".."))


def _decode_unreserved(m: re.Match[str]) -> str:
    char = chr(int(m.group(1), 16))
    return char if char in _UNRESERVED else "%" + m.group(1).upper()


def split_path(path: str) -> list[str] | None:
    """The normalised segments of ``path`` (``"/"`` is ``[""]``), or None if it can't match.

    None for a path that doesn't start with ``/`` or has a dot segment.
    """
    if "%" not in path and "/." not in path:
        return path[1:].split("/") if path[:1] == "/" else None
    if not path.startswith("/"):
        return None
    if "%" in path:
        path = _PCT.sub(_decode_unreserved, path)
    segments = path[1:].split("/")
    if "/." in path and not _DOTS.isdisjoint(segments):
        return None
    return segments


class Matchable(Protocol):
    """What the trie needs of a route: method and header constraints."""

    @property
    def methods(self) -> frozenset[str] | None: ...

    @property
    def headers(self) -> tuple[tuple[str, str], ...]: ...


R = TypeVar("R", bound=Matchable)


class _Node(Generic[R]):
    """``lo`` and ``hi``: how many more segments the routes at and below this node take."""

    __slots__ = ("exact", "hi", "literal", "lo", "param", "prefix")

    def __init__(self) -> None:
        self.literal: dict[str, _Node[R]] = {}
        self.param: _Node[R] | None = None
        self.exact: list[R] = []
        self.prefix: list[R] = []
        self.lo = _UNBOUNDED
        self.hi = -1


_UNBOUNDED = 1 << 30


def _reach(node: _Node[R], rest: int, prefix: bool) -> None:
    """Widen ``node``'s bounds for a route taking ``rest`` more segments (or more, for a prefix)."""
    node.lo = min(node.lo, rest)
    node.hi = max(node.hi, _UNBOUNDED if prefix else rest)


def _pick(candidates: list[R], method: str, headers: Headers) -> R | None:
    for route in candidates:
        methods = route.methods
        if methods is not None and method not in methods:
            continue
        if route.headers:
            get = headers if callable(headers) else headers.get
            if any(get(name) != value for name, value in route.headers):
                continue
        return route
    return None


def _find(node: _Node[R], segments: list[str], i: int, method: str, headers: Headers) -> R | None:
    if i == len(segments):
        if node.exact:
            hit = _pick(node.exact, method, headers)
            if hit is not None:
                return hit
    else:
        segment = segments[i]
        rest = len(segments) - i - 1
        child = node.literal.get(segment)
        if child is not None and child.lo <= rest <= child.hi:
            hit = _find(child, segments, i + 1, method, headers)
            if hit is not None:
                return hit
        child = node.param
        if child is not None and segment and child.lo <= rest <= child.hi:
            hit = _find(child, segments, i + 1, method, headers)
            if hit is not None:
                return hit
    if node.prefix:
        return _pick(node.prefix, method, headers)
    return None


class Trie(Generic[R]):
    """Routes indexed by path pattern; :meth:`find` returns the first by precedence.

    A pattern is a sequence of segments, each a literal string or None for a
    ``{param}``, and a flag for a trailing ``/**``. Candidates sharing one
    pattern are tried in the order given by :meth:`add`'s callers' sort: the
    table adds them most specific first.
    """

    def __init__(self) -> None:
        self.root: _Node[R] = _Node()

    def add(self, pattern: Sequence[str | None], prefix: bool, route: R) -> None:
        node = self.root
        for depth, segment in enumerate(pattern):
            _reach(node, len(pattern) - depth, prefix)
            if segment is None:
                if node.param is None:
                    node.param = _Node()
                node = node.param
            else:
                child = node.literal.get(segment)
                if child is None:
                    child = node.literal[segment] = _Node()
                node = child
        _reach(node, 0, prefix)
        (node.prefix if prefix else node.exact).append(route)

    def sort(self, key: Callable[[R], tuple[int, ...]]) -> None:
        """Order every node's candidates by ``key`` (most specific first)."""
        stack = [self.root]
        while stack:
            node = stack.pop()
            node.exact.sort(key=key)
            node.prefix.sort(key=key)
            stack.extend(node.literal.values())
            if node.param is not None:
                stack.append(node.param)

    def find(self, segments: list[str], method: str, headers: Headers) -> R | None:
        """The first route, by precedence, matching ``segments``, ``method`` and ``headers``."""
        return _find(self.root, segments, 0, method, headers)
