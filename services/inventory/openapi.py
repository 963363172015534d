"""The inventory API in the service's OpenAPI document."""

from __future__ import annotations

from core.openapi.schemas import (
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

PRODUCT = obj(id=INTEGER, name=STRING, price=NUMBER, quantity=INTEGER, low_stock=BOOLEAN)
FIELDS: dict[str, Schema] = {
    "name": {"type": "string", "minLength": 1, "maxLength": 200},
    "price": {"type": "number", "minimum": 0, "multipleOf": 0.01},
    "quantity": {"type": "integer", "minimum": 0},
}
ID = {"id": {"type": "integer", "minimum": 1}}


def describe(spec: Spec) -> None:
    missing = problem(404, "no such product")
    bad = problem(422, "invalid values (every bad field in errors)")
    page = {"limit": {"type": "integer", "minimum": 1, "maximum": 1000},
            "after": {"type": "integer", "minimum": 0}}  # fmt: skip
    spec.op("GET", "/products", "Products by id, a page at a time", query=page, redis=False,
            responses=[(200, json(obj(products=array_of(PRODUCT), next_after=nullable(INTEGER))))])  # fmt: skip
    spec.op("POST", "/products", "Create a product (admin)", auth=True, redis=False,
            body={"application/json": props(FIELDS, extra=False)},
            responses=[(201, json(PRODUCT, "created", {"Location": "the product"})), bad,
                       problem(413, "the body is too large")])  # fmt: skip
    spec.op(
        "GET",
        "/products/{id}",
        "One product",
        params=ID,
        redis=False,
        responses=[(200, json(PRODUCT)), missing],
    )
    spec.op("PATCH", "/products/{id}", "Change a product (admin)", params=ID, auth=True,
            redis=False, body={"application/json": props(FIELDS, required=(), extra=False)},
            responses=[(200, json(PRODUCT)), missing, bad])  # fmt: skip
    spec.op(
        "DELETE",
        "/products/{id}",
        "Delete a product (admin)",
        params=ID,
        auth=True,
        redis=False,
        responses=[(204, {"description": "deleted"}), missing],
    )
