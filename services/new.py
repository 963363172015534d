"""``python -m services new NAME``: the skeleton of a new service, ready to run and test.

Writes, under the repository root (``--root``, default the current
directory), and refuses to overwrite anything:

- ``services/NAME/__init__.py``, ``__main__.py`` and ``service.py``: a
  service on :mod:`core.service.scaffold` with its own table, four routes
  (list, create, read, delete; delete needs the ``admin`` role), body
  validation, and one setting applied live from configsvc;
- ``config/NAME.toml``: that setting's value, for configsvc;
- ``tests/services/test_NAME.py``: tests of its API over real HTTP, of its
  database, and that its OpenAPI document lists exactly its routes.

Then it prints what is left to do by hand (docs/services.md, "Checklist").
``NAME`` is a service name as the registry takes it: lower-case letters,
digits and ``-``, starting with a letter.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

__all__ = ["main", "render"]

NAME_RE = re.compile(r"[a-z][a-z0-9-]{0,62}\Z")

SERVICE_PY = '''"""The {name} service: items (id, text), in its own SQLite database.

| method and path | who | answer |
|---|---|---|
| ``GET /items?limit=N&after=ID`` | any user | ``{{"items": [...], "next_after": ID or null}}`` |
| ``POST /items`` | any user | ``{{text}}``: 201 with the item and ``Location`` |
| ``GET /items/{{id}}`` | any user | the item; 404 when unknown |
| ``DELETE /items/{{id}}`` | ``admin`` | 204 |

``[{section}] max_text`` in configsvc bounds an item's text, applied live.
Bad input is 400 or 422 with every bad field in ``errors``, and changes
nothing.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from typing import Any

from aiohttp import web

from core.errors import NotFound
from core.http import json_response, read_json
from core.openapi.schemas import INTEGER, STRING, array_of, json, nullable, obj, problem
from core.openapi.spec import Spec
from core.service.scaffold import DB, DYNAMIC, Service, public_path
from core.validation import Fields, path_id, query_int

BODY_LIMIT = 64 * 1024

MIGRATIONS = (
    """
    CREATE TABLE items (
        id   INTEGER PRIMARY KEY AUTOINCREMENT,
        text TEXT NOT NULL
    );
    """,
)


@dataclasses.dataclass(frozen=True)
class {pascal}Config:
    """The ``[{section}]`` table of the service's config (applied live)."""

    max_text: int = 500

    def __post_init__(self) -> None:
        if not 1 <= self.max_text <= 10_000:
            raise ValueError(f"max_text: expected 1-10000, got {{self.max_text}}")


routes = web.RouteTableDef()

Row = tuple[int, str]


def _doc(row: Row) -> dict[str, Any]:
    return {{"id": row[0], "text": row[1]}}


@routes.get("/items")
async def list_items(request: web.Request) -> web.Response:
    limit = query_int(request, "limit", 100, 1, 1000)
    after = query_int(request, "after", 0, 0, 2**53)
    rows: list[Row] = await request.app[DB].run(
        lambda c: c.execute(
            "SELECT id, text FROM items WHERE id > ? ORDER BY id LIMIT ?", (after, limit)
        ).fetchall()
    )
    return json_response(
        {{
            "items": [_doc(r) for r in rows],
            "next_after": rows[-1][0] if len(rows) == limit else None,
        }}
    )


@routes.post("/items")
async def create_item(request: web.Request) -> web.Response:
    config: {pascal}Config = request.app[DYNAMIC].current
    fields = Fields(await read_json(request, BODY_LIMIT), {{"text"}})
    text = fields.text("text", max_length=config.max_text)
    fields.check()

    def insert(conn: sqlite3.Connection) -> Row:
        cur = conn.execute("INSERT INTO items (text) VALUES (?)", (text,))
        assert cur.lastrowid is not None
        return (cur.lastrowid, text)

    row = await request.app[DB].transaction(insert)
    location = public_path(request, f"/items/{{row[0]}}")
    return json_response(_doc(row), status=201, headers={{"Location": location}})


