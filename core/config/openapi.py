"""configsvc's OpenAPI document (``GET /openapi.json``): the native API and Spring Cloud Config's."""

from __future__ import annotations

from core.openapi.schemas import (
    ANY,
    BOOLEAN,
    INTEGER,
    STRING,
    Schema,
    array_of,
    events,
    json,
    nullable,
    obj,
    problem,
    text,
)
from core.openapi.spec import Spec

__all__ = ["build"]

JSON = "application/json"
TOML = "application/toml"
NAME: Schema = {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,62}$"}
DOCUMENT: Schema = {"type": "object"}
META = obj(
    required=("version",),
    version=INTEGER, hash=nullable(STRING), time=STRING, origin=STRING, deleted=BOOLEAN,
)  # fmt: skip
WRITE = obj(
    required=("name", "version", "changed", "rev"),
    name=STRING, version=INTEGER, hash=nullable(STRING), changed=BOOLEAN, rev=INTEGER,
)  # fmt: skip
BAD_NAME = problem(422, "an invalid name, or values that can't be used")
NOT_FOUND = problem(404, "no such document or version")
LOCKED = problem(401, "holds encrypted values: needs the token")
ETAG = {"ETag": "the version's entity tag"}


#: Conditional writes (core/config/conditional.py): 412 when they don't hold.
PRECONDITIONS = {"If-Match": STRING, "If-None-Match": STRING}
CHANGED = problem(412, "If-Match or If-None-Match did not hold: nothing written")


