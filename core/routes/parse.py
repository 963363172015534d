"""The route table's config format: from a parsed TOML/JSON document to :class:`Route` objects.

Every value is checked here, before any route exists, and the first problem
raises :class:`core.routes.table.RouteError` naming the route and the field. The
format is documented in ``docs/routes.md``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import re
import typing
from collections.abc import Mapping
from typing import Any, TypeVar
from urllib.parse import urlsplit

from core.registry.store import HOSTNAME_RE, SERVICE_RE
from core.routes.model import (
    RewriteTemplate,
    Route,
    RouteError,
    Timeouts,
    UrlTarget,
)
from core.security.access import AUTH_VIA
from core.security.ratelimit import RateLimitPolicy
from core.upstream.balancer import BALANCERS
from core.upstream.breaker import BreakerPolicy
from core.upstream.outlier import OutlierPolicy
from core.upstream.retry import RetryPolicy
from core.upstream.upstream import MAX_WEIGHT, UpstreamPolicy

__all__ = ["RESERVED_HEADERS", "RETRY_BUDGET_KEYS", "build_policy", "parse_table"]
# Headers a route may neither add nor remove: they belong to the connection
# (RFC 9110 7.6.1) or to the framing and addressing, which the proxy owns.
RESERVED_HEADERS = frozenset(
    (
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
        "trailer", "transfer-encoding", "upgrade", "content-length", "host",
    )
)  # fmt: skip
ROUTE_KEYS = frozenset(
    (
        "id", "path", "prefix", "methods", "host", "headers", "service", "urls",
        "strip_prefix", "rewrite", "request_headers", "response_headers", "timeouts",
        "retry", "balancer", "breaker", "outlier", "auth", "auth_via", "rate_limit",
    )
)  # fmt: skip
DEFAULT_KEYS = frozenset(
    ("timeouts", "retry", "balancer", "breaker", "outlier", "auth", "auth_via")
)

TABLE_KEYS = frozenset(("routes", "defaults"))
MAX_SEGMENTS = 32
# Keys of the retry section that configure the upstream's retry budget.
RETRY_BUDGET_KEYS = {
    "budget_ratio": "retry_budget_ratio",
    "budget_min_per_second": "retry_budget_min_per_second",
}

ROUTE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
PARAM_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}\Z")
TOKEN_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
METHOD_RE = re.compile(r"^[A-Z]{1,20}\Z")
ROLE_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}\Z")

T = TypeVar("T")

_PCT = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_LITERAL_RE = re.compile(r"^[A-Za-z0-9\-._~!$&'()+,;=:@%]*\Z")
_TEMPLATE_RE = re.compile(r"\{([^{}]*)\}")
_TEMPLATE_LITERAL_RE = re.compile(r"^[A-Za-z0-9\-._~!$&'()*+,;=:@%/]*\Z")
_HEADER_VALUE_RE = re.compile(r"^[^\x00-\x08\x0a-\x1f\x7f]*\Z")
_TIMEOUT_KEYS = ("connect", "per_try", "total")
_HEADER_SECTION_KEYS = frozenset(("add", "remove"))
_POLICY_TABLES = ("timeouts", "retry", "breaker", "outlier")


class _Fields:
    """Where the current value comes from, to name it in errors."""

    def __init__(self, route: str | None) -> None:
        self.route = route

    def error(self, field: str | None, reason: str) -> RouteError:
        return RouteError(self.route, field, reason)

    def typed(self, value: Any, tp: type[T], field: str, what: str) -> T:
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise self.error(field, f"expected {what}, got {_show(value)}")
        return value

    def table(
        self, value: Any, field: str, keys: frozenset[str] | None = None
    ) -> Mapping[str, Any]:
        table = self.typed(value, Mapping, field, "a table")  # type: ignore[type-abstract]
        if keys is not None:
            for key in table:
                if key not in keys:
                    raise self.error(
                        f"{field}.{key}", f"unknown key; expected one of {', '.join(sorted(keys))}"
                    )
        return table

    def strings(self, value: Any, field: str) -> list[str]:
        items = self.typed(value, list, field, "a list of strings")
        for item in items:
            self.typed(item, str, field, "a list of strings")
        return items


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _normalise(segment: str) -> str:
    return _PCT.sub(
        lambda m: (
            chr(int(m.group(1), 16))
            if chr(int(m.group(1), 16)) in _UNRESERVED
            else "%" + m.group(1).upper()
        ),
        segment,
    )


# ----------------------------------------------------------------------------- the table


def parse_table(doc: Any) -> list[Route]:
    """The routes of ``{"routes": [...], "defaults": {...}}``, validated, in order."""
    top = _Fields(None)
    table = top.table(doc, "routes", TABLE_KEYS) if isinstance(doc, Mapping) else None
    if table is None:
        raise top.error(None, f"expected a table with a 'routes' list, got {_show(doc)}")
    defaults = _defaults(table.get("defaults", {}))
    raw_routes = top.typed(table.get("routes", []), list, "routes", "a list of route tables")
    routes: list[Route] = []
    ids: set[str] = set()
    for order, raw in enumerate(raw_routes):
        route = _route(raw, order, defaults)
        if route.id in ids:
            raise RouteError(route.id, "id", "duplicate route id")
        ids.add(route.id)
        routes.append(route)
    _check_ambiguous(routes)
    return routes


def _defaults(raw: Any) -> dict[str, Any]:
    where = _Fields(None)
    defaults = dict(where.table(raw, "defaults", DEFAULT_KEYS))
    # Validate the defaults on their own, so that an error in them says so.
    for key in _POLICY_TABLES:
        if key in defaults:
            where.table(defaults[key], f"defaults.{key}")
    probe = {"id": "defaults", "path": "/", "urls": ["http://127.0.0.1:1"]}
    try:
        _route(probe, 0, defaults)
    except RouteError as exc:
        raise RouteError(None, f"defaults.{exc.field}", exc.reason) from None
    return defaults


def _check_ambiguous(routes: list[Route]) -> None:
    groups: dict[tuple[Any, ...], list[Route]] = {}
    for route in routes:
        shape = re.sub(r"\{[^}]*\}", "{}", route.path)
        groups.setdefault((route.host, shape, route.headers), []).append(route)
    for group in groups.values():
        for i, later in enumerate(group):
            for earlier in group[:i]:
                if earlier.methods is None and later.methods is None:
                    overlap = "any method"
                elif earlier.methods is not None and later.methods is not None:
                    common = earlier.methods & later.methods
                    if not common:
                        continue
                    overlap = ", ".join(sorted(common))
                else:
                    continue
                raise RouteError(
                    later.id,
                    "path",
                    f"ambiguous with route {earlier.id!r}: same path, host and headers, "
                    f"both for {overlap}; give one a distinct condition",
                )


# ----------------------------------------------------------------------------- one route


def _route(raw: Any, order: int, defaults: Mapping[str, Any]) -> Route:
    f = _Fields(f"routes[{order}]")
    if not isinstance(raw, Mapping):
        raise f.error(None, f"expected a route table, got {_show(raw)}")
    spec: Mapping[str, Any] = raw
    if "id" not in spec:
        raise f.error("id", "required")
    route_id = f.typed(spec["id"], str, "id", "a string")
    if not ROUTE_ID_RE.match(route_id):
        raise f.error("id", f"expected ^[A-Za-z0-9][A-Za-z0-9._-]{{0,127}}$, got {_show(route_id)}")
    f.route = route_id
    for key in spec:
        if key not in ROUTE_KEYS:
            raise f.error(key, f"unknown key; expected one of {', '.join(sorted(ROUTE_KEYS))}")

    path, params, fixed = _path(f, spec)
    service, urls = _target(f, spec)
    strip_prefix, template = _rewrite(f, spec, params, fixed, path.endswith("/**"))
    req_add, req_remove = _header_edits(f, spec.get("request_headers"), "request_headers")
    resp_add, resp_remove = _header_edits(f, spec.get("response_headers"), "response_headers")

    merged: dict[str, Any] = {}
    for key in _POLICY_TABLES:
        merged[key] = {
            **f.table(defaults.get(key, {}), key),
            **f.table(spec.get(key, {}), key),
        }
    balancer = f.typed(
        spec.get("balancer", defaults.get("balancer", "round_robin")), str, "balancer", "a string"
    )
    if balancer not in BALANCERS:
        raise f.error("balancer", f"expected one of {', '.join(BALANCERS)}, got {_show(balancer)}")
    auth = _auth(f, spec.get("auth", defaults.get("auth", "public")))
    auth_via = f.typed(
        spec.get("auth_via", defaults.get("auth_via", "token")), str, "auth_via", "a string"
    )
    if auth_via not in AUTH_VIA:
        raise f.error("auth_via", f"expected one of {', '.join(AUTH_VIA)}, got {_show(auth_via)}")
    rate_limit = None
    if "rate_limit" in spec:
        raw_limit = f.table(spec["rate_limit"], "rate_limit")
        rate_limit = _policy(f, RateLimitPolicy, raw_limit, "rate_limit")
    timeouts = _timeouts(f, merged["timeouts"])
    retry_doc = dict(merged["retry"])
    if "per_try_timeout" in retry_doc:
        raise f.error("retry.per_try_timeout", "set timeouts.per_try instead")
    budget = {k: retry_doc.pop(k) for k in RETRY_BUDGET_KEYS if k in retry_doc}
    retry_doc["per_try_timeout"] = timeouts.per_try
    retry = _policy(f, RetryPolicy, retry_doc, "retry")

    return Route(
        id=route_id,
        path=path,
        methods=_methods(f, spec.get("methods")),
        host=_host(f, spec.get("host")),
        headers=_header_match(f, spec.get("headers")),
        service=service,
        urls=urls,
        strip_prefix=strip_prefix,
        rewrite=spec.get("rewrite"),
        request_headers_add=req_add,
        request_headers_remove=req_remove,
        response_headers_add=resp_add,
        response_headers_remove=resp_remove,
        timeouts=timeouts,
        retry=retry,
        upstream=_upstream(f, balancer, retry, budget, merged),
        auth=auth,
        auth_via=auth_via,
        rate_limit=rate_limit,
        order=order,
        _params=tuple(params),
        _fixed=fixed,
        _template=template,
    )


def _path(f: _Fields, spec: Mapping[str, Any]) -> tuple[str, list[tuple[int, str]], int]:
    """The normalised path pattern, its parameters ``(segment index, name)`` and fixed segments."""
    if ("path" in spec) == ("prefix" in spec):
        raise f.error("path", "exactly one of 'path' and 'prefix' is required")
    field = "path" if "path" in spec else "prefix"
    text = f.typed(spec[field], str, field, "a string starting with '/'")
    if not text.startswith("/") or len(text) > 2048:
        raise f.error(field, f"expected a path starting with '/', got {_show(text)}")
    if text == "/-" or text.startswith("/-/"):
        raise f.error(
            field,
            "paths under '/-/' are the gateway's own (its health path); routes can't use them",
        )
    if field == "prefix":
        if "{" in text or "*" in text:
            raise f.error("prefix", "a prefix is literal; use 'path' for '{param}' or '**'")
        text = text.rstrip("/") + "/**"
    prefix = text.endswith("/**")
    body = text[:-3] if prefix else text
    segments = body[1:].split("/") if body else []
    if len(segments) > MAX_SEGMENTS:
        raise f.error(field, f"more than {MAX_SEGMENTS} segments")
    params: list[tuple[int, str]] = []
    out: list[str] = []
    for i, segment in enumerate(segments):
        if segment.startswith("{") and segment.endswith("}"):
            name = segment[1:-1]
            if not PARAM_RE.match(name):
                raise f.error(
                    field,
                    f"parameter {segment!r}: expected {{name}}, name ^[A-Za-z_][A-Za-z0-9_]*$",
                )
            if any(name == n for _, n in params):
                raise f.error(field, f"parameter {segment!r} appears twice")
            params.append((i, name))
            out.append(segment)
            continue
        if "*" in segment:
            raise f.error(field, "'**' is only allowed as the last segment, as '/**'")
        if "{" in segment or "}" in segment:
            raise f.error(field, f"segment {segment!r}: a parameter must be a whole segment")
        if not _LITERAL_RE.match(segment):
            raise f.error(field, f"segment {segment!r}: characters not allowed in a path")
        if segment == "" and i != len(segments) - 1:
            raise f.error(field, "empty segment ('//')")
        literal = _normalise(segment)
        if literal in (".", ".."):
            raise f.error(field, "'.' and '..' segments are not allowed")
        out.append(literal)
    path = ("/" + "/".join(out) if segments else "") + ("/**" if prefix else "")
    return path, params, len(segments)


def _target(f: _Fields, spec: Mapping[str, Any]) -> tuple[str | None, tuple[UrlTarget, ...]]:
    if ("service" in spec) == ("urls" in spec):
        raise f.error("service", "exactly one of 'service' and 'urls' is required")
    if "service" in spec:
        service = f.typed(spec["service"], str, "service", "a service name")
        if not SERVICE_RE.match(service):
            raise f.error("service", f"expected ^[a-z0-9][a-z0-9-]{{0,62}}$, got {_show(service)}")
        return service, ()
    raw = f.typed(spec["urls"], list, "urls", "a list of URLs")
    if not raw:
        raise f.error("urls", "expected at least one URL")
    targets: list[UrlTarget] = []
    for item in raw:
        if isinstance(item, Mapping):
            entry = f.table(item, "urls", frozenset(("url", "weight")))
            if "url" not in entry:
                raise f.error("urls", f"entry {_show(dict(entry))} has no 'url'")
            url = f.typed(entry["url"], str, "urls", "a URL string")
            weight = f.typed(entry.get("weight", 1), int, "urls", "an integer weight")
            if not 1 <= weight <= MAX_WEIGHT:
                raise f.error("urls", f"weight of {url}: expected 1-{MAX_WEIGHT}, got {weight}")
        else:
            url = f.typed(item, str, "urls", "a URL string or a table {url, weight}")
            weight = 1
        target = _url(f, url, weight)
        if any(t.url == target.url for t in targets):
            raise f.error("urls", f"{target.url} appears twice")
        targets.append(target)
    return None, tuple(targets)


def _url(f: _Fields, url: str, weight: int) -> UrlTarget:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise f.error("urls", f"{_show(url)}: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise f.error("urls", f"{_show(url)}: expected an http:// or https:// URL")
    host = parts.hostname or ""
    if not host or parts.username is not None or parts.password is not None:
        raise f.error("urls", f"{_show(url)}: expected scheme://host[:port] without user info")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise f.error("urls", f"{_show(url)}: a target URL has no path, query or fragment")
    try:
        ipaddress.ip_address(host)
        is_ip = True
    except ValueError:
        is_ip = False
    if not is_ip and not HOSTNAME_RE.match(host):
        raise f.error("urls", f"{_show(url)}: invalid host name")
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    if port == 0:
        raise f.error("urls", f"{_show(url)}: port 0")
    shown = f"[{host}]" if ":" in host else host
    return UrlTarget(f"{parts.scheme}://{shown}:{port}", host, port, parts.scheme, weight)


def _rewrite(
    f: _Fields, spec: Mapping[str, Any], params: list[tuple[int, str]], fixed: int, prefix: bool
) -> tuple[int, RewriteTemplate | None]:
    if "strip_prefix" in spec and "rewrite" in spec:
        raise f.error("rewrite", "'strip_prefix' and 'rewrite' exclude each other")
    if "strip_prefix" in spec:
        strip = f.typed(spec["strip_prefix"], int, "strip_prefix", "an integer")
        if not 0 <= strip <= fixed:
            raise f.error(
                "strip_prefix", f"expected 0-{fixed} (the segments before any '**'), got {strip}"
            )
        return strip, None
    if "rewrite" not in spec:
        return 0, None
    text = f.typed(spec["rewrite"], str, "rewrite", "a path template")
    if not text.startswith("/"):
        raise f.error("rewrite", f"expected a template starting with '/', got {_show(text)}")
    names = {name for _, name in params}
    parts: list[tuple[int, str]] = []
    pos = 0
    for m in _TEMPLATE_RE.finditer(text):
        parts.append((0, text[pos : m.start()]))
        name = m.group(1)
        if name == "**":
            if not prefix:
                raise f.error("rewrite", "'{**}' needs a path ending in '/**'")
            parts.append((2, ""))
        elif name in names:
            parts.append((1, name))
        else:
            known = ", ".join(sorted(names)) or "none"
            raise f.error(
                "rewrite", f"'{{{name}}}' is not a parameter of the path (it has: {known})"
            )
        pos = m.end()
    parts.append((0, text[pos:]))
    for kind, literal in parts:
        if kind == 0 and not _TEMPLATE_LITERAL_RE.match(literal):
            raise f.error("rewrite", f"{_show(literal)}: characters not allowed in a path")
    return 0, RewriteTemplate(tuple(p for p in parts if p != (0, "")))


def _methods(f: _Fields, raw: Any) -> frozenset[str] | None:
    if raw is None:
        return None
    methods = f.strings(raw, "methods")
    if not methods:
        raise f.error("methods", "expected at least one method (omit the key for any method)")
    upper = frozenset(m.upper() for m in methods)
    for method in upper:
        if not METHOD_RE.match(method):
            raise f.error("methods", f"{_show(method)} is not an HTTP method")
    return upper


def _host(f: _Fields, raw: Any) -> str | None:
    if raw is None:
        return None
    host = f.typed(raw, str, "host", "a host name").lower().rstrip(".")
    name = host[2:] if host.startswith("*.") else host
    try:
        ipaddress.ip_address(name.strip("[]"))
        if host.startswith("*."):
            raise ValueError
        return host
    except ValueError:
        pass
    if not HOSTNAME_RE.match(name) or "*" in name or ":" in name:
        raise f.error("host", f"expected a host name or '*.suffix' without port, got {_show(raw)}")
    return host


def _header_name(f: _Fields, raw: Any, field: str) -> str:
    name = f.typed(raw, str, field, "a header name")
    if not TOKEN_RE.match(name):
        raise f.error(field, f"{_show(name)} is not a valid header name")
    return name.lower()


def _header_value(f: _Fields, raw: Any, field: str) -> str:
    value = f.typed(raw, str, field, "a header value string")
    if not _HEADER_VALUE_RE.match(value) or len(value) > 8192:
        raise f.error(field, f"{_show(value)}: control characters or too long")
    return value


def _header_match(f: _Fields, raw: Any) -> tuple[tuple[str, str], ...]:
    if raw is None:
        return ()
    pairs: dict[str, str] = {}
    for name, value in f.table(raw, "headers").items():
        lower = _header_name(f, name, "headers")
        if lower in pairs:
            raise f.error("headers", f"{name!r} appears twice")
        pairs[lower] = _header_value(f, value, "headers")
    return tuple(sorted(pairs.items()))


def _header_edits(
    f: _Fields, raw: Any, field: str
) -> tuple[tuple[tuple[str, str], ...], frozenset[str]]:
    if raw is None:
        return (), frozenset()
    section = f.table(raw, field, _HEADER_SECTION_KEYS)
    added: dict[str, str] = {}
    for name, value in f.table(section.get("add", {}), f"{field}.add").items():
        lower = _header_name(f, name, f"{field}.add")
        if lower in RESERVED_HEADERS:
            raise f.error(f"{field}.add", f"{name!r} is managed by the proxy")
        if lower in added:
            raise f.error(f"{field}.add", f"{name!r} appears twice")
        added[lower] = _header_value(f, value, f"{field}.add")
    removed: set[str] = set()
    for name in f.strings(section.get("remove", []), f"{field}.remove"):
        lower = _header_name(f, name, f"{field}.remove")
        if lower in RESERVED_HEADERS:
            raise f.error(f"{field}.remove", f"{name!r} is managed by the proxy")
        removed.add(lower)
    return tuple(added.items()), frozenset(removed)


def _timeouts(f: _Fields, raw: Mapping[str, Any]) -> Timeouts:
    values: dict[str, float] = {}
    for key, value in raw.items():
        if key not in _TIMEOUT_KEYS:
            raise f.error(
                f"timeouts.{key}", f"unknown key; expected one of {', '.join(_TIMEOUT_KEYS)}"
            )
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok or not math.isfinite(value) or value <= 0:
            raise f.error(
                f"timeouts.{key}", f"expected a number of seconds > 0, got {_show(value)}"
            )
        values[key] = float(value)
    timeouts = Timeouts(**values)
    if timeouts.per_try > timeouts.total:
        raise f.error("timeouts.per_try", f"{timeouts.per_try} is over total {timeouts.total}")
    if timeouts.connect > timeouts.per_try:
        raise f.error("timeouts.connect", f"{timeouts.connect} is over per_try {timeouts.per_try}")
    return timeouts


_FIELDS: dict[type[Any], dict[str, Any]] = {}


def _fields_of(cls: type[Any]) -> dict[str, Any]:
    """A dataclass's fields and their types (evaluating annotations is slow: once per class)."""
    fields = _FIELDS.get(cls)
    if fields is None:
        hints = typing.get_type_hints(cls)
        fields = _FIELDS[cls] = {f.name: hints[f.name] for f in dataclasses.fields(cls)}
    return fields


