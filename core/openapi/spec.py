"""An OpenAPI 3.1 document built one operation at a time, served at ``GET /openapi.json``.

    spec = Spec("registry", "Essaim's discovery service.", bearer=True)
    spec.op("GET", "/v1/services/{service}", "The instances of a service",
            query={"all": (STRING, "1: every status, not only UP")},
            responses=[(200, json(INSTANCES)), problem(404, "no such service")])

Path parameters are found in the path (``{name}``, typed as strings unless
``params`` says otherwise); every operation also gets the problem-details
answers every endpoint may give (400 for a malformed request where it takes
input, 503 when Redis is away where ``redis`` says so, 500). ``HEAD`` follows
its ``GET`` and is not listed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from aiohttp import web

from core.openapi.schemas import ANY, STRING, Schema, array_of, json, obj, problem, text

__all__ = ["Spec", "drift"]

_PARAM = re.compile(r"\{([^}:]+)(?::[^}]*)?\}")
Param = Schema | tuple[Schema, str]


def _template(path: str) -> str:
    """An aiohttp path (``/notes/{id:\\d+}``) as an OpenAPI path template (``/notes/{id}``)."""
    return _PARAM.sub(lambda m: "{" + m.group(1) + "}", path)


def _param(name: str, where: str, spec: Param, required: bool) -> dict[str, Any]:
    schema, description = spec if isinstance(spec, tuple) else (spec, "")
    out: dict[str, Any] = {"name": name, "in": where, "required": required, "schema": schema}
    if description:
        out["description"] = description
    return out


class Spec:
    """One component's API: its operations, and the document made of them."""

    def __init__(
        self, title: str, description: str, *, version: str = "1", bearer: bool = False
    ) -> None:
        self.doc: dict[str, Any] = {
            "openapi": "3.1.0",
            "info": {"title": title, "version": version, "description": description},
            "paths": {},
        }
        if bearer:
            self.doc["components"] = {
                "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}
            }
        self._body: bytes | None = None

    def op(
        self,
        method: str,
        path: str,
        summary: str,
        *,
        responses: Iterable[tuple[int, Schema]],
        params: Mapping[str, Param] | None = None,
        query: Mapping[str, Param] | None = None,
        required_query: Iterable[str] = (),
        headers: Mapping[str, Param] | None = None,
        body: Mapping[str, Schema] | None = None,
        body_required: bool = True,
        auth: bool = False,
        redis: bool = True,
        description: str = "",
        tags: Iterable[str] = (),
    ) -> None:
        """Describe ``method path``.

        ``body`` maps media types to schemas (``{"application/json": ...}``);
        ``auth``: the operation needs the component's bearer token when one
        is set; ``redis``: it answers 503 while Redis is away.
        """
        template = _template(path)
        parameters = [
            _param(name, "path", (params or {}).get(name, {"type": "string"}), True)
            for name in _PARAM.findall(path)
        ]
        wanted = set(required_query)
        parameters += [
            _param(name, "query", spec, name in wanted) for name, spec in (query or {}).items()
        ]
        parameters += [
            _param(name, "header", spec, False) for name, spec in (headers or {}).items()
        ]
        answers: dict[str, Any] = {str(status): response for status, response in responses}
        defaults = [problem(500, "an unexpected error (no internals are shown)")]
        if parameters or body:
            defaults.append(problem(400, "a malformed request"))
        if redis:
            defaults.append(problem(503, "Redis is away: retry later"))
        if auth:
            defaults.append(problem(401, "no token, or not the right one"))
        for status, response in defaults:
            answers.setdefault(str(status), response)
        operation: dict[str, Any] = {"summary": summary, "responses": answers}
        operation["operationId"] = _operation_id(method, template)
        if description:
            operation["description"] = description
        if tags:
            operation["tags"] = list(tags)
        if parameters:
            operation["parameters"] = parameters
        if body:
            operation["requestBody"] = {
                "required": body_required,
                "content": {media: {"schema": schema} for media, schema in body.items()},
            }
        if auth:
            operation["security"] = [{"bearer": []}]
        self.doc["paths"].setdefault(template, {})[method.lower()] = operation
        self._body = None

    def health_operations(self) -> None:
        """Describe ``GET /health/live`` and ``GET /health/ready`` (``core.http.add_health_routes``)."""
        self.op("GET", "/health/live", "Liveness: 200 while the process answers",
                tags=["operations"], redis=False,
                responses=[(200, json(obj(status=STRING)))])  # fmt: skip
        check = obj(status=STRING, detail={})
        ready = obj(required=("status", "checks"), status=STRING, failing=array_of(STRING),
                    checks={"type": "object", "additionalProperties": check})  # fmt: skip
        self.op("GET", "/health/ready", "Readiness: whether it can do its job now",
                tags=["operations"], redis=False,
                responses=[(200, json(ready)), (503, json(ready, "not ready: see failing"))])  # fmt: skip

    def operations(
        self,
        health: str,
        healthy: Schema,
        unhealthy: tuple[Schema, str],
        *,
        metrics: str = "Prometheus metrics",
    ) -> None:
        """What every component serves besides its API: ``/health`` (with the
        ``health`` summary, ``healthy`` for 200 and ``unhealthy`` (schema,
        description) for 503), ``/health/live``, ``/health/ready``,
        ``/metrics`` and this document."""
        self.health_operations()
        ops = ["operations"]
        self.op("GET", "/health", health, tags=ops, redis=False,
                responses=[(200, json(healthy)), (503, json(*unhealthy))])  # fmt: skip
        self.op("GET", "/metrics", metrics, tags=ops, redis=False,
                responses=[(200, text("text/plain"))])  # fmt: skip
        self.op("GET", "/openapi.json", "This document", tags=ops, redis=False,
                responses=[(200, json(ANY))])  # fmt: skip

    def document(self) -> dict[str, Any]:
        return self.doc

    async def handle(self, request: web.Request) -> web.Response:
        """``GET /openapi.json``."""
        if self._body is None:
            self._body = orjson.dumps(self.doc)
        return web.Response(body=self._body, content_type="application/json")


def _operation_id(method: str, template: str) -> str:
    words = re.sub(r"[^A-Za-z0-9]+", "_", template).strip("_")
    slash = "_slash" if template.endswith("/") and template != "/" else ""
    return f"{method.lower()}_{words or 'root'}{slash}"


def drift(app: web.Application, doc: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """``(routes not in doc, operations of doc with no route)``, as ``"METHOD /path"``.

    ``HEAD`` routes that follow a ``GET`` are not counted.
    """
    routes = set()
    for route in app.router.routes():
        if route.method in ("HEAD", "*") or route.resource is None:
            continue
        routes.add(f"{route.method} {_template(route.resource.canonical)}")
    documented = {
        f"{method.upper()} {path}"
        for path, operations in doc.get("paths", {}).items()
        for method in operations
    }
    return sorted(routes - documented), sorted(documented - routes)
