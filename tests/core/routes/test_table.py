from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from multidict import CIMultiDict

from core.errors import EssaimError
from core.routes.table import Route, RouteError, RouteTable
from core.security.ratelimit import RateLimitPolicy

DOCS = Path(__file__).resolve().parents[3] / "docs" / "routes.md"


def table(*routes: dict[str, Any], defaults: dict[str, Any] | None = None) -> RouteTable:
    doc: dict[str, Any] = {"routes": list(routes)}
    if defaults is not None:
        doc["defaults"] = defaults
    return RouteTable.parse(doc)


def r(route_id: str, path: str, **more: Any) -> dict[str, Any]:
    """A route to service ``svc`` unless ``more`` says otherwise."""
    spec: dict[str, Any] = {"id": route_id, "path": path}
    if "urls" not in more and "service" not in more:
        spec["service"] = "svc"
    spec.update(more)
    return spec


def hit(
    t: RouteTable,
    path: str,
    method: str = "GET",
    host: str | None = None,
    headers: Any = None,
) -> str | None:
    found = t.match(method, host, path, headers if headers is not None else {})
    return found[0].id if found else None


# ----------------------------------------------------------------------------- the documented example


def docs_example() -> dict[str, Any]:
    text = DOCS.read_text()
    block = re.search(r"```toml\n(.*?)```", text, re.S)
    assert block is not None, "docs/routes.md has no ```toml example"
    return tomllib.loads(block.group(1))


def test_documented_example_parses_and_routes_as_its_comments_say() -> None:
    t = RouteTable.parse(docs_example(), version="7")
    assert t.version == "7"
    assert [route.id for route in t.routes] == [
        "product",
        "products",
        "products-v2",
        "legacy",
        "admin",
    ]

    route, params = t.match("GET", "gw.local", "/api/products/42", {}) or (None, {})
    assert route is not None
    assert route.id == "product"
    assert params == {"id": "42"}
    assert route.upstream_path(params, "/api/products/42") == "/products/42"
    assert route.methods == frozenset({"GET", "HEAD"})
    assert route.service == "inventory"
    assert (route.timeouts.connect, route.timeouts.per_try, route.timeouts.total) == (1, 2, 30)
    assert route.retry.attempts == 3

    route, params = t.match("POST", None, "/api/products/42/stock", {}) or (None, {})
    assert route is not None
    assert route.id == "products"
    assert route.upstream_path(params, "/api/products/42/stock") == "/products/42/stock"
    assert route.upstream.balancer == "least_request"
    assert route.auth == "authenticated"
    assert route.retry.attempts == 2

    v2 = t.match("POST", None, "/api/products", CIMultiDict({"X-Version": "2"}))
    assert v2 is not None
    assert v2[0].id == "products-v2"
    assert [(u.host, u.port, u.scheme, u.weight) for u in v2[0].urls] == [
        ("127.0.0.1", 9000, "http", 1),
        ("127.0.0.1", 9001, "http", 3),
    ]
    assert v2[0].request_headers_add == (("x-api-version", "2"),)
    assert v2[0].request_headers_remove == frozenset({"cookie"})
    assert v2[0].response_headers_add == (("cache-control", "no-store"),)
    assert v2[0].response_headers_remove == frozenset({"server"})
    # A more specific path wins over a header condition.
    assert hit(t, "/api/products/42", headers={"x-version": "2"}) == "product"

    legacy = t.match("GET", None, "/legacy/a/b", {})
    assert legacy is not None
    assert legacy[0].upstream_path(legacy[1], "/legacy/a/b") == "/v2/a/b"

    admin = t.match("GET", "ops.admin.example.com:8080", "/legacy/a/b", {})
    assert admin is not None
    assert admin[0].id == "admin"
    assert admin[0].roles == frozenset({"admin", "ops"})


def test_load_file_reads_toml_and_versions_it_by_content(tmp_path: Path) -> None:
    path = tmp_path / "routes.toml"
    path.write_text('[[routes]]\nid = "a"\nprefix = "/a"\nservice = "alpha"\n')
    first = RouteTable.load_file(path)
    assert hit(first, "/a/x") == "a"
    assert first.version is not None
    assert first.version.startswith("sha256:")
    assert RouteTable.load_file(path).version == first.version
    path.write_text('[[routes]]\nid = "a"\nprefix = "/b"\nservice = "alpha"\n')
    assert RouteTable.load_file(path).version != first.version