def build_policy(cls: type[T], doc: Mapping[str, Any]) -> T:
    """``cls(**doc)`` for a frozen dataclass of plain fields, checking each value's type.

    Fields may be ``bool``, ``int``, ``float``, ``str``, ``X | None`` and
    ``frozenset[X]`` (given as a list). Raises ``ValueError`` naming the key;
    the dataclass's own checks (``__post_init__``) raise theirs.
    """
    hints = _fields_of(cls)
    names = hints.keys()
    values: dict[str, Any] = {}
    for key, value in doc.items():
        if key not in names:
            raise ValueError(f"unknown key {key!r}; expected one of {', '.join(sorted(names))}")
        values[key] = _convert(hints[key], value, key)
    return cls(**values)


def _convert(tp: Any, value: Any, key: str) -> Any:
    args = typing.get_args(tp)
    if type(None) in args:
        inner = [a for a in args if a is not type(None)]
        return None if value is None else _convert(inner[0], value, key)
    if typing.get_origin(tp) is frozenset:
        if not isinstance(value, list):
            raise ValueError(f"{key}: expected a list, got {_show(value)}")
        return frozenset(_convert(args[0], item, key) for item in value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    ok = isinstance(value, tp) and (tp is bool or not isinstance(value, bool))
    if not ok or (tp is float and not math.isfinite(value)):
        raise ValueError(f"{key}: expected {_KIND.get(tp, tp.__name__)}, got {_show(value)}")
    return value


_KIND: dict[Any, str] = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a string",
}


