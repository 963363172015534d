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

Events: it handles ``bill.created`` (consumer group ``inventory``) by taking
each line's quantity from stock, all lines or none, exactly once per event.
A bill for a product it doesn't know, or for more than is in stock, fails and
is retried, then dead-lettered (``GET /events/dead``); restock, then replay
it (``POST /events/dead/replay``). When a product's stock falls under the
threshold (by a bill or a ``PATCH``) it emits ``stock.low`` through its
outbox, in the same transaction.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Mapping
from typing import Any

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


class StockError(Exception):
    """A bill's stock can't be taken (unknown product, not enough units): retried, then dead."""


def _bill_lines(event: Event) -> tuple[Any, list[tuple[int, int]]]:
    data = event.data
    if not isinstance(data, dict) or not isinstance(data.get("lines"), list):
        raise ValueError(f"bill.created {event.id}: data has no 'lines' array")
    lines = []
    for line in data["lines"]:
        try:
            product_id, quantity = int(line["product_id"]), int(line["quantity"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"bill.created {event.id}: malformed line {line!r}") from None
        if quantity <= 0:
            raise ValueError(f"bill.created {event.id}: quantity {quantity} is not positive")
        lines.append((product_id, quantity))
    return data.get("bill_id"), lines


def on_bill_created(app: web.Application, conn: sqlite3.Connection, event: Event) -> None:
    """Take a bill's quantities from stock: every line or, raising, none (the savepoint)."""
    bill_id, lines = _bill_lines(event)
    threshold = _threshold(app)
    for product_id, quantity in lines:
        before = _select(conn, product_id)
        if before is None:
            raise StockError(f"bill {bill_id}: no product with id {product_id}")
        if before[3] < quantity:
            raise StockError(
                f"bill {bill_id}: product {product_id} has {before[3]} in stock, {quantity} billed"
            )
        conn.execute(
            "UPDATE products SET quantity = quantity - ? WHERE id = ?", (quantity, product_id)
        )
        after = (before[0], before[1], before[2], before[3] - quantity)
        _stock_fell(conn, after, before[3], threshold, {"cause": "bill", "bill_id": bill_id})


SERVICE = Service(
    name="inventory",
    description="Essaim demo service: products and their stock; takes billed units from stock.",
    routes=routes,
    migrations=MIGRATIONS,
    config=InventoryConfig,
    emits=("stock.low",),
    handlers={"bill.created": on_bill_created},
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
