"""The customers service: customers (id, name, email), in its own SQLite database.

| method and path | answer |
|---|---|
| ``GET /customers?limit=N&after=ID`` | ``{"customers": [...], "next_after": ID or null}``, by id |
| ``POST /customers`` | ``{name, email}``: 201 with the customer and ``Location`` |
| ``GET /customers/{id}`` | the customer; 404 when unknown |
| ``PATCH /customers/{id}`` | ``{name?, email?}``: 200 with the customer |
| ``DELETE /customers/{id}`` | 204 |

An email belongs to one customer (case-insensitive): 409 otherwise. Bad
input is 400 (not JSON, wrong types) or 422 (bad values), with every bad
field in ``errors``, and changes nothing.
"""

from __future__ import annotations

import re
import sqlite3
from typing import Any

from aiohttp import web

from core.errors import Conflict, NotFound
from core.http import json_response, read_json
from core.openapi.schemas import INTEGER, STRING, array_of, json, nullable, obj, problem
from core.openapi.spec import Spec
from core.service.scaffold import DB, Service, public_path
from core.validation import Fields, path_id, query_int

BODY_LIMIT = 64 * 1024
EMAIL_RE = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")

MIGRATIONS = (
    """
    CREATE TABLE customers (
        id    INTEGER PRIMARY KEY AUTOINCREMENT,
        name  TEXT NOT NULL,
        email TEXT NOT NULL
    );
    CREATE UNIQUE INDEX customers_email ON customers (email COLLATE NOCASE);
    """,
)

routes = web.RouteTableDef()

Row = tuple[int, str, str]


def _doc(row: Row) -> dict[str, Any]:
    return {"id": row[0], "name": row[1], "email": row[2]}


def _fields(body: Any, *, partial: bool) -> dict[str, str]:
    fields = Fields(body, {"name", "email"})
    values: dict[str, str] = {}
    if not partial or fields.has("name"):
        values["name"] = fields.text("name", max_length=200)
    if not partial or fields.has("email"):
        values["email"] = fields.text(
            "email", max_length=254, pattern=EMAIL_RE, describe="not an email address"
        )
    if partial and fields.ok and not values:
        fields.fail("body", "give at least one of name, email")
    fields.check()
    return values


def _conflict(email: str) -> Conflict:
    return Conflict(
        f"another customer has the email {email!r}",
        errors=[{"field": "email", "reason": "taken"}],
    )


@routes.get("/customers")
async def list_customers(request: web.Request) -> web.Response:
    limit = query_int(request, "limit", 100, 1, 1000)
    after = query_int(request, "after", 0, 0, 2**53)
    rows: list[Row] = await request.app[DB].run(
        lambda c: c.execute(
            "SELECT id, name, email FROM customers WHERE id > ? ORDER BY id LIMIT ?",
            (after, limit),
        ).fetchall()
    )
    return json_response(
        {
            "customers": [_doc(r) for r in rows],
            "next_after": rows[-1][0] if len(rows) == limit else None,
        }
    )


@routes.post("/customers")
async def create_customer(request: web.Request) -> web.Response:
    values = _fields(await read_json(request, BODY_LIMIT), partial=False)

    def insert(conn: sqlite3.Connection) -> Row:
        cur = conn.execute(
            "INSERT INTO customers (name, email) VALUES (?, ?)", (values["name"], values["email"])
        )
        assert cur.lastrowid is not None
        return (cur.lastrowid, values["name"], values["email"])

    try:
        row = await request.app[DB].transaction(insert)
    except sqlite3.IntegrityError:
        raise _conflict(values["email"]) from None
    return json_response(
        _doc(row),
        status=201,
        headers={"Location": public_path(request, f"/customers/{row[0]}")},
    )


async def _get(request: web.Request, customer_id: int) -> Row:
    row: Row | None = await request.app[DB].run(
        lambda c: c.execute(
            "SELECT id, name, email FROM customers WHERE id = ?", (customer_id,)
        ).fetchone()
    )
    if row is None:
        raise NotFound(f"no customer with id {customer_id}")
    return row


@routes.get("/customers/{id}")
async def get_customer(request: web.Request) -> web.Response:
    return json_response(_doc(await _get(request, path_id(request, "customer"))))


@routes.patch("/customers/{id}")
async def update_customer(request: web.Request) -> web.Response:
    customer_id = path_id(request, "customer")
    values = _fields(await read_json(request, BODY_LIMIT), partial=True)

    def update(conn: sqlite3.Connection) -> Row | None:
        sets = ", ".join(f"{name} = ?" for name in values)
        conn.execute(f"UPDATE customers SET {sets} WHERE id = ?", (*values.values(), customer_id))
        row: Row | None = conn.execute(
            "SELECT id, name, email FROM customers WHERE id = ?", (customer_id,)
        ).fetchone()
        return row

    try:
        row = await request.app[DB].transaction(update)
    except sqlite3.IntegrityError:
        raise _conflict(values.get("email", "")) from None
    if row is None:
        raise NotFound(f"no customer with id {customer_id}")
    return json_response(_doc(row))


@routes.delete("/customers/{id}")
async def delete_customer(request: web.Request) -> web.Response:
    customer_id = path_id(request, "customer")
    deleted = await request.app[DB].transaction(
        lambda c: c.execute("DELETE FROM customers WHERE id = ?", (customer_id,)).rowcount
    )
    if not deleted:
        raise NotFound(f"no customer with id {customer_id}")
    return web.Response(status=204)


CUSTOMER = obj(id=INTEGER, name=STRING, email=STRING)
NEW_CUSTOMER = obj(
    extra=False,
    name={"type": "string", "minLength": 1, "maxLength": 200},
    email={"type": "string", "maxLength": 254, "pattern": EMAIL_RE.pattern},
)
ID = {"id": {"type": "integer", "minimum": 1}}


def describe(spec: Spec) -> None:
    """The customers API in the service's OpenAPI document."""
    missing = problem(404, "no such customer")
    bad = problem(422, "invalid values (every bad field in errors)")
    taken = problem(409, "another customer has that email")
    page = {"limit": {"type": "integer", "minimum": 1, "maximum": 1000},
            "after": {"type": "integer", "minimum": 0}}  # fmt: skip
    spec.op("GET", "/customers", "Customers by id, a page at a time", query=page, auth=True,
            redis=False, responses=[(200, json(obj(customers=array_of(CUSTOMER),
                                                   next_after=nullable(INTEGER))))])  # fmt: skip
    spec.op("POST", "/customers", "Create a customer", body={"application/json": NEW_CUSTOMER},
            auth=True, redis=False,
            responses=[(201, json(CUSTOMER, "created", {"Location": "the customer"})), bad, taken,
                       problem(413, "the body is too large")])  # fmt: skip
    spec.op(
        "GET",
        "/customers/{id}",
        "One customer",
        params=ID,
        auth=True,
        redis=False,
        responses=[(200, json(CUSTOMER)), missing],
    )
    patch = {**NEW_CUSTOMER, "required": []}
    spec.op("PATCH", "/customers/{id}", "Change a customer's name or email", params=ID,
            body={"application/json": patch}, auth=True, redis=False,
            responses=[(200, json(CUSTOMER)), missing, bad, taken])  # fmt: skip
    spec.op(
        "DELETE",
        "/customers/{id}",
        "Delete a customer",
        params=ID,
        auth=True,
        redis=False,
        responses=[(204, {"description": "deleted"}), missing],
    )


SERVICE = Service(
    name="customers",
    description="Essaim demo service: customers (id, name, email).",
    routes=routes,
    migrations=MIGRATIONS,
    openapi=describe,
)
