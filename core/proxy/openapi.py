"""The gateway admin port's OpenAPI document (``GET /openapi.json`` on the admin port).

One document for both shapes of the admin port: a single gateway process,
and the parent of ``--workers N`` processes, whose answers merge its
workers' (it adds ``/workers`` and ``?per_worker=1``).
"""

from __future__ import annotations

from core.openapi.schemas import ANY, STRING, json, obj
from core.openapi.spec import Spec

__all__ = ["build"]


def build(*, workers: bool) -> Spec:
    """The admin API; ``workers``: as the parent of several worker processes serves it."""
    spec = Spec(
        "Essaim gateway admin",
        "What the gateway routes to, how its upstreams are doing, its metrics. Loopback only.",
    )
    per_worker = (
        {"per_worker": ({"type": "string", "enum": ["0", "1"]}, "1: each worker's own answer")}
        if workers
        else None
    )
    spec.op("GET", "/routes", "The route table in force, its version and source",
            query=per_worker, redis=False, responses=[(200, json(ANY))])  # fmt: skip
    spec.op("GET", "/upstreams", "Every upstream: endpoints, ejections, breaker, counts",
            query=per_worker, redis=False, responses=[(200, json(ANY))])  # fmt: skip
    health = obj(required=("status",), status=STRING)
    spec.operations(
        "Serving, and how Redis, the registry and config are doing",
        health,
        (health, "no worker answers"),
        metrics="Prometheus metrics (summed over the workers)",
    )
    if workers:
        spec.op(
            "GET",
            "/workers",
            "The worker processes: slot, pid, state, restarts",
            redis=False,
            responses=[(200, json(obj(required=(), workers=ANY)))],
        )
    return spec
