"""The billing service: bills priced from customers and inventory, confirmed by a saga.

| method and path | answer |
|---|---|
| ``POST /bills`` | ``{customer_id, lines: [{product_id, quantity}]}``: 202, the bill ``pending``, ``Location`` |
| ``GET /bills?limit=N&after=ID`` | ``{"bills": [...], "next_after": ID or null}``, as stored |
| ``GET /bills/{id}?wait=S`` | the bill with its customer and products as their services show them now; with ``wait``, once it is no longer ``pending`` or after S seconds (at most 30) |
| ``POST /bills/{id}/cancel`` | 200, the bill ``cancelled``; 409 unless it is ``pending`` or ``confirmed`` |

``POST /bills`` checks the body, then calls ``customers`` and ``inventory``
(by name, through the registry snapshot: balanced, with breaker and
retries, passing ``X-Request-ID`` on) for the customer and every product,
prices each line at the product's current price, adds tax at the rate in
force in configsvc (``[billing] tax_rate``, applied live), and stores the bill
and starts its saga (:data:`BILLS`) in one transaction: the bill is
``pending`` and ``bill.created`` is in the outbox. Inventory reserves every
line or none and answers ``stock.reserved`` (the bill becomes ``confirmed``)
or ``stock.rejected`` (``rejected``, with the reason per line). No answer
within ``[billing] reservation_timeout`` seconds: ``rejected`` (reason
``timeout``), and ``bill.cancelled`` tells inventory to release whatever it
may have reserved. Cancelling (while ``pending`` or ``confirmed``: there are
no payments yet, so every confirmed bill is unpaid) sends ``bill.cancelled``
too; inventory answers ``stock.released``.

A shortage is never refused here, even one billing can see: the stock it
reads may be gone, or back, by the time inventory reserves, and one answer
for every shortage (a ``rejected`` bill with the reason per line) is simpler
for clients than two. Nothing is stored unless every line was priced:

- 400/422 for a malformed body, a quantity that is not a positive integer, a
  product listed twice, an unknown customer or product (``errors`` names
  each bad field);
- 503 with ``Retry-After`` when ``customers`` or ``inventory`` can't answer
  (no instance up, its breaker open, unreachable, timed out, or failing).

``GET /bills/{id}`` degrades rather than fails: a customer or product its
service can't give now is shown as ``{"id": ..., "unavailable": "why"}`` (or
``"deleted": true`` when its service no longer knows it), beside what the
bill recorded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import sqlite3
from collections.abc import Coroutine
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, TypeVar

import aiohttp
import orjson
from aiohttp import web

from core.errors import Conflict, DependencyUnavailable, HTTPProblem, NotFound, ServiceUnavailable
from core.events.bus import Event, now_iso
from core.events.saga import Compensation, Saga, SagaState, Step
from core.http import json_response, read_json
from core.service.calls import Calls
from core.service.scaffold import CALLS, DB, DYNAMIC, SAGAS, Service, public_path
from core.validation import Fields, cents_to_number, path_id, query_int, query_seconds
from services.billing.openapi import describe

BODY_LIMIT = 64 * 1024
MAX_LINES = 100
MAX_QUANTITY = 1_000_000
MAX_WAIT = 30.0
CURRENCY_RE = re.compile(r"[A-Z]{3}")

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class BillingConfig:
    """The ``[billing]`` table of the service's config (applied live)."""

    currency: str = "EUR"
    tax_rate: float = 0.2
    #: Seconds a new bill waits for inventory's answer before it is rejected (and compensated).
    reservation_timeout: float = 30.0
    #: Seconds between sends of a ``bill.created`` or ``bill.cancelled`` still unanswered.
    resend_interval: float = 5.0

    def __post_init__(self) -> None:
        if not 0 <= self.tax_rate < 1:
            raise ValueError(f"tax_rate: expected 0 <= rate < 1, got {self.tax_rate}")
        if not 0.1 <= self.reservation_timeout <= 86400:
            raise ValueError(
                f"reservation_timeout: expected 0.1-86400 seconds, got {self.reservation_timeout}"
            )
        if not 0.1 <= self.resend_interval <= 3600:
            raise ValueError(
                f"resend_interval: expected 0.1-3600 seconds, got {self.resend_interval}"
            )
        if not CURRENCY_RE.fullmatch(self.currency):
            raise ValueError(f"currency: expected an ISO 4217 code, got {self.currency!r}")


