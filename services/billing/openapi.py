"""The billing API in the service's OpenAPI document."""

from __future__ import annotations

from core.openapi.schemas import (
    ANY,
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
BILL = props({"id": INTEGER, "customer_id": INTEGER, **BILL_FIELDS})
SHOWN = props({"id": INTEGER, "customer": ANY, **BILL_FIELDS})
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
    spec.op("POST", "/bills", "Bill a customer for products, priced now", auth=True,
            redis=False, body={"application/json": NEW_BILL},
            responses=[(201, json(BILL, "created", {"Location": "the bill"})),
                       problem(422, "unknown customer or product, not enough stock, bad values"),
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
        params={"id": {"type": "integer", "minimum": 1}},
        auth=True,
        redis=False,
        responses=[(200, json(SHOWN)), problem(404, "no such bill")],
    )