def test_load_file_reports_bad_toml_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "routes.toml"
    path.write_text("[[routes]\n")
    with pytest.raises(RouteError, match="not valid TOML"):
        RouteTable.load_file(path)
    with pytest.raises(RouteError, match="cannot read route file"):
        RouteTable.load_file(tmp_path / "missing.toml")


def test_describe_is_the_config_format_and_parses_back() -> None:
    t = RouteTable.parse(docs_example(), version="3")
    doc = t.describe()
    assert doc["version"] == "3"
    assert doc["routes"][0]["path"] == "/api/products/{id}"
    assert doc["routes"][1]["path"] == "/api/products/**"
    assert doc["routes"][0]["methods"] == ["GET", "HEAD"]
    again = RouteTable.parse({"routes": doc["routes"]})
    assert again.routes == t.routes


def test_an_empty_table_matches_nothing() -> None:
    assert hit(RouteTable.parse({}), "/") is None
    assert hit(RouteTable.parse({"routes": []}), "/a") is None


# ----------------------------------------------------------------------------- path precedence


def test_literal_beats_parameter_beats_prefix() -> None:
    t = table(
        r("prefix", "/api/products/**"),
        r("param", "/api/products/{id}"),
        r("literal", "/api/products/new"),
        r("short-prefix", "/api/**"),
    )
    assert hit(t, "/api/products/new") == "literal"
    assert hit(t, "/api/products/42") == "param"
    assert hit(t, "/api/products/42/stock") == "prefix"
    assert hit(t, "/api/products") == "prefix"
    assert hit(t, "/api/orders/1") == "short-prefix"
    assert hit(t, "/other") is None


def test_precedence_is_decided_segment_by_segment() -> None:
    t = table(r("param-then-literal", "/a/{x}/c"), r("literal-then-param", "/a/b/{y}"))
    assert hit(t, "/a/b/c") == "literal-then-param"
    assert hit(t, "/a/z/c") == "param-then-literal"


def test_a_route_refusing_the_method_lets_the_next_path_match() -> None:
    t = table(
        r("create", "/api/products/new", methods=["POST"]),
        r("read", "/api/products/{id}", methods=["GET"]),
        r("rest", "/api/**"),
    )
    assert hit(t, "/api/products/new", "POST") == "create"
    assert hit(t, "/api/products/new", "GET") == "read"
    assert hit(t, "/api/products/new", "DELETE") == "rest"


def test_backtracking_finds_a_parameter_route_behind_a_literal_dead_end() -> None:
    t = table(r("deep-literal", "/a/b/c/d"), r("param", "/a/{x}/c/e"))
    assert hit(t, "/a/b/c/e") == "param"
    assert hit(t, "/a/b/c/d") == "deep-literal"


def test_subtrees_too_short_or_too_long_for_the_path_are_passed_over() -> None:
    t = table(
        r("short", "/a/b"),
        r("param", "/a/{x}/c"),
        r("long", "/a/{x}/c/d/e"),
        r("deep-prefix", "/a/b/c/d/**"),
    )
    assert hit(t, "/a/b") == "short"
    assert hit(t, "/a/b/c") == "param"
    assert hit(t, "/a/b/c/d") == "deep-prefix"
    assert hit(t, "/a/b/c/d/e") == "deep-prefix"
    assert hit(t, "/a/z/c/d/e") == "long"
    assert hit(t, "/a/z/c/d") is None


def test_parameters_are_returned_by_name() -> None:
    t = table(r("item", "/users/{user}/orders/{order_id}"))
    found = t.match("GET", None, "/users/ann/orders/17", {})
    assert found is not None
    assert found[1] == {"user": "ann", "order_id": "17"}


def test_a_parameter_matches_one_non_empty_segment() -> None:
    t = table(r("item", "/a/{id}"))
    assert hit(t, "/a/1") == "item"
    assert hit(t, "/a/") is None
    assert hit(t, "/a/1/2") is None
    assert hit(t, "/a") is None


def test_trailing_slash_is_exact_for_paths_and_optional_for_prefixes() -> None:
    t = table(r("exact", "/a/b"), r("slash", "/c/"), r("prefix", "/p/**"))
    assert hit(t, "/a/b") == "exact"
    assert hit(t, "/a/b/") is None
    assert hit(t, "/c/") == "slash"
    assert hit(t, "/c") is None
    assert hit(t, "/p") == "prefix"
    assert hit(t, "/p/") == "prefix"
    assert hit(t, "/p/q/r") == "prefix"
    assert hit(t, "/pq") is None


