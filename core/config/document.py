"""What a config document is: its name, its parsers, its limits and its content hash.

A document is a TOML table (or the equivalent JSON object) named like
``application``, ``billing`` or ``billing-prod``. Everything that accepts a
document, from the HTTP API or from the config directory, goes through
:func:`parse` and :func:`check_document`, so a document in the store always
satisfies the same rules:

- its name matches :data:`NAME_RE`;
- it is at most :data:`MAX_BYTES` long as sent;
- it is a table, nested at most :data:`MAX_DEPTH` levels (the document itself
  is level 1, each table or array inside adds one);
- it holds no JSON ``null`` and no NaN or infinity, which TOML can't express
  and JSON can't carry (so every document can be served as JSON and as TOML).

TOML dates and times are kept as their ISO 8601 text.
"""

from __future__ import annotations

import hashlib
import math
import re
import tomllib
from collections.abc import Mapping
from typing import Any, Literal

import orjson

from core.errors import BadRequest, PayloadTooLarge, Unprocessable

__all__ = [
    "MAX_BYTES",
    "MAX_DEPTH",
    "NAME_RE",
    "Format",
    "check_document",
    "check_name",
    "content_hash",
    "parse",
]

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}\Z")
MAX_BYTES = 256 * 1024
MAX_DEPTH = 32

Format = Literal["json", "toml"]

_TOML_POSITION = re.compile(
    r"^(?P<reason>.*?)\s*\(at line (?P<line>\d+), column (?P<column>\d+)\)\Z"
)


def check_name(name: str, what: str = "document") -> str:
    """``name`` if it is a valid document (or app, or profile) name, else :class:`Unprocessable`."""
    if not NAME_RE.match(name):
        raise Unprocessable(
            f"invalid {what} name {name[:80]!r}: expected ^[a-z0-9][a-z0-9-]{{0,62}}$",
            errors=[{"field": what, "reason": "pattern"}],
        )
    return name


def parse(raw: bytes, fmt: Format, *, source: str = "the body") -> dict[str, Any]:
    """Parse and check one document; ``source`` names it in error messages.

    Raises :class:`PayloadTooLarge` (413) past :data:`MAX_BYTES`,
    :class:`BadRequest` (400) for malformed JSON or TOML, with ``line``,
    ``column`` and ``reason`` members, and :class:`Unprocessable` (422) for a
    well-formed document that breaks a rule (see the module docstring).
    """
    if len(raw) > MAX_BYTES:
        raise PayloadTooLarge(f"{source} is {len(raw)} bytes; a document is at most {MAX_BYTES}")
    try:
        doc = _parse_toml(raw, source) if fmt == "toml" else _parse_json(raw, source)
    except RecursionError:
        raise _too_deep(source) from None
    return check_document(doc, source=source)


def _parse_json(raw: bytes, source: str) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if exc.msg.startswith("depth limit"):
            raise _too_deep(source) from None
        raise _malformed("JSON", source, exc.lineno, exc.colno, exc.msg) from None


def _parse_toml(raw: bytes, source: str) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(
            f"malformed TOML in {source}: not UTF-8 (byte {exc.start})",
            errors=[{"source": source, "reason": "not UTF-8"}],
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        found = _TOML_POSITION.match(message)
        if found is None:
            line = text.rstrip("\n").count("\n") + 1 if "end of document" in message else None
            reason = message.replace("(at end of document)", "").strip()
            raise _malformed("TOML", source, line, None, reason) from None
        raise _malformed(
            "TOML", source, int(found["line"]), int(found["column"]), found["reason"]
        ) from None


def _malformed(
    kind: str, source: str, line: int | None, column: int | None, reason: str
) -> BadRequest:
    where = f" at line {line}" if line is not None else ""
    if column is not None:
        where += f", column {column}"
    error: dict[str, Any] = {"source": source, "line": line, "column": column, "reason": reason}
    return BadRequest(f"malformed {kind} in {source}{where}: {reason}", errors=[error])


def _too_deep(source: str) -> Unprocessable:
    return Unprocessable(
        f"{source} is nested deeper than {MAX_DEPTH} levels",
        errors=[{"source": source, "reason": f"nesting deeper than {MAX_DEPTH}"}],
    )


def check_document(doc: Any, *, source: str = "the document") -> dict[str, Any]:
    """``doc`` if it is a valid document (see the module docstring), else :class:`Unprocessable`."""
    if not isinstance(doc, dict):
        kind = "an array" if isinstance(doc, list) else type(doc).__name__
        raise Unprocessable(
            f"{source} must be a table (a JSON object), got {kind}",
            errors=[{"source": source, "reason": "not a table"}],
        )
    # Iterative walk: the depth of the input must not bound Python's stack.
    stack: list[tuple[Any, int, str]] = [(doc, 1, "")]
    while stack:
        value, depth, path = stack.pop()
        if isinstance(value, dict | list):
            if depth > MAX_DEPTH:
                raise _too_deep(source)
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                stack.append((item, depth + 1, f"{path}.{key}" if path else str(key)))
        elif value is None:
            raise Unprocessable(
                f"{source}: {path} is null; a config value can't be null (TOML has no null): "
                "leave the key out instead",
                errors=[{"source": source, "field": path, "reason": "null"}],
            )
        elif isinstance(value, float) and not math.isfinite(value):
            raise Unprocessable(
                f"{source}: {path} is {value}; only finite numbers are allowed",
                errors=[{"source": source, "field": path, "reason": "not finite"}],
            )
    # Dates and times become their ISO text now, so that what is hashed,
    # stored and served is the same JSON.
    normal: dict[str, Any] = orjson.loads(orjson.dumps(doc))
    return normal


def content_hash(doc: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the document's canonical JSON (keys sorted): equal content, equal hash."""
    return hashlib.sha256(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)).hexdigest()


def canonical(doc: Mapping[str, Any]) -> bytes:
    """The document as stored: compact JSON, keys in their original order."""
    return orjson.dumps(doc)
