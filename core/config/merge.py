"""Deep merge of config documents, the difference of two configs, read-only views.

The config service merges ``application < {app} < {app}-{profile}`` with
:func:`deep_merge`; clients compute which keys a new version changed with
:func:`changed_paths` and hand out :func:`freeze`-d copies that nobody can
mutate behind the client's back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

__all__ = ["changed_paths", "deep_merge", "freeze", "thaw"]


def deep_merge(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``layers``, each overriding the ones before it.

    Tables (mappings) merge key by key, recursively; any other value (a
    string, a number, an array, a table meeting a non-table) replaces what was
    there. The layers are not modified; the result shares no mapping with them
    (arrays and scalars are shared, as they are replaced whole, never merged).
    """
    out: dict[str, Any] = {}
    for layer in layers:
        _merge_into(out, layer)
    return out


def _merge_into(target: dict[str, Any], layer: Mapping[str, Any]) -> None:
    for key, value in layer.items():
        if isinstance(value, Mapping):
            current = target.get(key)
            if not isinstance(current, dict):
                current = {}
                target[key] = current
            _merge_into(current, value)
        else:
            target[key] = value


def changed_paths(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> set[str]:
    """Dotted paths of the leaves that differ between ``old`` and ``new``.

    A leaf is a non-table value; a key added, removed or changed is reported
    with its full path (``"http.timeouts.connect"``). A table replaced by a
    scalar (or the reverse) reports the key itself and every leaf under the
    table.
    """
    out: set[str] = set()
    for key in old.keys() | new.keys():
        path = f"{prefix}{key}"
        a, b = old.get(key, _MISSING), new.get(key, _MISSING)
        if type(a) in _SCALARS and type(b) is type(a) and a == b:
            continue
        a_table, b_table = isinstance(a, Mapping), isinstance(b, Mapping)
        if a_table and b_table:
            out |= changed_paths(a, b, path + ".")
            continue
        if a_table or b_table:
            if a is not _MISSING and b is not _MISSING:
                out.add(path)
            table = a if a_table else b
            out |= _leaves(table, path + ".") or {path}
            continue
        if a is _MISSING or b is _MISSING or type(a) is not type(b) or a != b:
            out.add(path)
    return out


def _leaves(table: Mapping[str, Any], prefix: str) -> set[str]:
    out: set[str] = set()
    for key, value in table.items():
        if isinstance(value, Mapping):
            out |= _leaves(value, f"{prefix}{key}.") or {f"{prefix}{key}"}
        else:
            out.add(f"{prefix}{key}")
    return out


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING: Any = _Missing()


def freeze(value: Any) -> Any:
    """A deeply read-only copy: mappings become ``MappingProxyType``, lists tuples."""
    kind = type(value)
    if kind in _SCALARS:
        return value
    if kind is dict or isinstance(value, Mapping):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if kind is list or kind is tuple:
        return tuple(freeze(v) for v in value)
    return value


# Exact types that freeze returns as they are (the checks above are hot: one
# per value of every config version applied).
_SCALARS = frozenset({str, int, float, bool})


def thaw(value: Any) -> Any:
    """The plain ``dict``/``list`` form of a :func:`freeze`-d value (for JSON, for copying)."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, Iterable) and not isinstance(value, str | bytes):
        return [thaw(v) for v in value]
    return value