MIGRATIONS = (
    """
    CREATE TABLE bills (
        id             INTEGER PRIMARY KEY AUTOINCREMENT,
        customer_id    INTEGER NOT NULL,
        currency       TEXT NOT NULL,
        tax_rate       TEXT NOT NULL,
        subtotal_cents INTEGER NOT NULL,
        tax_cents      INTEGER NOT NULL,
        total_cents    INTEGER NOT NULL,
        created_at     TEXT NOT NULL
    );
    CREATE TABLE bill_lines (
        bill_id          INTEGER NOT NULL REFERENCES bills (id),
        line             INTEGER NOT NULL,
        product_id       INTEGER NOT NULL,
        name             TEXT NOT NULL,
        quantity         INTEGER NOT NULL,
        unit_price_cents INTEGER NOT NULL,
        amount_cents     INTEGER NOT NULL,
        PRIMARY KEY (bill_id, line)
    ) WITHOUT ROWID;
    """,
    # Bills made before the saga had their stock taken by bill.created: confirmed.
    # Inventory has no reservation of theirs to release: they can't be cancelled.
    """
    INSERT INTO essaim_sagas (saga, id, state, data, timeout, retry, created_at, updated_at)
    SELECT 'bill', CAST(b.id AS TEXT), 'confirmed',
           json_object('bill_id', b.id, 'customer_id', b.customer_id, 'legacy', 1, 'lines', (
               SELECT json_group_array(json_object('product_id', l.product_id,
                                                   'quantity', l.quantity))
               FROM bill_lines AS l WHERE l.bill_id = b.id)),
           30, 5, strftime('%s', 'now'), strftime('%s', 'now')
    FROM bills AS b;
    """,
)


def _reserve(bill: SagaState) -> Event:
    return Event("bill.created", "billing", bill.data)


def _release(bill: SagaState, cause: str) -> Event:
    data = {"bill_id": bill.data["bill_id"], "cause": cause, "lines": bill.data["lines"]}
    return Event("bill.cancelled", "billing", data)


#: A bill's saga: ``pending`` until inventory reserves its stock or says why it can't.
BILLS = Saga(
    "bill",
    key="bill_id",
    initial="pending",
    steps=[
        Step(
            "pending",
            command=_reserve,
            replies={"stock.reserved": "confirmed", "stock.rejected": "rejected"},
            on_timeout="rejected",
        )
    ],
    compensation=Compensation(_release, done="stock.released"),
)
#: The states from which a bill may be cancelled (no payments yet: confirmed is unpaid).
CANCELLABLE = ("pending", "confirmed")

routes = web.RouteTableDef()


@dataclasses.dataclass(frozen=True)
class Line:
    product_id: int
    name: str
    quantity: int
    unit_price_cents: int

    @property
    def amount_cents(self) -> int:
        return self.unit_price_cents * self.quantity

    def to_dict(self) -> dict[str, Any]:
        return {
            "product_id": self.product_id,
            "name": self.name,
            "quantity": self.quantity,
            "unit_price": cents_to_number(self.unit_price_cents),
            "amount": cents_to_number(self.amount_cents),
        }


@dataclasses.dataclass(frozen=True)
class Bill:
    id: int
    customer_id: int
    currency: str
    tax_rate: str
    subtotal_cents: int
    tax_cents: int
    total_cents: int
    created_at: str
    lines: tuple[Line, ...]
    status: str = "pending"
    reason: Any = None
    stock_released: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"id": self.id, "status": self.status}
        if self.reason is not None:
            doc["reason"] = self.reason
        if self.stock_released is not None:
            doc["stock_released"] = self.stock_released
        return doc | {
            "customer_id": self.customer_id,
            "lines": [line.to_dict() for line in self.lines],
            "currency": self.currency,
            "subtotal": cents_to_number(self.subtotal_cents),
            "tax_rate": float(self.tax_rate),
            "tax": cents_to_number(self.tax_cents),
            "total": cents_to_number(self.total_cents),
            "created_at": self.created_at,
        }


# ----------------------------------------------------------------------------- calls


class _Unknown(Exception):
    """The called service answered 404: it doesn't know the entity."""


async def _fetch(calls: Calls, service: str, path: str) -> dict[str, Any]:
    """The JSON object at ``path`` of ``service``; ``_Unknown`` on 404.

    Every other failure is a 503 naming the dependency, marked as a
    dependency's failure (billing itself works; the gateway does not hold it
    against billing): billing can't price a bill without it, and the client
    may try again later.
    """
    try:
        response = await calls.get(service, path)
    except HTTPProblem as exc:
        retry_after = exc.headers.get("Retry-After", "1")
        raise DependencyUnavailable(
            service,
            f"{service} is unavailable: {exc.detail}",
            headers={"Retry-After": retry_after},
        ) from None
    except aiohttp.ClientError as exc:  # a broken answer, after the retries the policy allows
        raise DependencyUnavailable(
            service, f"{service} is unavailable: {type(exc).__name__}: {exc}"
        ) from None
    if response.status == 404:
        raise _Unknown(path)
    if response.status != 200:
        raise DependencyUnavailable(service, f"{service} answered {response.status} to GET {path}")
    doc = response.json()
    if not isinstance(doc, dict):
        raise DependencyUnavailable(service, f"{service} answered GET {path} with no object")
    return doc


