"""Typed views: a frozen dataclass built from a config, with errors that name the key."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any, Literal

import pytest

from core.config.typed import TypedView, build


@dataclasses.dataclass(frozen=True)
class Pool:
    size: int = 10
    idle: float = 30.0


@dataclasses.dataclass(frozen=True)
class Http:
    timeout: float
    mode: Literal["fast", "safe"] = "safe"
    pool: Pool = Pool()
    hosts: tuple[str, ...] = ()
    pair: tuple[int, str] | None = None
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    extra: Any = None

    def __post_init__(self) -> None:
        if self.timeout <= 0:
            raise ValueError("timeout must be > 0")


def test_builds_nested_values_with_defaults_and_ignores_unknown_keys() -> None:
    http = build(Http, {"timeout": 5, "pool": {"size": 3}, "hosts": ["a", "b"],
                        "pair": [1, "x"], "headers": {"k": "v"}, "extra": {"l": [1]},
                        "unknown": True})  # fmt: skip
    assert http.timeout == 5.0
    assert isinstance(http.timeout, float)
    assert http.pool == Pool(3, 30.0)
    assert http.hosts == ("a", "b")
    assert http.pair == (1, "x")
    assert http.headers == {"k": "v"}
    with pytest.raises(TypeError):
        http.headers["k"] = "w"  # type: ignore[index]
    assert http.extra == {"l": (1,)}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "timeout: required, missing"),
        ({"timeout": "5"}, "timeout: expected a number, got str"),
        ({"timeout": True}, "timeout: expected a number, got bool"),
        ({"timeout": 1, "mode": "slow"}, "mode: expected one of 'fast', 'safe', got 'slow'"),
        ({"timeout": 1, "pool": {"size": 1.5}}, "pool.size: expected an integer, got float"),
        ({"timeout": 1, "pool": 3}, "pool: expected a table, got int"),
        ({"timeout": 1, "hosts": ["a", 2]}, "hosts[1]: expected a string, got int"),
        ({"timeout": 1, "pair": [1]}, "pair: expected 2 items, got 1"),
        ({"timeout": 0}, "Http: timeout must be > 0"),
    ],
)
def test_a_value_that_does_not_fit_names_its_key(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        build(Http, data)


def test_a_view_reads_a_dotted_section_and_requires_a_frozen_dataclass() -> None:
    view = TypedView(Pool, "http.pool")
    view.set(view.build({"http": {"pool": {"size": 7}}}), "v1")
    assert view.current == Pool(7, 30.0)
    assert view.version == "v1"
    with pytest.raises(ValueError, match=re.escape("http.pool.size: expected an integer")):
        view.build({"http": {"pool": {"size": "x"}}})

    @dataclasses.dataclass
    class Mutable:
        a: int = 0

    with pytest.raises(TypeError, match="frozen"):
        TypedView(Mutable)


def test_a_view_before_any_config_says_so() -> None:
    with pytest.raises(LookupError):
        _ = TypedView(Pool).current
