"""Do the gateway and a service agree on who may use each of the service's routes?

A route's policy is said twice: by the service (:attr:`Service.access
<core.service.scaffold.Service.access>` and ``default_access``, enforced when
the service verifies tokens itself) and by the gateway (its static route
table, else the discovery routes' policy). Nothing forces the two to agree,
so :func:`compare` reads both and lists every route where they differ. The
suite runs it on the demo (``tests/services/test_demo_routes.py``) and
``python -m services policies`` runs it for anyone adding a service.

A service route ``METHOD /path/{id}`` is checked as the request
``METHOD /{service}/path/1`` through the gateway: the static route that
matches it must send it to the same service and path, with the same policy;
when no static route matches, the discovery policy applies.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable

from aiohttp.web_routedef import RouteDef

from core.routes.table import RouteTable
from core.security.access import Policy
from core.service.scaffold import Service

__all__ = ["Finding", "compare", "sample_path"]

_PARAM = re.compile(r"\{[^}]*\}")


@dataclasses.dataclass(frozen=True, slots=True)
class Finding:
    """One service route: what the service and the gateway say of it."""

    service: str
    method: str
    path: str  # as the service declares it
    service_policy: str
    gateway_policy: str
    gateway_route: str  # a static route's id, or "discovery"
    problem: str | None = None  # None when both agree

    @property
    def ok(self) -> bool:
        return self.problem is None


def sample_path(template: str) -> str:
    """A concrete path for an aiohttp path template: every ``{param}`` becomes ``1``."""
    return _PARAM.sub("1", template)


def compare(table: RouteTable, services: Iterable[Service], discovery_auth: str) -> list[Finding]:
    """Every route of every service in ``services``, with both policies and any disagreement."""
    discovery = Policy.parse(discovery_auth)
    findings = []
    for service in services:
        declared = {}
        for key, text in service.access.items():
            method, _, path = key.partition(" ")
            declared[(method, path)] = Policy.parse(text)
        default = Policy.parse(service.default_access)
        routes = sorted({(r.method, r.path) for r in service.routes if isinstance(r, RouteDef)})
        for method, path in routes:
            if method == "HEAD":
                continue  # follows its GET on both sides
            mine = declared.get((method, path), default)
            public = f"/{service.name}{sample_path(path)}"
            found = table.match(method, None, public, {})
            if found is None:
                theirs, route_id, problem = discovery, "discovery", None
            else:
                route, params = found
                theirs, route_id = Policy.parse(route.auth), route.id
                upstream = route.upstream_path(params, public)
                problem = None
                if route.service != service.name or upstream != sample_path(path):
                    problem = (
                        f"the gateway sends {method} {public} to "
                        f"{route.service or 'a URL'} {upstream}, not to {service.name} {path}"
                    )
            if problem is None and theirs != mine:
                problem = f"the service says {mine}, the gateway says {theirs}"
            findings.append(
                Finding(service.name, method, path, str(mine), str(theirs), route_id, problem)
            )
    return findings