def test_root_prefix_matches_every_path_and_root_path_only_itself() -> None:
    t = table(r("root", "/"))
    assert hit(t, "/") == "root"
    assert hit(t, "/a") is None
    everything = table({"id": "all", "prefix": "/", "service": "svc"})
    assert everything.routes[0].path == "/**"
    for path in ("/", "/a", "/a/b/", "//x"):
        assert hit(everything, path) == "all"


def test_prefix_key_is_the_same_as_a_double_star_path() -> None:
    t = table({"id": "p", "prefix": "/api/products/", "service": "svc"})
    assert t.routes[0].path == "/api/products/**"
    assert hit(t, "/api/products") == "p"


def test_percent_encoded_unreserved_characters_match_their_literal() -> None:
    t = table(r("admin", "/admin/**", auth="roles:admin"), r("public", "/**"))
    assert hit(t, "/%61dmin/users") == "admin"
    assert hit(t, "/%61%64%6D%69%6E/users") == "admin"
    # An encoded slash is not a separator.
    assert hit(t, "/admin%2Fusers") == "public"
    found = t.match("GET", None, "/x/%7euser/%2f", {})
    assert found is not None
    assert found[0].id == "public"


def test_dot_segments_match_no_route() -> None:
    t = table(r("public", "/public/**"), r("all", "/**"))
    for path in ("/public/../admin", "/public/./x", "/public/%2e%2e/admin", "/public/%2E/x", "/.."):
        assert hit(t, path) is None, path
    assert hit(t, "/public/.well-known") == "public"
    assert hit(t, "/public/a..b") == "public"


def test_a_path_not_starting_with_a_slash_matches_nothing() -> None:
    t = table(r("all", "/**"))
    assert hit(t, "*") is None
    assert hit(t, "http://example.com/") is None
    assert hit(t, "") is None


# ----------------------------------------------------------------------------- methods, headers, hosts


def test_methods_are_case_insensitive_in_config_and_head_is_not_implied() -> None:
    t = table(r("read", "/a", methods=["get"]))
    assert t.routes[0].methods == frozenset({"GET"})
    assert hit(t, "/a", "GET") == "read"
    assert hit(t, "/a", "HEAD") is None
    assert hit(t, "/a", "POST") is None


def test_routes_listing_methods_beat_routes_taking_any() -> None:
    t = table(r("any", "/a"), r("reads", "/a", methods=["GET"]))
    assert hit(t, "/a", "GET") == "reads"
    assert hit(t, "/a", "PATCH") == "any"


def test_header_conditions_must_all_hold_and_more_conditions_win() -> None:
    t = table(
        r("plain", "/a"),
        r("v2", "/a", headers={"X-Version": "2"}),
        r("v2-beta", "/a", headers={"X-Version": "2", "X-Beta": "yes"}),
    )
    assert hit(t, "/a") == "plain"
    assert hit(t, "/a", headers={"x-version": "2"}) == "v2"
    assert hit(t, "/a", headers={"x-version": "2", "x-beta": "yes"}) == "v2-beta"
    assert hit(t, "/a", headers={"x-version": "2", "x-beta": "no"}) == "v2"
    assert hit(t, "/a", headers={"x-version": "3"}) == "plain"


def test_headers_may_be_a_case_insensitive_mapping_or_a_function() -> None:
    t = table(r("v2", "/a", headers={"X-Version": "2"}))
    assert hit(t, "/a", headers=CIMultiDict({"X-VERSION": "2"})) == "v2"
    assert hit(t, "/a", headers={"x-version": "2"}.get) == "v2"
    asked: list[str] = []

    def lookup(name: str) -> str | None:
        asked.append(name)
        return None

    assert hit(t, "/a", headers=lookup) is None
    assert asked == ["x-version"]


def test_header_values_are_compared_exactly() -> None:
    t = table(r("v", "/a", headers={"X-Env": "Prod"}))
    assert hit(t, "/a", headers={"x-env": "Prod"}) == "v"
    assert hit(t, "/a", headers={"x-env": "prod"}) is None


