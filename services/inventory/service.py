"""The inventory service: products (id, name, price, quantity) and their stock.

| method and path | answer |
|---|---|
| ``GET /products?limit=N&after=ID`` | ``{"products": [...], "next_after": ID or null}``, by id |
| ``POST /products`` | ``{name, price, quantity}``: 201 with the product and ``Location`` |
| ``GET /products/{id}`` | the product; 404 when unknown |
| ``PATCH /products/{id}`` | ``{name?, price?, quantity?}``: 200 with the product |
| ``DELETE /products/{id}`` | 204 |

A product is ``{id, name, price, quantity, low_stock}``: ``price`` a number
with at most two decimals (kept in cents), ``quantity`` the units in stock
(never negative), ``low_stock`` whether it is under the low-stock threshold in
force. The threshold is ``[inventory] low_stock_threshold`` in configsvc and
applies as soon as it changes there.

Events: inventory is a participant in billing's bill saga (consumer group
``inventory``), and answers through its outbox in the transaction that acts:

- ``bill.created``: reserve every line of the bill or none, in one
  transaction. Every line served: the quantities leave the stock and it
  answers ``stock.reserved``; else nothing is taken and it answers
  ``stock.rejected`` with ``reason: {code: "out_of_stock", detail, lines}``,
  each line that can't be served with its ``reason``. A shortage is an
  answer, never a failure: no retries, no dead letter.
- ``bill.cancelled``: release what the bill holds (the quantities go back
  into stock) and answer ``stock.released``.

Both are idempotent by bill (table ``reservations``): a bill asked again
gets the answer it got the first time; a cancellation that comes before the
bill's ``bill.created`` leaves the bill ``released``, so the reservation
never happens. Only a malformed event fails (and ends as a dead letter,
``GET /events/dead``). When a product's stock falls under the threshold (by
a reservation or a ``PATCH``) it emits ``stock.low`` through its outbox, in
the same transaction.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from core.errors import NotFound
from core.events.bus import Event
from core.events.outbox import add_to_outbox
from core.http import json_response, read_json
from core.service.scaffold import DB, DYNAMIC, Service, public_path
from core.validation import Fields, cents_to_number, path_id, query_int
from services.inventory.openapi import describe

BODY_LIMIT = 64 * 1024
MAX_QUANTITY = 10**9


@dataclasses.dataclass(frozen=True)
class InventoryConfig:
    """The ``[inventory]`` table of the service's config (applied live)."""

    low_stock_threshold: int = 5

    def __post_init__(self) -> None:
        if not 0 <= self.low_stock_threshold <= MAX_QUANTITY:
            raise ValueError(f"low_stock_threshold: expected 0-{MAX_QUANTITY}")


MIGRATIONS = (
    """
    CREATE TABLE products (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        name        TEXT NOT NULL,
        price_cents INTEGER NOT NULL CHECK (price_cents >= 0),
        quantity    INTEGER NOT NULL CHECK (quantity >= 0)
    );
    """,
    """
    CREATE TABLE reservations (
        bill_id    INTEGER PRIMARY KEY,
        status     TEXT NOT NULL CHECK (status IN ('reserved', 'rejected', 'released')),
        lines      TEXT NOT NULL,
        reason     TEXT,
        updated_at REAL NOT NULL
    );
    """,
)

routes = web.RouteTableDef()

Row = tuple[int, str, int, int]
COLUMNS = "id, name, price_cents, quantity"


def _threshold(app: web.Application) -> int:
    config: InventoryConfig = app[DYNAMIC].current
    return config.low_stock_threshold


def _doc(row: Row, threshold: int) -> dict[str, Any]:
    return {
        "id": row[0],
        "name": row[1],
        "price": cents_to_number(row[2]),
        "quantity": row[3],
        "low_stock": row[3] < threshold,
    }


def _stock_fell(
    conn: sqlite3.Connection, row: Row, before: int, threshold: int, cause: Mapping[str, Any]
) -> None:
    """Emit ``stock.low`` when the product's stock just went under ``threshold``."""
    if row[3] < threshold <= before:
        data = {"product_id": row[0], "name": row[1], "quantity": row[3], "threshold": threshold}
        add_to_outbox(conn, Event("stock.low", "inventory", {**data, **cause}))


