"""The billing API in the service's OpenAPI document."""

from __future__ import annotations

from core.openapi.schemas import (
    ANY,
    BOOLEAN,
    INTEGER,
    NUMBER,
    STRING,
    Schema,
    array_of,
    json,
    nullable,
    obj,
    problem,
    props,
)
from core.openapi.spec import Spec

__all__ = ["describe"]

LINE = obj(
    required=("product_id", "name", "quantity", "unit_price", "amount"),
    product_id=INTEGER, name=STRING, quantity=INTEGER, unit_price=NUMBER, amount=NUMBER,
    product=ANY,
)  # fmt: skip
BILL_FIELDS: dict[str, Schema] = {
    "lines": array_of(LINE), "currency": STRING, "subtotal": NUMBER, "tax_rate": NUMBER,
    "tax": NUMBER, "total": NUMBER, "created_at": STRING,
}  # fmt: skip
STATUS: Schema = {"type": "string", "enum": ["pending", "confirmed", "rejected", "cancelled"]}
#: Why a bill is rejected or cancelled: ``code`` (``out_of_stock``, ``timeout``, ``cancelled``).
REASON = obj(required=("code",), code=STRING, detail=STRING, lines=array_of(ANY))
STATE: dict[str, Schema] = {"status": STATUS, "reason": REASON, "stock_released": BOOLEAN}
BILL = props({"id": INTEGER, "customer_id": INTEGER, **STATE, **BILL_FIELDS},
             required=("id", "status", "customer_id", *BILL_FIELDS))  # fmt: skip
SHOWN = props({"id": INTEGER, "customer": ANY, **STATE, **BILL_FIELDS},
              required=("id", "status", "customer", *BILL_FIELDS))  # fmt: skip
NEW_BILL = obj(
    extra=False,
    customer_id={"type": "integer", "minimum": 1},
    lines={
        "type": "array", "minItems": 1, "maxItems": 100,
        "items": obj(extra=False, product_id={"type": "integer", "minimum": 1},
                     quantity={"type": "integer", "minimum": 1}),
    },
)  # fmt: skip


def describe(spec: Spec) -> None:
    page = {"limit": {"type": "integer", "minimum": 1, "maximum": 1000},
            "after": {"type": "integer", "minimum": 0}}  # fmt: skip
    spec.op("POST", "/bills", "Bill a customer for products, priced now; pending until"
            " inventory reserves the stock", auth=True,
            redis=False, body={"application/json": NEW_BILL},
            responses=[(202, json(BILL, "accepted, pending", {"Location": "the bill"})),
                       problem(422, "unknown customer or product, bad values"),
                       problem(413, "the body is too large"),
                       problem(503, "customers or inventory can't answer now")])  # fmt: skip
    spec.op(
        "GET",
        "/bills",
        "Bills by id, as stored",
        query=page,
        auth=True,
        redis=False,
        responses=[(200, json(obj(bills=array_of(BILL), next_after=nullable(INTEGER))))],
    )
    spec.op(
        "GET",
        "/bills/{id}",
        "A bill, with its customer and products as they are now",
        description="With `wait`, answers once the bill is no longer pending, or after"
        " `wait` seconds.",
        params={"id": {"type": "integer", "minimum": 1}},
        query={"wait": {"type": "number", "minimum": 0, "maximum": 30}},
        auth=True,
        redis=False,
        responses=[
            (200, json(SHOWN)),
            problem(400, "a wait that is not a number of seconds from 0 to 30"),
            problem(404, "no such bill"),
        ],
    )
    spec.op(
        "POST",
        "/bills/{id}/cancel",
        "Cancel a pending or confirmed bill: inventory releases its stock",
        params={"id": {"type": "integer", "minimum": 1}},
        auth=True,
        redis=False,
        responses=[
            (200, json(BILL)),
            problem(404, "no such bill"),
            problem(409, "the bill is rejected, or older than stock reservations"),
        ],
    )