def test_exact_host_beats_wildcard_beats_no_host() -> None:
    t = table(
        r("any", "/**"),
        r("wild", "/**", host="*.example.com"),
        r("deeper-wild", "/**", host="*.eu.example.com"),
        r("exact", "/**", host="api.example.com"),
    )
    assert hit(t, "/x", host="api.example.com") == "exact"
    assert hit(t, "/x", host="API.Example.COM:8443") == "exact"
    assert hit(t, "/x", host="api.example.com.") == "exact"
    assert hit(t, "/x", host="shop.example.com") == "wild"
    assert hit(t, "/x", host="a.b.example.com") == "wild"
    assert hit(t, "/x", host="shop.eu.example.com") == "deeper-wild"
    assert hit(t, "/x", host="example.com") == "any"
    assert hit(t, "/x", host="other.org") == "any"
    assert hit(t, "/x", host=None) == "any"


def test_host_routes_come_before_paths_and_fall_back_to_routes_without_host() -> None:
    t = table(
        r("specific-path", "/api/products/{id}"),
        r("host-prefix", "/api/**", host="shop.example.com", methods=["GET"]),
    )
    assert hit(t, "/api/products/1", host="shop.example.com") == "host-prefix"
    assert hit(t, "/api/products/1", "POST", host="shop.example.com") == "specific-path"
    assert hit(t, "/api/products/1", host="other.example.com") == "specific-path"


def test_ip_literal_hosts_match() -> None:
    t = table(r("v4", "/a", host="127.0.0.1"), r("v6", "/a", host="[::1]"))
    assert hit(t, "/a", host="127.0.0.1:8080") == "v4"
    assert hit(t, "/a", host="[::1]:8080") == "v6"


# ----------------------------------------------------------------------------- upstream path


def test_strip_prefix_removes_leading_segments() -> None:
    t = table(r("s", "/api/v1/**", strip_prefix=2))
    route = t.routes[0]
    assert route.upstream_path({}, "/api/v1/products/42") == "/products/42"
    assert route.upstream_path({}, "/api/v1/products/") == "/products/"
    assert route.upstream_path({}, "/api/v1") == "/"
    assert route.upstream_path({}, "/api/v1/") == "/"


def test_rewrite_substitutes_parameters_and_the_prefix_tail() -> None:
    t = table(
        r("one", "/api/products/{id}", rewrite="/products/{id}/details"),
        r("two", "/u/{user}/o/{order}", rewrite="/orders/{order}"),
        r("tail", "/old/{v}/**", rewrite="/new/{v}/{**}"),
        r("fixed", "/legacy", rewrite="/"),
    )
    for path, expected in [
        ("/api/products/42", "/products/42/details"),
        ("/u/ann/o/7", "/orders/7"),
        ("/old/v3/a/b/", "/new/v3/a/b/"),
        ("/old/v3", "/new/v3/"),
        ("/legacy", "/"),
    ]:
        found = t.match("GET", None, path, {})
        assert found is not None, path
        assert found[0].upstream_path(found[1], path) == expected, path


def test_without_strip_or_rewrite_the_path_goes_unchanged() -> None:
    t = table(r("p", "/api/**"))
    assert t.routes[0].upstream_path({}, "/api/a%20b/") == "/api/a%20b/"


# ----------------------------------------------------------------------------- targets and policies


def test_urls_are_normalised_with_default_ports() -> None:
    t = table(
        {
            "id": "u",
            "path": "/a",
            "urls": [
                "http://backend",
                "https://backend",
                "http://[::1]:81/",
                "http://LOCALHOST:82",
            ],
        }
    )
    got = [(u.url, u.host, u.port, u.scheme) for u in t.routes[0].urls]
    assert got == [
        ("http://backend:80", "backend", 80, "http"),
        ("https://backend:443", "backend", 443, "https"),
        ("http://[::1]:81", "::1", 81, "http"),
        ("http://localhost:82", "localhost", 82, "http"),
    ]


def test_defaults_apply_and_route_values_override_them_key_by_key() -> None:
    t = table(
        r("plain", "/a"),
        r("own", "/b", timeouts={"total": 60}, balancer="weighted", auth="authenticated"),
        defaults={
            "timeouts": {"connect": 0.5, "total": 20},
            "retry": {"attempts": 1},
            "balancer": "least_request",
            "auth": "roles:staff",
        },
    )
    plain, own = t.routes
    assert (plain.timeouts.connect, plain.timeouts.per_try, plain.timeouts.total) == (0.5, 10, 20)
    assert (own.timeouts.connect, own.timeouts.total) == (0.5, 60)
    assert plain.retry.attempts == own.retry.attempts == 1
    assert plain.upstream.balancer == "least_request"
    assert own.upstream.balancer == "weighted"
    assert plain.auth == "roles:staff"
    assert plain.roles == frozenset({"staff"})
    assert own.auth == "authenticated"
    assert own.roles == frozenset()


