"""The console's API in its OpenAPI document (``GET /openapi.json``)."""

from __future__ import annotations

from core.openapi.schemas import (
    ANY,
    BOOLEAN,
    INTEGER,
    NUMBER,
    STRING,
    Schema,
    array_of,
    events,
    json,
    nullable,
    obj,
    problem,
    props,
    text,
)
from core.openapi.spec import Spec

__all__ = ["describe"]

VERSION: Schema = {"type": "integer", "minimum": 1}
NAME: Schema = {"type": "string", "pattern": r"^[a-z0-9][a-z0-9-]{0,62}$"}
IDS = obj(ids={"type": "array", "minItems": 1, "maxItems": 1000,
               "items": {"type": "string", "pattern": r"^\d+-\d+$"}})  # fmt: skip
SECTIONS = ("services", "gateway", "config", "events", "audit")
ADMIN_ONLY = problem(403, "the token lacks the admin role, or the console verifies no tokens")
UNREACHABLE = problem(502, "the part of the system asked did not answer, or refused the console")
BAD_VALUES = problem(422, "invalid values (every bad field in errors)")


def describe(spec: Spec) -> None:
    page = ["page"]
    spec.op("GET", "/", "The console's page (HTML)", tags=page, redis=False,
            responses=[(200, text("text/html"))])  # fmt: skip
    spec.op("GET", "/assets/{name}", "The page's stylesheet, script and icon", tags=page,
            redis=False, responses=[(200, text("text/css", "text/css, text/javascript or "
                                               "image/svg+xml")),
                                    problem(404, "no such asset")])  # fmt: skip
    api = ["console"]
    spec.op("GET", "/api/me", "Who the relayed token names, and whether they may act", tags=api,
            auth=True, redis=False,
            responses=[(200, json(obj(required=("user", "roles", "admin", "actions"),
                                      user=nullable(STRING), roles=array_of(STRING),
                                      admin=BOOLEAN, actions=BOOLEAN, verified=BOOLEAN)))])  # fmt: skip
    spec.op("GET", "/api/state", "Every section of the console now", tags=api, auth=True,
            redis=False,
            responses=[(200, json(props({"now": NUMBER, **dict.fromkeys(SECTIONS, ANY)})))])  # fmt: skip
    spec.op("GET", "/api/stream", "Each section as it changes (Server-Sent Events)", tags=api,
            auth=True, redis=False,
            description="`hello` first, then every section once, then each section when it "
            "changes; each event's data is `{\"now\": seconds, \"doc\": section}`. The stream "
            "ends when the relayed token expires (the browser reconnects).",
            responses=[(200, events("hello", *SECTIONS))])  # fmt: skip
    config = ["config"]
    spec.op("GET", "/api/config/{name}/versions/{version}", "One version of a document, as TOML",
            tags=config, auth=True, redis=False, params={"name": NAME, "version": VERSION},
            responses=[(200, json(obj(name=STRING, version=INTEGER, toml=STRING))),
                       problem(404, "no such document or version"), UNREACHABLE])  # fmt: skip
    spec.op("GET", "/api/config/{name}/diff", "A unified diff between two versions of a document",
            tags=config, auth=True, redis=False, params={"name": NAME},
            query={"from": VERSION, "to": VERSION}, required_query=("from", "to"),
            responses=[(200, json(props({"name": STRING, "from": INTEGER, "to": INTEGER,
                                        "diff": array_of(STRING)}))),
                       problem(404, "no such document or version"), UNREACHABLE])  # fmt: skip
    spec.op("POST", "/api/config/{name}/rollback", "Make a version current again (admin)",
            tags=config, auth=True, redis=False, params={"name": NAME},
            body={"application/json": obj(version=VERSION)},
            description="configsvc writes the version's content as a new version; audited.",
            responses=[(200, json(obj(required=("name", "version"), name=STRING,
                                      version=INTEGER, rolled_back_to=INTEGER))),
                       ADMIN_ONLY, problem(404, "no such document or version"), BAD_VALUES,
                       UNREACHABLE])  # fmt: skip
    spec.op("POST", "/api/services/{service}/instances/{id}/status",
            "Take an instance out of service, or put it back (admin)", tags=["services"],
            auth=True, redis=False,
            body={"application/json": obj(status={"type": "string",
                                                  "enum": ["OUT_OF_SERVICE", "UP"]})},
            description="OUT_OF_SERVICE: the gateway and the services' calls stop sending it "
            "requests (a drain); UP: it takes them again. Audited.",
            responses=[(200, json(obj(instance=ANY))), ADMIN_ONLY,
                       problem(404, "no such instance"), BAD_VALUES, UNREACHABLE])  # fmt: skip
    dead = ["events"]
    for action, summary in (("replay", "Deliver dead letters to their group again (admin)"),
                            ("discard", "Delete dead letters for good (admin)")):  # fmt: skip
        spec.op("POST", f"/api/events/{{group}}/dead/{action}", summary, tags=dead, auth=True,
                redis=False, body={"application/json": IDS},
                description="Asked of the service that owns the group, with the user's token; "
                "audited.",
                responses=[(200, json(props({f"{action}ed": INTEGER}))), ADMIN_ONLY,
                           problem(404, "no such group"), BAD_VALUES,
                           problem(503, "no instance of the owning service is up"),
                           UNREACHABLE])  # fmt: skip