def _fields(body: Any, *, partial: bool) -> dict[str, Any]:
    fields = Fields(body, {"name", "price", "quantity"})
    values: dict[str, Any] = {}
    if not partial or fields.has("name"):
        values["name"] = fields.text("name", max_length=200)
    if not partial or fields.has("price"):
        values["price_cents"] = fields.money("price")
    if not partial or fields.has("quantity"):
        values["quantity"] = fields.integer("quantity", minimum=0, maximum=MAX_QUANTITY)
    if partial and fields.ok and not values:
        fields.fail("body", "give at least one of name, price, quantity")
    fields.check()
    return values


@routes.get("/products")
async def list_products(request: web.Request) -> web.Response:
    limit = query_int(request, "limit", 100, 1, 1000)
    after = query_int(request, "after", 0, 0, 2**53)
    rows: list[Row] = await request.app[DB].run(
        lambda c: c.execute(
            f"SELECT {COLUMNS} FROM products WHERE id > ? ORDER BY id LIMIT ?", (after, limit)
        ).fetchall()
    )
    threshold = _threshold(request.app)
    return json_response(
        {
            "products": [_doc(r, threshold) for r in rows],
            "next_after": rows[-1][0] if len(rows) == limit else None,
        }
    )


@routes.post("/products")
async def create_product(request: web.Request) -> web.Response:
    values = _fields(await read_json(request, BODY_LIMIT), partial=False)

    def insert(conn: sqlite3.Connection) -> Row:
        cur = conn.execute(
            "INSERT INTO products (name, price_cents, quantity) VALUES (?, ?, ?)",
            (values["name"], values["price_cents"], values["quantity"]),
        )
        assert cur.lastrowid is not None
        return (cur.lastrowid, values["name"], values["price_cents"], values["quantity"])

    row = await request.app[DB].transaction(insert)
    return json_response(
        _doc(row, _threshold(request.app)),
        status=201,
        headers={"Location": public_path(request, f"/products/{row[0]}")},
    )


def _select(conn: sqlite3.Connection, product_id: int) -> Row | None:
    row: Row | None = conn.execute(
        f"SELECT {COLUMNS} FROM products WHERE id = ?", (product_id,)
    ).fetchone()
    return row


@routes.get("/products/{id}")
async def get_product(request: web.Request) -> web.Response:
    product_id = path_id(request, "product")
    row = await request.app[DB].run(lambda c: _select(c, product_id))
    if row is None:
        raise NotFound(f"no product with id {product_id}")
    return json_response(_doc(row, _threshold(request.app)))


@routes.patch("/products/{id}")
async def update_product(request: web.Request) -> web.Response:
    product_id = path_id(request, "product")
    values = _fields(await read_json(request, BODY_LIMIT), partial=True)
    threshold = _threshold(request.app)

    def update(conn: sqlite3.Connection) -> Row | None:
        before = _select(conn, product_id)
        if before is None:
            return None
        sets = ", ".join(f"{name} = ?" for name in values)
        conn.execute(f"UPDATE products SET {sets} WHERE id = ?", (*values.values(), product_id))
        after = _select(conn, product_id)
        assert after is not None
        _stock_fell(conn, after, before[3], threshold, {"cause": "update"})
        return after

    row = await request.app[DB].transaction(update)
    if row is None:
        raise NotFound(f"no product with id {product_id}")
    return json_response(_doc(row, threshold))


@routes.delete("/products/{id}")
async def delete_product(request: web.Request) -> web.Response:
    product_id = path_id(request, "product")
    deleted = await request.app[DB].transaction(
        lambda c: c.execute("DELETE FROM products WHERE id = ?", (product_id,)).rowcount
    )
    if not deleted:
        raise NotFound(f"no product with id {product_id}")
    return web.Response(status=204)


