"""Checking request bodies field by field (core/validation.py)."""

from __future__ import annotations

import re

import pytest

from core.errors import BadRequest, Unprocessable
from core.validation import Fields, cents_to_number


def test_every_bad_field_is_reported_at_once_with_422_for_values() -> None:
    fields = Fields({"name": " ", "age": -1, "extra": 1}, {"name", "age", "email"})
    fields.text("name")
    fields.integer("age", minimum=0)
    fields.text("email", pattern=re.compile(r".+@.+"))
    with pytest.raises(Unprocessable) as caught:
        fields.check()
    assert caught.value.extra["errors"] == [
        {"field": "extra", "reason": "unknown field"},
        {"field": "name", "reason": "must not be empty"},
        {"field": "age", "reason": "must not be negative"},
        {"field": "email", "reason": "required"},
    ]
    assert caught.value.detail == "extra: unknown field (and 3 more)"


def test_a_wrong_json_type_or_null_makes_it_a_400() -> None:
    fields = Fields({"name": None, "quantity": "3", "lines": {}}, {"name", "quantity", "lines"})
    assert fields.text("name") == ""
    assert fields.integer("quantity") == 0
    assert fields.array("lines") == []
    with pytest.raises(BadRequest) as caught:
        fields.check()
    assert [e["reason"] for e in caught.value.extra["errors"]] == [
        "expected a string, got null",
        "expected an integer, got a string",
        "expected an array, got an object",
    ]
    with pytest.raises(BadRequest):
        Fields([1], set()).check()


def test_nested_objects_name_their_fields_by_path() -> None:
    fields = Fields({"lines": [{"quantity": 0}, 3]}, {"lines"})
    for i, raw in enumerate(fields.array("lines")):
        line = fields.nested(f"lines[{i}]", raw, {"quantity"})
        line.integer("quantity", minimum=1)
    with pytest.raises(BadRequest) as caught:
        fields.check()
    assert caught.value.extra["errors"] == [
        {"field": "lines[1]", "reason": "expected an object, got a number"},
        {"field": "lines[0].quantity", "reason": "must be positive"},
    ]


@pytest.mark.parametrize(
    ("value", "cents", "error"),
    [
        (19.9, 1990, None),
        (0.1, 10, None),
        (199, 19900, None),
        (1.005, 0, "at most two decimals"),
        (-1, 0, "must not be negative"),
        (1e12, 0, "at most 1000000000"),
        (True, 0, "expected a number, got a boolean"),
    ],
)
def test_money_is_a_number_with_at_most_two_decimals_kept_in_cents(
    value: object, cents: int, error: str | None
) -> None:
    fields = Fields({"price": value}, {"price"})
    assert fields.money("price") == cents
    reasons = [e["reason"] for e in fields.type_errors + fields.value_errors]
    assert reasons == ([error] if error else [])
    assert (cents_to_number(1990), cents_to_number(2000), cents_to_number(5)) == (19.9, 20, 0.05)
