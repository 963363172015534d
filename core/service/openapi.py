"""A service's OpenAPI document: the scaffold's routes, then the service's own.

The scaffold describes what it adds to every service (``/health``,
``/metrics``, ``/openapi.json``, the dead-letter and outbox routes of a
service that handles or emits events); the service describes its own routes
with :attr:`Service.openapi <core.service.scaffold.Service.openapi>`, a
function given the :class:`~core.openapi.spec.Spec` to add to. An
operation's ``auth`` follows the route's policy: anything but ``public``
needs a bearer token when the service verifies tokens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.openapi.schemas import ANY, INTEGER, STRING, array_of, json, nullable, obj, problem
from core.openapi.spec import Spec

if TYPE_CHECKING:
    from core.service.scaffold import Service

__all__ = ["build"]

DEAD_LETTER_ID = {"type": "string", "pattern": r"^\d+-\d+$"}
IDS = obj(ids=array_of(DEAD_LETTER_ID))
ADMIN_ONLY = problem(403, "the token lacks the role of the service's admin actions")


def build(service: Service) -> Spec:
    """The document of ``service``: every route its application serves."""
    spec = Spec(f"Essaim {service.name}", service.description, bearer=True)
    spec.operations(
        "What the instance depends on and how it is doing",
        obj(required=("status", "service", "instance"),
            status=STRING, service=STRING, instance=STRING),
        (obj(required=("status",), status=STRING), "its database fails"),
    )  # fmt: skip
    events = ["events"]
    if service.consumes:
        spec.op("GET", "/events/dead", "The service's dead letters, oldest first", tags=events,
                auth=True, query={"after": DEAD_LETTER_ID,
                                  "count": {"type": "integer", "minimum": 1, "maximum": 1000}},
                responses=[(200, json(obj(group=STRING, dead_letters=array_of(ANY),
                                          next_after=nullable(STRING))))])  # fmt: skip
        spec.op("POST", "/events/dead/replay", "Deliver dead letters to this service again",
                tags=events, auth=True, body={"application/json": IDS}, body_required=False,
                description=f"An admin action ({service.admin_access} by default).",
                responses=[(200, json(obj(replayed=INTEGER))), ADMIN_ONLY,
                           problem(422, "ids that are not dead letter ids")])  # fmt: skip
        spec.op("POST", "/events/dead/discard", "Delete dead letters for good", tags=events,
                auth=True, body={"application/json": IDS},
                description=f"An admin action ({service.admin_access} by default).",
                responses=[(200, json(obj(discarded=INTEGER))), ADMIN_ONLY,
                           problem(422, "ids that are not dead letter ids")])  # fmt: skip
    if service.publishes:
        spec.op(
            "GET",
            "/events/outbox",
            "The newest events of the service's outbox",
            tags=events,
            auth=True,
            query={"limit": {"type": "integer", "minimum": 1, "maximum": 1000}},
            responses=[(200, json(obj(events=array_of(ANY), pending=INTEGER)))],
        )
    if service.openapi is not None:
        service.openapi(spec)
    return spec