def test_without_defaults_routes_get_the_documented_defaults() -> None:
    route = table(r("a", "/a")).routes[0]
    assert (route.timeouts.connect, route.timeouts.per_try, route.timeouts.total) == (1, 10, 30)
    assert route.upstream.balancer == "round_robin"
    assert route.auth == "public"
    assert route.methods is None
    assert route.host is None
    assert route.headers == ()
    assert route.strip_prefix == 0
    assert route.rewrite is None


def test_policies_come_from_the_route_with_the_per_try_timeout_of_its_timeouts() -> None:
    route = table(
        r(
            "a",
            "/a",
            timeouts={"per_try": 2.5},
            retry={
                "attempts": 4,
                "retry_on": ["connect", "5xx"],
                "retriable_statuses": [503],
                "budget_ratio": 0.1,
                "budget_min_per_second": 5,
            },
            breaker={"failure_rate_threshold": 25, "enabled": False},
            outlier={"consecutive_failures": 0},
            balancer="least_request",
        )
    ).routes[0]
    assert route.retry.attempts == 4
    assert route.retry.retry_on == frozenset({"connect", "5xx"})
    assert route.retry.retriable_statuses == frozenset({503})
    assert route.retry.per_try_timeout == 2.5
    assert route.upstream.retry == route.retry
    assert (route.upstream.retry_budget_ratio, route.upstream.retry_budget_min_per_second) == (
        0.1,
        5.0,
    )
    assert route.upstream.breaker.failure_rate_threshold == 25.0
    assert route.upstream.breaker.enabled is False
    assert route.upstream.outlier.consecutive_failures == 0
    assert route.upstream.balancer == "least_request"
    assert RouteTable.parse({"routes": [route.describe()]}).routes[0] == route


def test_a_rate_limit_is_a_route_s_own_and_parses_back() -> None:
    limited, free = table(
        r("a", "/a", rate_limit={"replenish_rate": 5, "burst_capacity": 10}), r("b", "/b")
    ).routes
    assert limited.rate_limit == RateLimitPolicy(replenish_rate=5, burst_capacity=10)
    assert free.rate_limit is None
    assert "rate_limit" not in free.describe()
    assert limited.describe()["rate_limit"] == {
        "replenish_rate": 5,
        "burst_capacity": 10,
        "requested_tokens": 1,
        "fail_open": True,
        "mode": "exact",
        "sync_interval": 0.005,
    }
    assert RouteTable.parse({"routes": [limited.describe()]}).routes[0] == limited


def test_route_errors_are_essaim_errors_and_value_errors() -> None:
    with pytest.raises(RouteError) as info:
        table(r("a", "/a", service="Bad"))
    assert isinstance(info.value, EssaimError)
    assert isinstance(info.value, ValueError)
    assert (info.value.route, info.value.field) == ("a", "service")


# ----------------------------------------------------------------------------- validation