def _policy(f: _Fields, cls: type[T], raw: Mapping[str, Any], field: str) -> T:
    try:
        return build_policy(cls, raw)
    except (TypeError, ValueError) as exc:
        reason = str(exc)
        # The policies' own checks start their messages with the section's name.
        raise f.error(field, reason.removeprefix(f"{field}: ")) from None


def _upstream(
    f: _Fields,
    balancer: str,
    retry: RetryPolicy,
    budget: Mapping[str, Any],
    merged: Mapping[str, Mapping[str, Any]],
) -> UpstreamPolicy:
    """The upstream policy; ``budget`` holds the retry section's ``budget_*`` keys."""
    try:
        limits = {RETRY_BUDGET_KEYS[k]: _convert(float, v, k) for k, v in budget.items()}
        return UpstreamPolicy(
            balancer=balancer,
            breaker=_policy(f, BreakerPolicy, merged["breaker"], "breaker"),
            outlier=_policy(f, OutlierPolicy, merged["outlier"], "outlier"),
            retry=retry,
            **limits,
        )
    except ValueError as exc:
        if isinstance(exc, RouteError):
            raise
        raise f.error("retry", str(exc).removeprefix("upstream: ")) from None


def _auth(f: _Fields, raw: Any) -> str:
    auth = f.typed(raw, str, "auth", "a policy string")
    if auth in ("public", "authenticated"):
        return auth
    if auth.startswith("roles:"):
        roles = auth[6:].split(",")
        if roles and all(ROLE_RE.match(r) for r in roles):
            return auth
        raise f.error("auth", f"{_show(auth)}: expected roles:a,b with roles ^[A-Za-z0-9_.:-]+$")
    raise f.error(
        "auth", f"expected 'public', 'authenticated' or 'roles:<role>,...', got {_show(auth)}"
    )