async def _lookup(calls: Calls, service: str, path: str) -> dict[str, Any] | None:
    try:
        return await _fetch(calls, service, path)
    except _Unknown:
        return None


async def _all(*calls: Coroutine[Any, Any, T]) -> list[T]:
    """The results of ``calls`` run concurrently; the first failure cancels the others."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        raise


# ----------------------------------------------------------------------------- handlers


def _parse(body: Any) -> tuple[int, list[tuple[int, int]]]:
    """``(customer_id, [(product_id, quantity)])`` from a bill body, or the 400/422 problem."""
    fields = Fields(body, {"customer_id", "lines"})
    customer_id = fields.integer("customer_id", minimum=1)
    lines: list[tuple[int, int]] = []
    seen: dict[int, int] = {}
    for i, raw in enumerate(fields.array("lines", max_items=MAX_LINES)):
        line = fields.nested(f"lines[{i}]", raw, {"product_id", "quantity"})
        product_id = line.integer("product_id", minimum=1)
        quantity = line.integer("quantity", minimum=1, maximum=MAX_QUANTITY)
        if product_id in seen:
            line.fail("product_id", f"product {product_id} is already on line {seen[product_id]}")
        elif product_id:
            seen[product_id] = i
        lines.append((product_id, quantity))
    fields.check()
    return customer_id, lines


def _tax(subtotal_cents: int, rate: float) -> int:
    return int((Decimal(subtotal_cents) * Decimal(str(rate))).quantize(Decimal(1), ROUND_HALF_UP))


def _store(conn: sqlite3.Connection, bill: Bill, config: BillingConfig) -> int:
    cur = conn.execute(
        "INSERT INTO bills (customer_id, currency, tax_rate, subtotal_cents, tax_cents,"
        " total_cents, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (bill.customer_id, bill.currency, bill.tax_rate, bill.subtotal_cents, bill.tax_cents,
         bill.total_cents, bill.created_at),
    )  # fmt: skip
    bill_id = cur.lastrowid
    assert bill_id is not None
    conn.executemany(
        "INSERT INTO bill_lines (bill_id, line, product_id, name, quantity, unit_price_cents,"
        " amount_cents) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(bill_id, i, ln.product_id, ln.name, ln.quantity, ln.unit_price_cents, ln.amount_cents)
         for i, ln in enumerate(bill.lines)],
    )  # fmt: skip
    data = {
        "bill_id": bill_id,
        "customer_id": bill.customer_id,
        "lines": [{"product_id": ln.product_id, "quantity": ln.quantity} for ln in bill.lines],
        "currency": bill.currency,
        "total": cents_to_number(bill.total_cents),
    }
    BILLS.start(
        conn,
        str(bill_id),
        data,
        timeout=config.reservation_timeout,
        retry=config.resend_interval,
    )
    return bill_id


@routes.post("/bills")
async def create_bill(request: web.Request) -> web.Response:
    customer_id, wanted = _parse(await read_json(request, BODY_LIMIT))
    config: BillingConfig = request.app[DYNAMIC].current
    calls = request.app[CALLS]
    customer, *products = await _all(
        _lookup(calls, "customers", f"/customers/{customer_id}"),
        *(_lookup(calls, "inventory", f"/products/{product_id}") for product_id, _ in wanted),
    )
    problems = Fields({}, set())
    if customer is None:
        problems.fail("customer_id", f"no customer with id {customer_id}")
    lines: list[Line] = []
    for i, ((product_id, quantity), product) in enumerate(zip(wanted, products, strict=True)):
        if product is None:
            problems.fail(f"lines[{i}].product_id", f"no product with id {product_id}")
            continue
        price_cents = int((Decimal(str(product["price"])) * 100).to_integral_value())
        lines.append(Line(product_id, str(product["name"]), quantity, price_cents))
    problems.check()
    subtotal = sum(line.amount_cents for line in lines)
    tax = _tax(subtotal, config.tax_rate)
    bill = Bill(0, customer_id, config.currency, str(config.tax_rate), subtotal, tax,
                subtotal + tax, now_iso(), tuple(lines))  # fmt: skip
    bill_id = await request.app[DB].transaction(lambda conn: _store(conn, bill, config))
    bill = dataclasses.replace(bill, id=bill_id)
    if config.reservation_timeout < 1:
        request.app[SAGAS][BILLS.name].wake()  # its timeout is sooner than the runner's next look
    return json_response(
        bill.to_dict(), status=202, headers={"Location": public_path(request, f"/bills/{bill_id}")}
    )


def _read_bills(conn: sqlite3.Connection, where: str, args: tuple[Any, ...]) -> list[Bill]:
    rows = conn.execute(
        "SELECT b.id, b.customer_id, b.currency, b.tax_rate, b.subtotal_cents, b.tax_cents,"
        " b.total_cents, b.created_at, s.state, s.reason, s.compensation, s.compensated_at"
        " FROM bills AS b LEFT JOIN essaim_sagas AS s ON s.saga = 'bill'"
        f" AND s.id = CAST(b.id AS TEXT) WHERE {where}",
        args,
    ).fetchall()
    bills = []
    for row in rows:
        lines = tuple(
            Line(*line)
            for line in conn.execute(
                "SELECT product_id, name, quantity, unit_price_cents FROM bill_lines"
                " WHERE bill_id = ? ORDER BY line",
                (row[0],),
            )
        )
        bill_id, customer_id, currency, rate, subtotal, tax, total, created_at = row[:8]
        state, reason, compensation, compensated_at = row[8:]
        bills.append(
            Bill(bill_id, customer_id, currency, rate, subtotal, tax, total, created_at, lines,
                 status=state or "confirmed", reason=None if reason is None else orjson.loads(reason),
                 stock_released=None if compensation is None else compensated_at is not None)
        )  # fmt: skip
    return bills


@routes.get("/bills")
async def list_bills(request: web.Request) -> web.Response:
    limit = query_int(request, "limit", 100, 1, 1000)
    after = query_int(request, "after", 0, 0, 2**53)
    bills = await request.app[DB].run(
        lambda c: _read_bills(c, "b.id > ? ORDER BY b.id LIMIT ?", (after, limit))
    )
    return json_response(
        {
            "bills": [bill.to_dict() for bill in bills],
            "next_after": bills[-1].id if len(bills) == limit else None,
        }
    )


async def _detail(calls: Calls, service: str, path: str, entity_id: int) -> dict[str, Any]:
    try:
        return await _fetch(calls, service, path)
    except _Unknown:
        return {"id": entity_id, "deleted": True}
    except ServiceUnavailable as exc:
        return {
            "id": entity_id,
            "unavailable": exc.detail.removeprefix(f"{service} is unavailable: "),
        }


async def _bill(request: web.Request, bill_id: int) -> Bill:
    found = await request.app[DB].run(lambda c: _read_bills(c, "b.id = ?", (bill_id,)))
    if not found:
        raise NotFound(f"no bill with id {bill_id}")
    return found[0]


@routes.get("/bills/{id}")
async def get_bill(request: web.Request) -> web.Response:
    bill_id = path_id(request, "bill")
    wait = query_seconds(request, "wait", MAX_WAIT)
    bill = await _bill(request, bill_id)
    if wait and bill.status == "pending":
        await request.app[SAGAS][BILLS.name].wait(str(bill_id), "pending", wait)
        bill = await _bill(request, bill_id)
    calls = request.app[CALLS]
    customer, *products = await asyncio.gather(
        _detail(calls, "customers", f"/customers/{bill.customer_id}", bill.customer_id),
        *(
            _detail(calls, "inventory", f"/products/{line.product_id}", line.product_id)
            for line in bill.lines
        ),
    )
    doc = bill.to_dict()
    del doc["customer_id"]
    head: dict[str, Any] = {
        key: doc.pop(key) for key in ("id", "status", "reason", "stock_released") if key in doc
    }
    doc = {**head, "customer": customer, **doc}
    for line, product in zip(doc["lines"], products, strict=True):
        line["product"] = product
    return json_response(doc)


@routes.post("/bills/{id}/cancel")
async def cancel_bill(request: web.Request) -> web.Response:
    """Cancel a pending or confirmed bill: inventory releases what it reserved for it."""
    bill_id = path_id(request, "bill")
    reason = {"code": "cancelled", "detail": "cancelled by the customer"}

    def cancel(conn: sqlite3.Connection) -> None:
        if not conn.execute("SELECT 1 FROM bills WHERE id = ?", (bill_id,)).fetchone():
            raise NotFound(f"no bill with id {bill_id}")
        saga = BILLS.get(conn, str(bill_id))
        if saga is not None and saga.data.get("legacy"):
            raise Conflict(
                f"bill {bill_id} was made before stock reservations were recorded:"
                " it can't be cancelled",
                state=saga.state,
            )
        BILLS.move(conn, str(bill_id), "cancelled", allowed=CANCELLABLE, reason=reason,
                   compensate="cancelled")  # fmt: skip

    await request.app[DB].transaction(cancel)
    return json_response((await _bill(request, bill_id)).to_dict())


SERVICE = Service(
    name="billing",
    description="Essaim demo service: bills priced from customers and inventory, confirmed by a"
    " saga with inventory (bill.created, stock.reserved or stock.rejected, bill.cancelled).",
    routes=routes,
    migrations=MIGRATIONS,
    config=BillingConfig,
    calls=("customers", "inventory"),
    sagas=(BILLS,),
    openapi=describe,
)