BAD_ROUTES: list[tuple[str, dict[str, Any], str]] = [
    ("unknown key", r("a", "/a", colour="red"), "route 'a', field 'colour': unknown key"),
    ("no id", {"path": "/a", "service": "svc"}, "routes[1], field 'id': required"),
    ("bad id", r("a b", "/a"), "field 'id': expected"),
    ("id not a string", r("x", "/a") | {"id": 3}, "field 'id': expected a string, got 3"),
    ("no path", {"id": "a", "service": "svc"}, "exactly one of 'path' and 'prefix'"),
    ("path and prefix", r("a", "/a", prefix="/b"), "exactly one of 'path' and 'prefix'"),
    ("relative path", r("a", "a/b"), "field 'path': expected a path starting with '/'"),
    ("star in middle", r("a", "/a/**/b"), "'**' is only allowed as the last segment"),
    ("single star", r("a", "/a/*"), "'**' is only allowed as the last segment"),
    ("partial param", r("a", "/a/x{id}"), "a parameter must be a whole segment"),
    ("bad param name", r("a", "/a/{1x}"), "parameter '{1x}'"),
    ("empty param", r("a", "/a/{}"), "parameter '{}'"),
    ("param twice", r("a", "/a/{id}/{id}"), "appears twice"),
    ("empty segment", r("a", "/a//b"), "empty segment"),
    ("dot segment", r("a", "/a/../b"), "'.' and '..' segments"),
    ("encoded dot segment", r("a", "/a/%2e/b"), "'.' and '..' segments"),
    ("space", r("a", "/a b"), "characters not allowed"),
    ("query in path", r("a", "/a?x=1"), "characters not allowed"),
    ("too deep", r("a", "/x" * 33), "more than 32 segments"),
    ("param in prefix", {"id": "a", "prefix": "/a/{id}", "service": "svc"}, "a prefix is literal"),
    ("no target", {"id": "a", "path": "/a"}, "exactly one of 'service' and 'urls'"),
    ("both targets", r("a", "/a", urls=["http://h"], service="svc"), "exactly one of 'service'"),
    (
        "upper-case service",
        r("a", "/a", service="Inventory"),
        "field 'service': expected ^[a-z0-9]",
    ),
    ("long service", r("a", "/a", service="s" * 64), "field 'service'"),
    ("empty urls", r("a", "/a", urls=[]), "expected at least one URL"),
    ("ftp url", r("a", "/a", urls=["ftp://h"]), "expected an http:// or https:// URL"),
    ("url without host", r("a", "/a", urls=["http://"]), "without user info"),
    ("url with user", r("a", "/a", urls=["http://u:p@h"]), "without user info"),
    ("url with path", r("a", "/a", urls=["http://h/base"]), "no path, query or fragment"),
    ("url with query", r("a", "/a", urls=["http://h?x"]), "no path, query or fragment"),
    ("bad port", r("a", "/a", urls=["http://h:99999"]), "field 'urls'"),
    ("port zero", r("a", "/a", urls=["http://h:0"]), "port 0"),
    ("bad host", r("a", "/a", urls=["http://exa mple"]), "field 'urls'"),
    ("duplicate url", r("a", "/a", urls=["http://h:80", "http://h"]), "appears twice"),
    ("zero weight", r("a", "/a", urls=[{"url": "http://h", "weight": 0}]), "weight of"),
    ("float weight", r("a", "/a", urls=[{"url": "http://h", "weight": 1.5}]), "integer weight"),
    ("url table key", r("a", "/a", urls=[{"url": "http://h", "w": 1}]), "'urls.w': unknown key"),
    ("url table no url", r("a", "/a", urls=[{"weight": 2}]), "has no 'url'"),
    ("strip and rewrite", r("a", "/a/b", strip_prefix=1, rewrite="/b"), "exclude each other"),
    ("strip too much", r("a", "/a/**", strip_prefix=2), "field 'strip_prefix': expected 0-1"),
    ("negative strip", r("a", "/a", strip_prefix=-1), "field 'strip_prefix'"),
    ("strip bool", r("a", "/a", strip_prefix=True), "expected an integer"),
    ("unknown param", r("a", "/a/{id}", rewrite="/b/{name}"), "'{name}' is not a parameter"),
    ("tail without prefix", r("a", "/a/{id}", rewrite="/b/{**}"), "'{**}' needs a path ending"),
    ("relative rewrite", r("a", "/a", rewrite="b"), "field 'rewrite': expected a template"),
    ("rewrite with query", r("a", "/a", rewrite="/b?x=1"), "characters not allowed"),
    ("empty methods", r("a", "/a", methods=[]), "expected at least one method"),
    ("bad method", r("a", "/a", methods=["GET POST"]), "is not an HTTP method"),
    ("methods not list", r("a", "/a", methods="GET"), "expected a list of strings"),
    ("host with port", r("a", "/a", host="h:80"), "field 'host'"),
    ("host wildcard in middle", r("a", "/a", host="a.*.com"), "field 'host'"),
    ("bad header name", r("a", "/a", headers={"X Bad": "1"}), "not a valid header name"),
    ("header value newline", r("a", "/a", headers={"X-A": "1\r\nX-B: 2"}), "control characters"),
    ("header value number", r("a", "/a", headers={"X-A": 2}), "a header value string"),
    ("header twice", r("a", "/a", headers={"X-A": "1", "x-a": "1"}), "appears twice"),
    (
        "header section key",
        r("a", "/a", request_headers={"set": {}}),
        "field 'request_headers.set': unknown key",
    ),
    (
        "add hop-by-hop",
        r("a", "/a", request_headers={"add": {"Connection": "close"}}),
        "managed by the proxy",
    ),
    (
        "remove content-length",
        r("a", "/a", response_headers={"remove": ["Content-Length"]}),
        "managed by the proxy",
    ),
    ("negative timeout", r("a", "/a", timeouts={"connect": -1}), "'timeouts.connect': expected"),
    ("zero timeout", r("a", "/a", timeouts={"total": 0}), "'timeouts.total': expected"),
    ("nan timeout", r("a", "/a", timeouts={"total": float("nan")}), "'timeouts.total'"),
    ("string timeout", r("a", "/a", timeouts={"total": "5"}), "'timeouts.total'"),
    ("timeout key", r("a", "/a", timeouts={"read": 1}), "'timeouts.read': unknown key"),
    ("per try over total", r("a", "/a", timeouts={"per_try": 40}), "is over total"),
    ("connect over per try", r("a", "/a", timeouts={"connect": 11}), "is over per_try"),
    ("zero attempts", r("a", "/a", retry={"attempts": 0}), "field 'retry'"),
    ("retry key", r("a", "/a", retry={"tries": 2}), "field 'retry': unknown key 'tries'"),
    ("retry type", r("a", "/a", retry={"attempts": "2"}), "field 'retry': attempts: expected"),
    (
        "retry kind",
        r("a", "/a", retry={"retry_on": ["boom"]}),
        "field 'retry': retry_on has unknown",
    ),
    ("retry statuses", r("a", "/a", retry={"retriable_statuses": ["x"]}), "retriable_statuses"),
    ("retry per try", r("a", "/a", retry={"per_try_timeout": 1}), "set timeouts.per_try instead"),
    ("retry budget", r("a", "/a", retry={"budget_ratio": -1}), "field 'retry': retry budget"),
    ("retry budget type", r("a", "/a", retry={"budget_ratio": "x"}), "budget_ratio: expected"),
    ("breaker key", r("a", "/a", breaker={"colour": 1}), "field 'breaker': unknown key"),
    ("breaker value", r("a", "/a", breaker={"sliding_window_size": 0}), "sliding_window_size must"),
    ("breaker type", r("a", "/a", breaker={"enabled": 1}), "enabled: expected true or false"),
    ("outlier value", r("a", "/a", outlier={"max_ejection_percent": 101}), "field 'outlier'"),
    ("outlier key", r("a", "/a", outlier={"colour": 1}), "field 'outlier': unknown key"),
    ("balancer", r("a", "/a", balancer="random"), "field 'balancer': expected one of"),
    ("auth", r("a", "/a", auth="admin"), "field 'auth': expected 'public'"),
    ("empty role", r("a", "/a", auth="roles:"), "field 'auth'"),
    ("bad role", r("a", "/a", auth="roles:a,,b"), "field 'auth'"),
    ("rate limit table", r("a", "/a", rate_limit=5), "field 'rate_limit': expected a table"),
    ("rate limit key", r("a", "/a", rate_limit={"rate": 5}), "'rate_limit': unknown key 'rate'"),
    (
        "rate limit rate",
        r("a", "/a", rate_limit={"replenish_rate": 0}),
        "'rate_limit': replenish_rate: expected >= 1",
    ),
    (
        "rate limit burst",
        r("a", "/a", rate_limit={"burst_capacity": 5, "requested_tokens": 6}),
        "'rate_limit': expected 1 <= requested_tokens (6) <= burst_capacity (5)",
    ),
    ("route not a table", "just a string", "routes[1]: expected a route table"),  # type: ignore[list-item]
]


