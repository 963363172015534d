"""The demo's static routes (config/gateway.toml): they parse, and route with the policies they say."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from core.routes.table import Route, RouteTable
from core.security.ratelimit import RateLimitPolicy
from core.service.policies import compare
from services.policies import discover

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

    for action in ("replay", "discard"):
        assert routed(table, "POST", f"/inventory/events/dead/{action}") == (
            "dead-letters-admin", "roles:admin", "inventory", f"/events/dead/{action}",
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


def test_the_gateway_and_every_demo_service_agree_on_each_routes_policy() -> None:
    services = discover()
    assert {s.name for s in services} >= {"auth", "billing", "customers", "inventory"}
    findings = compare(RouteTable.load_file(ROUTES), services, "authenticated")
    assert [f.problem for f in findings if not f.ok] == []
    assert len(findings) >= 15


def test_python_m_services_policies_exits_1_on_a_disagreement(tmp_path: Path) -> None:
    loose = tmp_path / "gateway.toml"
    text = ROUTES.read_text().replace('auth = "roles:admin"', 'auth = "authenticated"')
    loose.write_text(text)
    run = subprocess.run(
        [sys.executable, "-m", "services", "policies", "--routes", str(loose)],
        capture_output=True, text=True, timeout=60, cwd=ROUTES.parents[1],
    )  # fmt: skip
    assert run.returncode == 1, run.stdout + run.stderr
    assert "BAD POST /inventory/products" in run.stdout
    assert "the service says roles:admin, the gateway says authenticated" in run.stdout
    agreed = subprocess.run(
        [sys.executable, "-m", "services", "policies"],
        capture_output=True, text=True, timeout=60, cwd=ROUTES.parents[1],
    )  # fmt: skip
    assert agreed.returncode == 0, agreed.stdout + agreed.stderr
    assert agreed.stdout.rstrip().endswith("routes, 0 disagreeing")