@routes.get("/items/{{id}}")
async def get_item(request: web.Request) -> web.Response:
    item_id = path_id(request, "item")
    row: Row | None = await request.app[DB].run(
        lambda c: c.execute("SELECT id, text FROM items WHERE id = ?", (item_id,)).fetchone()
    )
    if row is None:
        raise NotFound(f"no item with id {{item_id}}")
    return json_response(_doc(row))


@routes.delete("/items/{{id}}")
async def delete_item(request: web.Request) -> web.Response:
    item_id = path_id(request, "item")
    deleted = await request.app[DB].transaction(
        lambda c: c.execute("DELETE FROM items WHERE id = ?", (item_id,)).rowcount
    )
    if not deleted:
        raise NotFound(f"no item with id {{item_id}}")
    return web.Response(status=204)


ITEM = obj(id=INTEGER, text=STRING)
ID = {{"id": {{"type": "integer", "minimum": 1}}}}


def describe(spec: Spec) -> None:
    """Its routes in its OpenAPI document (``GET /openapi.json``)."""
    missing = problem(404, "no such item")
    page = {{"limit": {{"type": "integer", "minimum": 1, "maximum": 1000}},
            "after": {{"type": "integer", "minimum": 0}}}}  # fmt: skip
    spec.op("GET", "/items", "Items by id, a page at a time", query=page, auth=True,
            redis=False, responses=[(200, json(obj(items=array_of(ITEM), next_after=nullable(INTEGER))))])  # fmt: skip
    spec.op("POST", "/items", "Create an item", auth=True, redis=False,
            body={{"application/json": obj(extra=False, text={{"type": "string", "minLength": 1}})}},
            responses=[(201, json(ITEM, "created", {{"Location": "the item"}})),
                       problem(422, "invalid values"), problem(413, "the body is too large")])  # fmt: skip
    spec.op("GET", "/items/{{id}}", "One item", params=ID, auth=True, redis=False,
            responses=[(200, json(ITEM)), missing])
    spec.op("DELETE", "/items/{{id}}", "Delete an item (admin)", params=ID, auth=True,
            redis=False, responses=[(204, {{"description": "deleted"}}), missing])


SERVICE = Service(
    name="{name}",
    description="The {name} service: items (id, text).",
    routes=routes,
    migrations=MIGRATIONS,
    config={pascal}Config,
    access={{"DELETE /items/{{id}}": "roles:admin"}},
    openapi=describe,
)
'''

MAIN_PY = '''"""``python -m services.{package}``: see :mod:`services.{package}.service`."""

from __future__ import annotations

import sys

from core.service.scaffold import run_service
from services.{package}.service import SERVICE

if __name__ == "__main__":
    sys.exit(run_service(SERVICE))