@pytest.mark.parametrize(
    ("doc", "message"), [(d, m) for _, d, m in BAD_ROUTES], ids=[c for c, _, _ in BAD_ROUTES]
)
def test_invalid_route_is_rejected_with_its_reason(doc: dict[str, Any], message: str) -> None:
    good = r("good", "/good")
    with pytest.raises(RouteError) as info:
        RouteTable.parse({"routes": [good, doc]})
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([], "expected a table with a 'routes' list"),
        ({"routes": {}}, "field 'routes': expected a list"),
        ({"routes": [], "extra": 1}, "field 'routes.extra': unknown key"),
        ({"defaults": {"path": "/"}}, "field 'defaults.path': unknown key"),
        ({"defaults": {"timeouts": {"total": -1}}}, "field 'defaults.timeouts.total'"),
        ({"defaults": {"timeouts": 5}}, "field 'defaults.timeouts': expected a table"),
        ({"defaults": {"balancer": "x"}}, "field 'defaults.balancer'"),
        ({"defaults": {"retry": {"attempts": 0}}}, "field 'defaults.retry'"),
    ],
)
def test_invalid_table_is_rejected_with_its_reason(doc: Any, message: str) -> None:
    with pytest.raises(RouteError) as info:
        RouteTable.parse(doc)
    assert message in str(info.value)


