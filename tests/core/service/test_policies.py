"""The check that the gateway and a service agree on each route's policy (core/service/policies.py)."""

from __future__ import annotations

from aiohttp import web

from core.routes.table import RouteTable
from core.service.policies import compare, sample_path
from core.service.scaffold import Service


async def _handler(request: web.Request) -> web.Response:
    return web.Response()


def _notes(**access: str) -> Service:
    routes = web.RouteTableDef()
    routes.get("/notes")(_handler)
    routes.get("/notes/{id}")(_handler)
    routes.delete("/notes/{id:\\d+}")(_handler)
    return Service("notes", "Notes.", routes, access=access)


def _table(*routes: dict[str, object]) -> RouteTable:
    return RouteTable.parse({"routes": list(routes)})


def test_sample_paths_fill_every_parameter() -> None:
    assert sample_path("/notes/{id}/tags/{tag:[a-z]+}") == "/notes/1/tags/1"


def test_routes_that_agree_through_static_and_discovery_routes() -> None:
    service = _notes(**{"GET /notes": "public", "DELETE /notes/{id:\\d+}": "roles:admin"})
    table = _table(
        {"id": "notes-read", "path": "/notes/notes", "methods": ["GET"], "service": "notes",
         "strip_prefix": 1, "auth": "public"},
        {"id": "notes-delete", "path": "/notes/notes/{id}", "methods": ["DELETE"],
         "service": "notes", "strip_prefix": 1, "auth": "roles:admin"},
    )  # fmt: skip
    found = {(f.method, f.path): f for f in compare(table, [service], "authenticated")}
    assert all(f.ok for f in found.values())
    assert found[("GET", "/notes")].gateway_route == "notes-read"
    assert found[("GET", "/notes/{id}")].gateway_route == "discovery"
    assert found[("GET", "/notes/{id}")].gateway_policy == "authenticated"
    assert found[("DELETE", "/notes/{id:\\d+}")].gateway_route == "notes-delete"


def test_a_weaker_gateway_policy_is_reported() -> None:
    # The service wants admins for deletes; the gateway lets any user through.
    service = _notes(**{"DELETE /notes/{id:\\d+}": "roles:admin"})
    bad = [f for f in compare(_table(), [service], "authenticated") if not f.ok]
    assert [(f.method, f.problem) for f in bad] == [
        ("DELETE", "the service says roles:admin, the gateway says authenticated")
    ]


def test_a_route_sent_elsewhere_is_reported() -> None:
    service = _notes()
    table = _table(
        {"id": "moved", "path": "/notes/notes/**", "methods": ["GET"], "service": "archive",
         "auth": "authenticated"},
    )  # fmt: skip
    bad = {f.path: f.problem for f in compare(table, [service], "authenticated") if not f.ok}
    assert bad == {
        "/notes": "the gateway sends GET /notes/notes to archive /notes/notes, not to notes /notes",
        "/notes/{id}": "the gateway sends GET /notes/notes/1 to archive /notes/notes/1, "
        "not to notes /notes/{id}",
    }