def _bill_lines(event: Event) -> tuple[int, list[tuple[int, int]]]:
    """``(bill_id, [(product_id, quantity)])`` of a bill event; ``ValueError`` when malformed."""
    data = event.data
    if not isinstance(data, dict) or not isinstance(data.get("lines"), list):
        raise ValueError(f"{event.type} {event.id}: data has no 'lines' array")
    bill_id = data.get("bill_id")
    if not isinstance(bill_id, int) or isinstance(bill_id, bool):
        raise ValueError(f"{event.type} {event.id}: data has no integer 'bill_id'")
    lines = []
    for line in data["lines"]:
        try:
            product_id, quantity = int(line["product_id"]), int(line["quantity"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{event.type} {event.id}: malformed line {line!r}") from None
        if quantity <= 0:
            raise ValueError(f"{event.type} {event.id}: quantity {quantity} is not positive")
        lines.append((product_id, quantity))
    return bill_id, lines


def _answer(conn: sqlite3.Connection, type: str, data: dict[str, Any]) -> None:
    add_to_outbox(conn, Event(type, "inventory", data))


def _lines_doc(lines: list[tuple[int, int]]) -> list[dict[str, int]]:
    return [{"product_id": p, "quantity": q} for p, q in lines]


def _record(
    conn: sqlite3.Connection, bill_id: int, status: str, lines: Any, reason: Any = None
) -> None:
    conn.execute(
        "INSERT INTO reservations (bill_id, status, lines, reason, updated_at) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (bill_id) DO UPDATE SET status = excluded.status, updated_at = excluded.updated_at",
        (bill_id, status, orjson.dumps(lines).decode(),
         None if reason is None else orjson.dumps(reason).decode(), time.time()),
    )  # fmt: skip


def on_bill_created(app: web.Application, conn: sqlite3.Connection, event: Event) -> None:
    """Reserve a bill's lines, all or none, and answer; a bill seen before gets its answer again."""
    bill_id, lines = _bill_lines(event)
    seen = conn.execute(
        "SELECT status, lines, reason FROM reservations WHERE bill_id = ?", (bill_id,)
    ).fetchone()
    if seen is not None:
        status, recorded, reason = seen
        if status == "reserved":
            _answer(conn, "stock.reserved", {"bill_id": bill_id, "lines": orjson.loads(recorded)})
        elif status == "rejected":
            _answer(conn, "stock.rejected", {"bill_id": bill_id, "reason": orjson.loads(reason)})
        # released: cancelled before it was reserved; the saga no longer waits for an answer
        return
    problems = []
    found = []
    for product_id, quantity in lines:
        row = _select(conn, product_id)
        if row is None:
            problems.append({"product_id": product_id, "quantity": quantity, "available": 0,
                             "reason": f"no product with id {product_id}"})  # fmt: skip
        elif row[3] < quantity:
            problems.append({"product_id": product_id, "quantity": quantity, "available": row[3],
                             "reason": f"only {row[3]} in stock"})  # fmt: skip
        else:
            found.append((row, quantity))
    if problems:
        detail = "; ".join(f"product {p['product_id']}: {p['reason']}" for p in problems)
        reason = {"code": "out_of_stock", "detail": detail, "lines": problems}
        _record(conn, bill_id, "rejected", _lines_doc(lines), reason)
        _answer(conn, "stock.rejected", {"bill_id": bill_id, "reason": reason})
        return
    threshold = _threshold(app)
    for before, quantity in found:
        conn.execute(
            "UPDATE products SET quantity = quantity - ? WHERE id = ?", (quantity, before[0])
        )
        after = (before[0], before[1], before[2], before[3] - quantity)
        _stock_fell(conn, after, before[3], threshold, {"cause": "bill", "bill_id": bill_id})
    _record(conn, bill_id, "reserved", _lines_doc(lines))
    _answer(conn, "stock.reserved", {"bill_id": bill_id, "lines": _lines_doc(lines)})


def on_bill_cancelled(app: web.Application, conn: sqlite3.Connection, event: Event) -> None:
    """Release what a bill holds (nothing, when it was rejected or never came) and answer."""
    bill_id, _ = _bill_lines(event)
    seen = conn.execute(
        "SELECT status, lines FROM reservations WHERE bill_id = ?", (bill_id,)
    ).fetchone()
    released: list[dict[str, int]] = []
    if seen is None:
        _record(conn, bill_id, "released", [])  # a bill.created coming later reserves nothing
    elif seen[0] == "reserved":
        released = orjson.loads(seen[1])
        for line in released:  # a product deleted since has nowhere to go back to
            conn.execute(
                "UPDATE products SET quantity = quantity + ? WHERE id = ?",
                (line["quantity"], line["product_id"]),
            )
        _record(conn, bill_id, "released", released)
    _answer(conn, "stock.released", {"bill_id": bill_id, "lines": released})


SERVICE = Service(
    name="inventory",
    description="Essaim demo service: products and their stock; reserves and releases the stock"
    " of bills (billing's saga).",
    routes=routes,
    migrations=MIGRATIONS,
    config=InventoryConfig,
    emits=("stock.low", "stock.reserved", "stock.rejected", "stock.released"),
    handlers={"bill.created": on_bill_created, "bill.cancelled": on_bill_cancelled},
    openapi=describe,
    # As the gateway's routes say (config/gateway.toml): anyone reads products,
    # admins change them; the rest (events) needs a token.
    access={
        "GET /products": "public",
        "GET /products/{id}": "public",
        "POST /products": "roles:admin",
        "PATCH /products/{id}": "roles:admin",
        "DELETE /products/{id}": "roles:admin",
    },
)
