"""``python -m services policies``: do the gateway and the services agree on who may do what?

Reads the gateway's route table (``config/gateway.toml`` by default) and
every service under ``services/`` (each package whose ``service`` module has
a ``SERVICE``), and prints each service route with the service's policy and
the gateway's (:func:`core.service.policies.compare`). Exits 1 when any
route disagrees, 0 when all agree, 2 on a bad argument.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from pathlib import Path

import services
from core.routes.table import RouteError, RouteTable
from core.security.access import Policy
from core.service.policies import compare
from core.service.scaffold import Service

__all__ = ["discover", "main"]


def discover() -> list[Service]:
    """Every service of the ``services`` package, by name."""
    found = []
    for info in pkgutil.iter_modules(services.__path__):
        if not info.ispkg:
            continue
        try:
            module = importlib.import_module(f"services.{info.name}.service")
        except ModuleNotFoundError:
            continue
        service = getattr(module, "SERVICE", None)
        if isinstance(service, Service):
            found.append(service)
    return sorted(found, key=lambda s: s.name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services policies", description=__doc__)
    parser.add_argument(
        "--routes", default="config/gateway.toml", help="the gateway's route table (TOML)"
    )
    parser.add_argument(
        "--discovery-auth",
        default="authenticated",
        help="the policy of the gateway's discovery routes (GATEWAY_DISCOVERY_AUTH; "
        "the launcher sets authenticated)",
    )
    args = parser.parse_args(argv)
    try:
        Policy.parse(args.discovery_auth)
        table = RouteTable.load_file(Path(args.routes))
    except (OSError, RouteError, ValueError) as exc:
        print(f"services policies: {exc}", file=sys.stderr)
        return 2
    findings = compare(table, discover(), args.discovery_auth)
    width = max((len(f"{f.method} /{f.service}{f.path}") for f in findings), default=10)
    for f in findings:
        where = f"{f.method} /{f.service}{f.path}"
        mark = "ok " if f.ok else "BAD"
        line = f"{mark} {where:<{width}}  service: {f.service_policy:<16} gateway: {f.gateway_policy:<16} ({f.gateway_route})"
        print(line if f.ok else f"{line}\n    {f.problem}")
    bad = sum(not f.ok for f in findings)
    print(f"{len(findings)} routes, {bad} disagreeing")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