def build() -> Spec:
    """configsvc's document: every route it serves."""
    spec = Spec(
        "Essaim config service",
        "Every component's configuration, versioned, merged and pushed hot.",
        bearer=True,
    )
    native = ["native"]
    spec.op("GET", "/v1/config/{app}/{profile}", "The merged config of an app and profile",
            params={"app": NAME, "profile": NAME}, tags=native,
            headers={"If-None-Match": (STRING, "a version's ETag: 304 when still current")},
            responses=[(200, json(obj(required=("app", "profile", "version", "config"),
                                      app=STRING, profile=STRING, version=STRING,
                                      sources=array_of(ANY), config=DOCUMENT), headers=ETAG)),
                       (304, {"description": "not modified"}), LOCKED, BAD_NAME,
                       problem(500, "encrypted values that don't decrypt with the key")])  # fmt: skip
    spec.op(
        "GET",
        "/v1/documents",
        "Every current document with its version",
        tags=native,
        responses=[(200, json(obj(rev=INTEGER, documents=array_of(ANY))))],
    )
    one = "/v1/documents/{name}"
    spec.op("GET", one, "One document, as JSON or TOML", params={"name": NAME}, tags=native,
            query={"version": ({"type": "integer", "minimum": 1}, "a retained version"),
                   "decrypt": ({"type": "string", "enum": ["true", "false"]},
                               "serve {cipher} values decrypted (needs the token)"),
                   "format": ({"type": "string", "enum": ["json", "toml"]}, "else by Accept")},
            headers={"If-None-Match": STRING, "If-Modified-Since": STRING},
            responses=[(200, {"description": "the document (an ETag per representation, Vary: Accept)",
                              "headers": {"ETag": {"schema": STRING}},
                              "content": {JSON: {"schema": DOCUMENT}, TOML: {"schema": STRING}}}),
                       (304, {"description": "not modified"}), NOT_FOUND, LOCKED, BAD_NAME])  # fmt: skip
    spec.op("PUT", one, "Write a new version", params={"name": NAME}, auth=True, tags=native,
            body={JSON: DOCUMENT, TOML: STRING}, headers=PRECONDITIONS,
            responses=[(201, json(WRITE, "created")), (200, json(WRITE, "written")),
                       BAD_NAME, problem(413, "the document is too large"),
                       problem(415, "neither JSON nor TOML"), CHANGED])  # fmt: skip
    spec.op(
        "DELETE",
        one,
        "Delete it (a version in its history)",
        params={"name": NAME},
        auth=True,
        tags=native,
        headers=PRECONDITIONS,
        responses=[(200, json(WRITE)), NOT_FOUND, BAD_NAME, CHANGED],
    )
    spec.op("GET", one + "/history", "Its retained versions, newest first",
            params={"name": NAME}, tags=native,
            responses=[(200, json(obj(name=STRING, versions=array_of(META)))), NOT_FOUND,
                       BAD_NAME])  # fmt: skip
    spec.op(
        "POST",
        one + "/rollback",
        "Make a retained version current again",
        params={"name": NAME},
        auth=True,
        tags=native,
        query={"version": {"type": "integer", "minimum": 1}},
        required_query=["version"],
        responses=[(200, json(WRITE)), NOT_FOUND, BAD_NAME],
    )
    spec.op(
        "POST",
        "/v1/reload",
        "Import the config directory again",
        auth=True,
        tags=native,
        responses=[(200, json(ANY)), problem(422, "broken files: nothing changed")],
    )
    spec.op("POST", "/v1/encrypt", "The {cipher} value of a plaintext", auth=True, tags=native,
            body={"text/plain": STRING, JSON: STRING},
            responses=[(200, {"description": "the value",
                              "content": {"text/plain": {"schema": STRING},
                                          JSON: {"schema": STRING}}}),
                       problem(413, "the plaintext is too large"),
                       problem(415, "neither text/plain nor a JSON string"),
                       problem(422, "an empty plaintext, or JSON that is not a string"),
                       problem(503, "no encryption key is configured")])  # fmt: skip
    spec.op(
        "GET",
        "/v1/events",
        "Changes as Server-Sent Events",
        tags=native,
        query={"since": ({"type": "integer", "minimum": 0}, "the last revision seen")},
        headers={"Last-Event-ID": (STRING, "the last revision seen; wins over since")},
        responses=[(200, events("change", "resync"))],
    )
    status = obj(required=("status",), status=STRING)
    spec.operations("Liveness, Redis and the last import", status, (status, "not ready"))

    spring = ["spring"]
    environment = obj(required=("name", "profiles", "propertySources"), name=STRING,
                      profiles=array_of(STRING), label=nullable(STRING),
                      version=nullable(STRING), propertySources=array_of(ANY))  # fmt: skip
    spring_read = [(200, json(environment, "Spring's Environment")), LOCKED, BAD_NAME,
                   problem(404, "no such label")]  # fmt: skip
    spec.op(
        "GET",
        "/{application}/{profile}",
        "Spring Cloud Config: the Environment",
        tags=spring,
        responses=spring_read,
    )
    spec.op(
        "GET",
        "/{application}/{profile}/{label}",
        "Spring Cloud Config, with a label",
        tags=spring,
        responses=spring_read,
    )
    file_read = [(200, {"description": "YAML, properties or JSON",
                        "content": {"text/plain": {"schema": STRING}, JSON: {"schema": ANY}}}),
                 LOCKED, BAD_NAME, problem(404, "not /{application}-{profile}.{yml,properties,json}")]  # fmt: skip
    file = {"file": {"type": "string", "pattern": r"^[^/]+\.(yml|yaml|properties|json)$"}}
    spec.op(
        "GET",
        "/{file}",
        "Spring Cloud Config: /{application}-{profile}.yml|properties|json",
        params=file,
        tags=spring,
        responses=file_read,
    )
    spec.op(
        "GET",
        "/{label}/{file}",
        "The same, with a label",
        params=file,
        tags=spring,
        responses=file_read,
    )
    crypt = [(200, text("text/plain")), problem(503, "no encryption key is configured")]
    spec.op(
        "POST",
        "/encrypt",
        "Spring Cloud Config: encrypt a text/plain body",
        auth=True,
        tags=spring,
        body={"text/plain": STRING},
        responses=crypt,
    )
    spec.op(
        "POST",
        "/decrypt",
        "Spring Cloud Config: decrypt a text/plain body",
        auth=True,
        tags=spring,
        body={"text/plain": STRING},
        responses=crypt,
    )
    return spec