def test_duplicate_ids_are_rejected() -> None:
    with pytest.raises(RouteError, match="route 'a', field 'id': duplicate route id"):
        table(r("a", "/a"), r("a", "/b"))


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (r("x", "/a/{id}"), r("y", "/a/{other}")),
        (r("x", "/a/**"), {"id": "y", "prefix": "/a", "service": "svc"}),
        (r("x", "/a", methods=["GET", "POST"]), r("y", "/a", methods=["post", "PUT"])),
        (r("x", "/a", host="h.example"), r("y", "/a", host="H.example")),
        (r("x", "/a", headers={"X-V": "1"}), r("y", "/a", headers={"x-v": "1"})),
        (r("x", "/a"), r("y", "/a", urls=["http://elsewhere"])),
    ],
)
def test_routes_only_declaration_order_could_separate_are_rejected(
    first: dict[str, Any], second: dict[str, Any]
) -> None:
    with pytest.raises(RouteError, match="route 'y', field 'path': ambiguous with route 'x'"):
        table(first, second)


def test_routes_separated_by_a_condition_are_accepted() -> None:
    t = table(
        r("get", "/a", methods=["GET"]),
        r("post", "/a", methods=["POST"]),
        r("any", "/a"),
        r("hdr", "/a", headers={"X-V": "1"}),
        r("hdr2", "/a", headers={"X-V": "2"}),
        r("host", "/a", host="h.example"),
        r("param", "/a/{id}"),
        r("prefix", "/a/**"),
    )
    assert len(t) == 8


def test_a_rejected_table_leaves_no_partial_state() -> None:
    good = table(r("a", "/a"))
    with pytest.raises(RouteError):
        RouteTable.parse({"routes": [r("a", "/a"), r("b", "/b", service="Bad")]})
    assert hit(good, "/a") == "a"


# ----------------------------------------------------------------------------- scale


def test_a_thousand_routes_each_match_their_own_requests() -> None:
    specs: list[dict[str, Any]] = []
    for i in range(250):
        specs.append(r(f"item-{i}", f"/svc{i}/items/{{id}}", methods=["GET"]))
        specs.append({"id": f"svc-{i}", "prefix": f"/svc{i}", "service": f"svc-{i}"})
        specs.append(r(f"new-{i}", f"/svc{i}/items/new", methods=["POST"]))
        specs.append(r(f"host-{i}", "/**", host=f"tenant{i}.example.com"))
    t = RouteTable.parse({"routes": specs})
    assert len(t) == 1000
    for i in (0, 1, 137, 249):
        found = t.match("GET", None, f"/svc{i}/items/9", {})
        assert found is not None
        assert (found[0].id, found[1]) == (f"item-{i}", {"id": "9"})
        assert hit(t, f"/svc{i}/items/new", "POST") == f"new-{i}"
        assert hit(t, f"/svc{i}/items/new", "GET") == f"item-{i}"
        assert hit(t, f"/svc{i}/orders", "DELETE") == f"svc-{i}"
        assert hit(t, f"/svc{i}", "PUT") == f"svc-{i}"
        assert hit(t, "/anything", host=f"tenant{i}.example.com") == f"host-{i}"
    assert hit(t, "/svc250/items/1") is None
    assert hit(t, "/anything", host="tenant250.example.com") is None
    # Every route is reachable: each one is what some request matches.
    reached: set[str] = set()
    for i in range(250):
        for method, path, host in [
            ("GET", f"/svc{i}/items/1", None),
            ("GET", f"/svc{i}/x", None),
            ("POST", f"/svc{i}/items/new", None),
            ("GET", "/", f"tenant{i}.example.com"),
        ]:
            found = t.match(method, host, path, {})
            assert found is not None
            reached.add(found[0].id)
    assert reached == {route.id for route in t.routes}


def test_route_objects_are_immutable() -> None:
    route: Route = table(r("a", "/a")).routes[0]
    with pytest.raises(AttributeError):
        route.id = "b"  # type: ignore[misc]


@pytest.mark.parametrize("field", ["path", "prefix"])
def test_routes_under_the_gateways_own_prefix_are_refused(field: str) -> None:
    spec = {"id": "r", field: "/-/health", "urls": ["http://127.0.0.1:1"]}
    with pytest.raises(RouteError, match="the gateway's own"):
        RouteTable.parse({"routes": [spec]}, "v")
