"""The demo's static routes (config/gateway.toml): they parse, and route with the policies they say."""

from __future__ import annotations

from pathlib import Path

from core.routes.table import Route, RouteTable
from core.security.ratelimit import RateLimitPolicy

ROUTES = Path(__file__).resolve().parents[2] / "config" / "gateway.toml"


def routed(table: RouteTable, method: str, path: str) -> tuple[str, str, str, str] | None:
    """``(route id, policy, service, upstream path)`` of a request, None for a discovery route."""
    found = table.match(method, "localhost", path, {})
    if found is None:
        return None
    route: Route = found[0]
    assert route.service is not None
    return route.id, route.auth, route.service, route.upstream_path(found[1], path)


def test_the_demo_routes_parse_and_say_who_may_do_what() -> None:
    table = RouteTable.load_file(ROUTES)

    for method in ("GET", "HEAD"):
        assert routed(table, method, "/inventory/products") == (
            "products-read", "public", "inventory", "/products",
        )  # fmt: skip
        assert routed(table, method, "/inventory/products/3") == (
            "products-read", "public", "inventory", "/products/3",
        )  # fmt: skip
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        assert routed(table, method, "/inventory/products") == (
            "products-write", "roles:admin", "inventory", "/products",
        )  # fmt: skip
        assert routed(table, method, "/inventory/products/3") == (
            "products-write", "roles:admin", "inventory", "/products/3",
        )  # fmt: skip

    assert routed(table, "GET", "/auth/.well-known/jwks.json") == (
        "auth", "public", "auth", "/.well-known/jwks.json",
    )  # fmt: skip
    for path in ("/auth/token", "/auth/token/refresh", "/auth/token/revoke"):
        assert routed(table, "POST", path) == ("auth-tokens", "public", "auth", path[5:])
    limited = table.match("POST", None, "/auth/token", {})
    assert limited is not None
    assert limited[0].rate_limit == RateLimitPolicy(replenish_rate=5, burst_capacity=10)
    assert all(r.rate_limit is None for r in table.routes if r.id != "auth-tokens")

    # The rest goes to the discovery routes, whose policy is GATEWAY_DISCOVERY_AUTH.
    for method, path in (
        ("GET", "/customers/customers"),
        ("POST", "/billing/bills"),
        ("GET", "/inventory/events/dead"),
        ("OPTIONS", "/inventory/products"),
    ):
        assert routed(table, method, path) is None
