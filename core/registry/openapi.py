"""The registry's OpenAPI document (``GET /openapi.json``): the native API and the Eureka API."""

from __future__ import annotations

from core.openapi.schemas import (
    ANY,
    INTEGER,
    STRING,
    Schema,
    array_of,
    events,
    json,
    obj,
    problem,
)
from core.openapi.spec import Spec

__all__ = ["build"]

STATUS: Schema = {"type": "string", "enum": ["UP", "DOWN", "STARTING", "OUT_OF_SERVICE"]}
METADATA: Schema = {"type": "object", "additionalProperties": STRING}
SERVICE_NAME: Schema = {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,62}$"}
INSTANCE_ID: Schema = {"type": "string", "maxLength": 128}

INSTANCE = obj(
    required=("service", "id", "host", "port", "scheme", "status", "metadata", "ttl",
              "registered_at"),
    service=STRING, id=STRING, host=STRING, port=INTEGER,
    scheme={"type": "string", "enum": ["http", "https"]}, status=STATUS, metadata=METADATA,
    ttl=INTEGER, registered_at=STRING, last_heartbeat=STRING,
)  # fmt: skip
REGISTRATION = obj(
    required=("host", "port"),
    extra=False,
    host=STRING,
    port={"type": "integer", "minimum": 1, "maximum": 65535},
    scheme={"type": "string", "enum": ["http", "https"]},
    status=STATUS,
    metadata=METADATA,
    ttl={"type": "integer", "minimum": 1},
)
CHANGE = obj(required=(), extra=False, status=STATUS, metadata=METADATA)
JSON = "application/json"
NAMES = {"service": SERVICE_NAME, "id": INSTANCE_ID}
BAD_NAME = problem(422, "an invalid service name or instance id, or invalid values")
NOT_REGISTERED = problem(404, "no such instance (unknown, or expired: register again)")
SCOPE = problem(403, "a service token for another service: it writes its own instances only")
EUREKA_READ = [BAD_NAME, (200, {"description": "Eureka's XML, or JSON when Accept says application/json",
                      "content": {"application/xml": {"schema": STRING}, JSON: {"schema": ANY}}})]  # fmt: skip


