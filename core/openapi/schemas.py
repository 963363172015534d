"""JSON Schema pieces (OpenAPI 3.1 is JSON Schema 2020-12) for describing Essaim's APIs.

Small functions that build plain dicts, so a component's document reads as
its API does: ``json(obj(id=INTEGER, name=STRING))``, ``problem(404, "no
such customer")``. Every error Essaim answers is RFC 9457 problem details
(:data:`PROBLEM`), served as ``application/problem+json``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "ANY",
    "BOOLEAN",
    "INTEGER",
    "NUMBER",
    "PROBLEM",
    "STRING",
    "Schema",
    "array_of",
    "events",
    "json",
    "nullable",
    "obj",
    "problem",
    "props",
    "text",
]

Schema = dict[str, Any]

STRING: Schema = {"type": "string"}
INTEGER: Schema = {"type": "integer"}
NUMBER: Schema = {"type": "number"}
BOOLEAN: Schema = {"type": "boolean"}
ANY: Schema = {}

#: RFC 9457 problem details, as every Essaim component writes them.
PROBLEM: Schema = {
    "type": "object",
    "required": ["type", "title", "status"],
    "properties": {
        "type": STRING,
        "title": STRING,
        "status": INTEGER,
        "detail": STRING,
        "instance": STRING,
        "errors": {"type": "array", "items": {"type": "object"}},
    },
}


def obj(
    required: tuple[str, ...] | None = None, extra: bool = True, **properties: Schema
) -> Schema:
    """An object with ``properties``; all of them required unless ``required`` says which.

    ``extra``: whether other properties may appear (answers may grow; a
    request body that admits no unknown keys says ``extra=False``).
    """
    return props(properties, required, extra)


def props(
    properties: Mapping[str, Schema], required: Iterable[str] | None = None, extra: bool = True
) -> Schema:
    """:func:`obj` from a mapping of properties (for properties shared by several objects)."""
    schema: Schema = {"type": "object", "properties": dict(properties)}
    schema["required"] = list(properties if required is None else required)
    if not extra:
        schema["additionalProperties"] = False
    return schema


def array_of(items: Schema) -> Schema:
    return {"type": "array", "items": items}


def nullable(schema: Schema) -> Schema:
    """``schema`` or JSON ``null``."""
    return {"anyOf": [schema, {"type": "null"}]}


def json(schema: Schema, description: str = "OK", headers: dict[str, str] | None = None) -> Schema:
    """A response whose body is JSON matching ``schema``."""
    response: Schema = {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }
    if headers:
        response["headers"] = {
            name: {"description": text, "schema": STRING} for name, text in headers.items()
        }
    return response


def text(media_type: str, description: str = "OK") -> Schema:
    """A response whose body is text of ``media_type`` (TOML, YAML, XML, SSE, Prometheus)."""
    return {"description": description, "content": {media_type: {"schema": STRING}}}


def events(*names: str, description: str = "a stream of Server-Sent Events") -> Schema:
    """A ``text/event-stream`` response; each event (``id``, ``event``, ``data``) as an object."""
    event = {
        "type": "object",
        "properties": {
            "id": STRING,
            "event": {"type": "string", "enum": list(names)},
            "data": STRING,
            "retry": {"type": ["integer", "string"]},
        },
    }
    return {"description": description, "content": {"text/event-stream": {"schema": event}}}


def problem(status: int, description: str) -> tuple[int, Schema]:
    """``(status, response)`` for an error answered as problem details."""
    return status, {
        "description": description,
        "content": {"application/problem+json": {"schema": PROBLEM}},
    }