'''

INIT_PY = '''"""The {name} service (``python -m services.{package}``): :mod:`services.{package}.service`."""
'''

CONFIG_TOML = """# The {name} service (python -m services.{package}); applied live.

[{section}]
max_text = 500
"""

TEST_PY = '''"""The {name} service: its API over real HTTP, its own database, bad input, live config."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.openapi.spec import drift
from services.{package}.service import SERVICE
from tests.services.conftest import Client, MakeClient, rows


@pytest.fixture
async def client(make_service: MakeClient) -> Client:
    return await make_service(SERVICE)


async def test_create_list_read_and_delete_an_item(client: Client, tmp_path: Path) -> None:
    created = await client.post("/items", json={{"text": "first"}})
    assert created.status == 201
    assert await created.json() == {{"id": 1, "text": "first"}}
    assert created.headers["Location"] == "/items/1"
    await client.post("/items", json={{"text": "second"}})

    listed = await (await client.get("/items", params={{"limit": "1"}})).json()
    assert listed == {{"items": [{{"id": 1, "text": "first"}}], "next_after": 1}}
    assert await (await client.get("/items/2")).json() == {{"id": 2, "text": "second"}}

    assert (await client.delete("/items/1")).status == 204
    assert (await client.get("/items/1")).status == 404
    db = tmp_path / "{name}" / "{name}.db"
    assert rows(db, "SELECT id, text FROM items") == [(2, "second")]


@pytest.mark.parametrize(
    ("body", "status"),
    [(b"{{not json", 400), ({{"text": ""}}, 422), ({{"text": "x" * 501}}, 422), ({{"other": 1}}, 422)],
)
async def test_bad_input_is_a_problem_and_changes_nothing(
    client: Client, tmp_path: Path, body: object, status: int
) -> None:
    if isinstance(body, bytes):
        answer = await client.post(
            "/items", data=body, headers={{"Content-Type": "application/json"}}
        )
    else:
        answer = await client.post("/items", json=body)
    assert answer.status == status
    assert answer.headers["Content-Type"].startswith("application/problem+json")
    assert rows(tmp_path / "{name}" / "{name}.db", "SELECT count(*) FROM items") == [(0,)]


def test_the_admin_role_guards_deletes() -> None:
    assert SERVICE.access == {{"DELETE /items/{{id}}": "roles:admin"}}


async def test_its_openapi_document_lists_exactly_its_routes(client: Client) -> None:
    doc = await (await client.get("/openapi.json")).json()
    assert drift(client.app, doc) == ([], [])
'''


def render(name: str) -> dict[str, str]:
    """The files of service ``name``, by path relative to the repository root."""
    if not NAME_RE.match(name):
        raise ValueError(
            f"{name!r}: a service name is lower-case letters, digits and '-', starting with a letter"
        )
    package = name.replace("-", "_")
    values = {
        "name": name,
        "package": package,
        "section": name,
        "pascal": "".join(part.capitalize() for part in package.split("_")),
    }
    return {
        f"services/{package}/__init__.py": INIT_PY.format(**values),
        f"services/{package}/__main__.py": MAIN_PY.format(**values),
        f"services/{package}/service.py": SERVICE_PY.format(**values),
        f"config/{name}.toml": CONFIG_TOML.format(**values),
        f"tests/services/test_{package}.py": TEST_PY.format(**values),
    }


CHECKLIST = """\
Created the {name} service. What is left (docs/services.md, "Checklist"):
  1. make the launcher start it: in services/launcher.py, beside the others,
       Spec("{name}", 3, "services.{package}", args=SERVICE_ARGS, env=SERVICE_ENV),
  2. say at the gateway who may use it: DELETE /{name}/items/{{id}} needs the admin
     role (config/gateway.toml, a route like "products-write"); then check that the
     gateway and the service agree: python -m services policies
  3. run its tests: .venv/bin/python -m pytest tests/services/test_{package}.py
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services new",
        description="Write the skeleton of a new service: module, entry point, config, tests.",
    )
    parser.add_argument("name", help="the service's name: lower-case letters, digits and '-'")
    parser.add_argument("--root", default=".", help="the repository's root (default: .)")
    args = parser.parse_args(argv)
    root = Path(args.root)
    try:
        files = render(args.name)
    except ValueError as exc:
        print(f"services new: {exc}", file=sys.stderr)
        return 2
    if not (root / "services" / "__init__.py").is_file():
        print(f"services new: {root.resolve()} is not the repository's root", file=sys.stderr)
        return 2
    taken = [path for path in files if (root / path).exists()]
    if taken:
        print(f"services new: already there, nothing written: {', '.join(taken)}", file=sys.stderr)
        return 1
    for path, text in files.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        print(f"  wrote {path}")
    # Long names can push a line past the project's width: let ruff lay it out.
    ruff = Path(sys.executable).parent / "ruff"
    if ruff.exists():
        paths = [str(root / p) for p in files if p.endswith(".py")]
        subprocess.run([str(ruff), "format", "--quiet", "--no-cache", *paths], check=False)
    package = args.name.replace("-", "_")
    print(CHECKLIST.format(name=args.name, package=package))
    return 0


if __name__ == "__main__":
    sys.exit(main())
