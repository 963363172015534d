"""Typed, immutable views of a config: a frozen dataclass built and checked per version.

A component declares its dynamic settings as a frozen dataclass::

    @dataclasses.dataclass(frozen=True)
    class Limits:
        max_body: int = 1_000_000
        timeout: float = 5.0
        modes: tuple[str, ...] = ("fast",)

and :meth:`core.config.client.ConfigClient.typed` gives a :class:`TypedView`
whose ``current`` is a ``Limits`` built from the config (or one table of it)
in force. :func:`build` does the conversion: it checks every value against
its field's type and raises ``ValueError`` naming the key, so a version that
doesn't fit is rejected before it is applied and the view keeps the last one
that did.

Supported field types: ``str``, ``int`` (not ``bool``), ``float`` (an
integer is accepted), ``bool``, ``Literal[...]``, unions (``X | None``),
``tuple[X, ...]``, ``tuple[X, Y]``, ``list[X]``, ``dict[str, X]`` and
``Mapping[str, X]`` (served read-only), ``Any``, and nested dataclasses for
tables. A key absent from the config takes the field's default (a field
without one is required); keys the dataclass doesn't declare are ignored, so
that an older build keeps working with a newer config.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, Generic, Literal, TypeVar

from core.config.merge import freeze

__all__ = ["TypedView", "build", "section_of"]

T = TypeVar("T")

_HINTS: dict[type[Any], dict[str, Any]] = {}


def build(cls: type[T], data: Mapping[str, Any], path: str = "") -> T:
    """An instance of the dataclass ``cls`` from ``data``; ``ValueError`` naming the bad key."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        key = f"{path}{f.name}"
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ValueError(f"{key}: required, missing")
            continue
        values[f.name] = _convert(hints[f.name], data[f.name], key)
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        # A __post_init__ check of the dataclass itself.
        raise ValueError(f"{path.rstrip('.') or cls.__name__}: {exc}") from None


def _kind(value: Any) -> str:
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list | tuple):
        return "an array"
    return type(value).__name__


def _convert(tp: Any, value: Any, key: str) -> Any:
    if tp is Any:
        return freeze(value)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, Mapping):
            raise ValueError(f"{key}: expected a table, got {_kind(value)}")
        return build(tp, value, key + ".")
    if origin is Literal:
        if value not in args or type(value) not in {type(a) for a in args}:
            allowed = ", ".join(repr(a) for a in args)
            raise ValueError(f"{key}: expected one of {allowed}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in args:
            if option is type(None):
                continue
            try:
                return _convert(option, value, key)
            except ValueError as exc:
                errors.append(str(exc).removeprefix(f"{key}: "))
        raise ValueError(f"{key}: {' or '.join(errors)}")
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise ValueError(f"{key}: expected an array, got {_kind(value)}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ValueError(f"{key}: expected {len(args)} items, got {len(value)}")
            return tuple(
                _convert(a, v, f"{key}[{i}]")
                for i, (a, v) in enumerate(zip(args, value, strict=True))
            )
        item = args[0] if args else Any
        items = [_convert(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ValueError(f"{key}: expected a table, got {_kind(value)}")
        item = args[1] if len(args) == 2 else Any
        converted = {k: _convert(item, v, f"{key}.{k}") for k, v in value.items()}
        return (
            types.MappingProxyType(converted) if origin is Mapping or tp is Mapping else converted
        )
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{key}: expected a boolean, got {_kind(value)}")
        return value
    if tp is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{key}: expected an integer, got {_kind(value)}")
        return value
    if tp is float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ValueError(f"{key}: expected a number, got {_kind(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"{key}: expected a string, got {_kind(value)}")
        return value
    raise TypeError(f"{key}: unsupported field type {tp!r}")


def section_of(config: Mapping[str, Any], section: str | None) -> Mapping[str, Any]:
    """The table at the dotted path ``section`` (empty when absent); ``ValueError`` if not a table."""
    if not section:
        return config
    node: Any = config
    for part in section.split("."):
        if not isinstance(node, Mapping):
            raise ValueError(f"{section}: expected a table")
        node = node.get(part, {})
    if not isinstance(node, Mapping):
        raise ValueError(f"{section}: expected a table, got {_kind(node)}")
    return node


class TypedView(Generic[T]):
    """The config in force (or its table ``section``) as a frozen ``cls``, one object per version.

    ``current`` is replaced only when a new version passes every validator
    and builds; until then it keeps the last good object. Reading it awaits
    nothing.
    """

    def __init__(self, cls: type[T], section: str | None = None) -> None:
        if not dataclasses.is_dataclass(cls) or not cls.__dataclass_params__.frozen:  # type: ignore[attr-defined]
            raise TypeError(f"{cls!r} must be a frozen dataclass (@dataclass(frozen=True))")
        self.cls = cls
        self.section = section
        self.version: str | None = None
        self._current: T | None = None

    @property
    def ready(self) -> bool:
        """Whether some version has been applied (``current`` would not raise)."""
        return self._current is not None

    @property
    def current(self) -> T:
        """The object for the version in force; ``LookupError`` before any config was applied."""
        if self._current is None:
            raise LookupError(f"no config applied yet for {self.cls.__name__}")
        return self._current

    def build(self, config: Mapping[str, Any]) -> T:
        """The object for ``config`` (``ValueError`` naming the key that doesn't fit)."""
        prefix = f"{self.section}." if self.section else ""
        return build(self.cls, section_of(config, self.section), prefix)

    def set(self, obj: T, version: str | None) -> None:
        self._current, self.version = obj, version
