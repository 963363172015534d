"""Checking a JSON request body field by field, with every error reported at once.

A service handler wraps the parsed body in :class:`Fields`, reads each field
through a typed accessor, and calls :meth:`Fields.check` before touching any
state. The accessors never raise: they record what is wrong and return a
placeholder, so that one answer lists every bad field. :meth:`Fields.check`
then raises :class:`~core.errors.BadRequest` (400) when a field has the wrong
JSON type or the body is not an object, else :class:`~core.errors.Unprocessable`
(422) for values out of range, missing or unknown fields. Both carry
``errors``: a list of ``{"field", "reason"}``, the format the registry uses.

Money is handled in integer cents: :meth:`Fields.money` accepts a JSON number
with at most two decimals and returns cents; :func:`cents_to_number` gives
the JSON number back.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

from aiohttp import web

from core.errors import BadRequest, NotFound, Unprocessable

__all__ = ["Fields", "cents_to_number", "path_id", "query_int"]

_MISSING: Any = object()

#: Largest integer id or amount accepted (SQLite's INTEGER is 64-bit; JSON clients use doubles).
MAX_INT = 2**53 - 1


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    return "a number"


class Fields:
    """The fields of one JSON object, checked one accessor call at a time.

    ``allowed`` lists every field the object may have; any other is an error.
    ``prefix`` names nested objects in errors (``lines[0].quantity``).
    """

    def __init__(
        self, body: Any, allowed: set[str], *, prefix: str = "", parent: Fields | None = None
    ) -> None:
        self.prefix = prefix
        self.type_errors: list[dict[str, str]] = parent.type_errors if parent else []
        self.value_errors: list[dict[str, str]] = parent.value_errors if parent else []
        self.is_object = isinstance(body, dict)
        if isinstance(body, dict):
            self.body: dict[str, Any] = body
            for name in sorted(set(body) - allowed):
                self.value_errors.append({"field": self._name(name), "reason": "unknown field"})
        else:
            self.body = {}
            where = prefix.rstrip(".") or "the body"
            self.type_errors.append(
                {"field": where, "reason": f"expected an object, got {_kind(body)}"}
            )

    def _name(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def has(self, name: str) -> bool:
        return name in self.body

    def _get(self, name: str, required: bool) -> Any:
        """The value of ``name``; :data:`_MISSING` when absent (an error when ``required``).

        Nothing is required of a body that is not an object: that is its error.
        """
        if name not in self.body:
            if required and self.is_object:
                self.value_errors.append({"field": self._name(name), "reason": "required"})
            return _MISSING
        return self.body[name]

    def _wrong_type(self, name: str, expected: str, value: Any) -> None:
        self.type_errors.append(
            {"field": self._name(name), "reason": f"expected {expected}, got {_kind(value)}"}
        )

    def _invalid(self, name: str, reason: str) -> None:
        self.value_errors.append({"field": self._name(name), "reason": reason})

    def text(
        self,
        name: str,
        *,
        required: bool = True,
        max_length: int = 200,
        pattern: re.Pattern[str] | None = None,
        describe: str = "",
    ) -> str:
        """A string, stripped of surrounding spaces, not empty, at most ``max_length`` characters."""
        value = self._get(name, required)
        if value is _MISSING:
            return ""
        if not isinstance(value, str):
            self._wrong_type(name, "a string", value)
            return ""
        value = value.strip()
        if not value:
            self._invalid(name, "must not be empty")
        elif len(value) > max_length:
            self._invalid(name, f"at most {max_length} characters")
        elif pattern is not None and not pattern.fullmatch(value):
            self._invalid(name, describe or f"must match {pattern.pattern}")
        return value

    def integer(
        self, name: str, *, required: bool = True, minimum: int = 0, maximum: int = MAX_INT
    ) -> int:
        """An integer (a JSON number without a fraction) in ``[minimum, maximum]``."""
        value = self._get(name, required)
        if value is _MISSING:
            return 0
        if isinstance(value, bool) or not isinstance(value, int | float):
            self._wrong_type(name, "an integer", value)
            return 0
        if isinstance(value, float):
            if not value.is_integer():
                self._invalid(name, "must be a whole number")
                return 0
            value = int(value)
        if not minimum <= value <= maximum:
            if value < minimum and minimum in (0, 1):
                self._invalid(name, "must be positive" if minimum else "must not be negative")
            else:
                self._invalid(name, f"must be between {minimum} and {maximum}")
        return int(value)

    def money(self, name: str, *, required: bool = True, maximum_cents: int = 10**11) -> int:
        """An amount: a JSON number >= 0 with at most two decimals; returned in cents."""
        value = self._get(name, required)
        if value is _MISSING:
            return 0
        if isinstance(value, bool) or not isinstance(value, int | float):
            self._wrong_type(name, "a number", value)
            return 0
        try:
            amount = Decimal(str(value))
        except InvalidOperation:
            self._invalid(name, "must be a finite number")
            return 0
        if not amount.is_finite():
            self._invalid(name, "must be a finite number")
            return 0
        if amount < 0:
            self._invalid(name, "must not be negative")
            return 0
        cents = amount * 100
        if cents != cents.to_integral_value():
            self._invalid(name, "at most two decimals")
            return 0
        if cents > maximum_cents:
            self._invalid(name, f"at most {cents_to_number(maximum_cents)}")
            return 0
        return int(cents)

    def array(self, name: str, *, required: bool = True, max_items: int = 100) -> list[Any]:
        """A JSON array of 1 to ``max_items`` items (items are checked by the caller)."""
        value = self._get(name, required)
        if value is _MISSING:
            return []
        if not isinstance(value, list):
            self._wrong_type(name, "an array", value)
            return []
        if not value:
            self._invalid(name, "must not be empty")
        elif len(value) > max_items:
            self._invalid(name, f"at most {max_items} items")
            return []
        return value

    def nested(self, name: str, body: Any, allowed: set[str]) -> Fields:
        """Check the object ``body`` found at ``name`` (``lines[0]``); its errors join these."""
        return Fields(body, allowed, prefix=f"{self.prefix}{name}.", parent=self)

    def fail(self, name: str, reason: str) -> None:
        """Record a value error found by the caller (``name`` is relative to this object)."""
        self._invalid(name, reason)

    @property
    def ok(self) -> bool:
        return not self.type_errors and not self.value_errors

    def check(self) -> None:
        """Raise the problem for every error recorded, if any (400 for types, else 422)."""
        if self.type_errors:
            errors = self.type_errors + self.value_errors
            raise BadRequest(_summary(errors), errors=errors)
        if self.value_errors:
            raise Unprocessable(_summary(self.value_errors), errors=self.value_errors)


def _summary(errors: list[dict[str, str]]) -> str:
    first = errors[0]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{first['field']}: {first['reason']}{more}"


def cents_to_number(cents: int) -> int | float:
    """The JSON number for an amount in cents (``1990`` -> ``19.9``, ``2000`` -> ``20``)."""
    return cents // 100 if cents % 100 == 0 else cents / 100


def path_id(request: web.Request, what: str, name: str = "id") -> int:
    """The positive integer in the path segment ``name``; :class:`NotFound` when it isn't one."""
    raw = request.match_info[name]
    if not raw.isascii() or not raw.isdigit() or len(raw) > 15 or int(raw) == 0:
        raise NotFound(f"no {what} with id {raw[:40]!r}")
    return int(raw)


def query_int(request: web.Request, name: str, default: int, minimum: int, maximum: int) -> int:
    """The integer query parameter ``name`` in ``[minimum, maximum]``; :class:`BadRequest` if not."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(
            f"query parameter {name!r} must be an integer, got {raw[:40]!r}",
            errors=[{"field": name, "reason": "expected an integer"}],
        ) from None
    if not minimum <= value <= maximum:
        raise BadRequest(
            f"query parameter {name!r} must be between {minimum} and {maximum}",
            errors=[{"field": name, "reason": f"must be between {minimum} and {maximum}"}],
        )
    return value