def build() -> Spec:
    """The registry's document: every route it serves."""
    spec = Spec(
        "Essaim registry",
        "Where every service instance records its address, kept alive by heartbeats.",
        bearer=True,
    )
    base = "/v1/services/{service}/instances/{id}"
    spec.op("PUT", base, "Register or replace an instance", params=NAMES,
            body={JSON: REGISTRATION}, auth=True, tags=["native"],
            responses=[(201, json(obj(rev=INTEGER, instance=INSTANCE), "registered")),
                       (200, json(obj(rev=INTEGER, instance=INSTANCE), "replaced")),
                       BAD_NAME, problem(413, "the body is too large")])  # fmt: skip
    spec.op("PUT", base + "/heartbeat", "Renew an instance's lease", params=NAMES, auth=True,
            tags=["native"], responses=[(204, {"description": "renewed"}), NOT_REGISTERED, BAD_NAME])  # fmt: skip
    spec.op("PATCH", base, "Change an instance's status or metadata", params=NAMES,
            body={JSON: CHANGE}, auth=True, tags=["native"],
            responses=[(200, json(obj(instance=INSTANCE))), NOT_REGISTERED, BAD_NAME])  # fmt: skip
    spec.op("DELETE", base, "Deregister an instance", params=NAMES, auth=True, tags=["native"],
            responses=[(204, {"description": "deregistered"}), NOT_REGISTERED, BAD_NAME])  # fmt: skip
    counts = obj(instances=INTEGER, up=INTEGER)
    spec.op("GET", "/v1/services", "Every service with its instance counts", tags=["native"],
            responses=[(200, json(obj(rev=INTEGER, services={"type": "object",
                                                             "additionalProperties": counts})))])  # fmt: skip
    spec.op("GET", "/v1/services/{service}", "A service's instances", tags=["native"],
            params={"service": SERVICE_NAME},
            query={"all": (STRING, "1: every status, not only UP")},
            responses=[(200, json(obj(service=STRING, rev=INTEGER,
                                      instances=array_of(INSTANCE)))),
                       problem(404, "no service of that name was ever registered"),
                       problem(422, "an invalid service name")])  # fmt: skip
    spec.op("GET", "/v1/events", "Changes as Server-Sent Events", tags=["native"],
            query={"since": ({"type": "integer", "minimum": 0}, "the last revision seen")},
            headers={"Last-Event-ID": (STRING, "the last revision seen; wins over since")},
            responses=[(200, events("change", "resync"))])  # fmt: skip
    target = obj(targets=array_of(STRING), labels={"type": "object",
                                                  "additionalProperties": STRING})  # fmt: skip
    spec.op(
        "GET",
        "/v1/prometheus/targets",
        "Prometheus HTTP service discovery",
        tags=["operations"],
        responses=[(200, json(array_of(target)))],
    )
    status = obj(required=("status",), status=STRING)
    spec.operations("Liveness and Redis status", status, (status, "not ready"))

    app = {"app": {"type": "string", "description": "the application (service) name, any case"}}
    one = {**app, "id": INSTANCE_ID}
    eureka = ["eureka"]
    for path in ("/eureka/apps", "/eureka/apps/"):
        spec.op("GET", path, "Every application (Eureka)", tags=eureka, responses=EUREKA_READ)
    spec.op(
        "GET", "/eureka/apps/delta", "Recent changes (Eureka)", tags=eureka, responses=EUREKA_READ
    )
    spec.op("POST", "/eureka/apps/{app}", "Register (Eureka)", params=app, auth=True,
            tags=eureka, body={JSON: obj(instance={"type": "object"})},
            responses=[(204, {"description": "registered"}), BAD_NAME])  # fmt: skip
    spec.op(
        "GET",
        "/eureka/apps/{app}",
        "One application (Eureka)",
        params=app,
        tags=eureka,
        responses=[*EUREKA_READ, problem(404, "no such application")],
    )
    eureka_one = "/eureka/apps/{app}/{id}"
    spec.op(
        "GET",
        eureka_one,
        "One instance (Eureka)",
        params=one,
        tags=eureka,
        responses=[*EUREKA_READ, NOT_REGISTERED],
    )
    spec.op(
        "PUT",
        eureka_one,
        "Renew (Eureka)",
        params=one,
        auth=True,
        tags=eureka,
        query={"status": STRING, "lastDirtyTimestamp": STRING},
        responses=[(200, {"description": "renewed"}), NOT_REGISTERED, BAD_NAME],
    )
    spec.op(
        "DELETE",
        eureka_one,
        "Cancel (Eureka)",
        params=one,
        auth=True,
        tags=eureka,
        responses=[(200, {"description": "cancelled"}), NOT_REGISTERED, BAD_NAME],
    )
    spec.op(
        "PUT",
        eureka_one + "/status",
        "Override the status (Eureka)",
        params=one,
        auth=True,
        tags=eureka,
        query={"value": STATUS},
        required_query=["value"],
        responses=[(200, {"description": "overridden"}), NOT_REGISTERED, BAD_NAME],
    )
    spec.op(
        "DELETE",
        eureka_one + "/status",
        "Remove the override (Eureka)",
        params=one,
        auth=True,
        tags=eureka,
        query={"value": STRING},
        responses=[(200, {"description": "removed"}), NOT_REGISTERED, BAD_NAME],
    )
    spec.op(
        "GET",
        "/eureka/instances/{id}",
        "One instance by id (Eureka)",
        params={"id": INSTANCE_ID},
        tags=eureka,
        responses=[*EUREKA_READ, NOT_REGISTERED],
    )
    # Every write may meet a service token scoped to another service.
    for operations in spec.doc["paths"].values():
        for operation in operations.values():
            if "security" in operation:
                operation["responses"].setdefault(str(SCOPE[0]), SCOPE[1])
    return spec
