"""Deep merge precedence, changed keys and read-only copies."""

from __future__ import annotations

from typing import Any

import pytest

from core.config.merge import changed_paths, deep_merge, freeze, thaw


def test_later_layers_win_and_tables_merge_key_by_key() -> None:
    application = {
        "log": {"level": "info"},
        "http": {"timeout": 10, "pool": {"size": 10, "idle": 30}},
    }
    app = {"http": {"timeout": 5, "pool": {"size": 50}}, "billing": {"currency": "EUR"}}
    profile = {"log": {"level": "warning"}, "http": {"pool": {"idle": 5}}}
    assert deep_merge(application, app, profile) == {
        "log": {"level": "warning"},
        "http": {"timeout": 5, "pool": {"size": 50, "idle": 5}},
        "billing": {"currency": "EUR"},
    }


def test_arrays_and_scalars_replace_and_tables_replace_scalars() -> None:
    assert deep_merge({"a": [1, 2], "b": 1, "c": {"x": 1}}, {"a": [3], "b": {"y": 2}, "c": 0}) == {
        "a": [3],
        "b": {"y": 2},
        "c": 0,
    }


def test_merge_leaves_its_layers_untouched() -> None:
    base: dict[str, Any] = {"t": {"a": 1}}
    over: dict[str, Any] = {"t": {"b": 2}}
    merged = deep_merge(base, over)
    merged["t"]["c"] = 3
    assert base == {"t": {"a": 1}}
    assert over == {"t": {"b": 2}}


def test_changed_paths_name_every_leaf_added_removed_or_changed() -> None:
    old = {"http": {"timeout": 5, "pool": {"size": 10}}, "log": {"level": "info"}, "x": 1}
    new = {"http": {"timeout": 6, "pool": {"size": 10}}, "log": "quiet", "y": {"z": 1}, "x": 1.0}
    assert changed_paths(old, new) == {"http.timeout", "log", "log.level", "y.z", "x"}
    assert changed_paths(new, new) == set()


def test_freeze_makes_a_deeply_read_only_copy() -> None:
    frozen = freeze({"a": {"b": [1, {"c": 2}]}})
    with pytest.raises(TypeError):
        frozen["a"]["b"] = 1
    assert frozen["a"]["b"] == (1, {"c": 2})
    with pytest.raises(TypeError):
        frozen["a"]["b"][1]["c"] = 3
    assert thaw(frozen) == {"a": {"b": [1, {"c": 2}]}}
