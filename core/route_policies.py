"""Interim policy types for routes, until core/upstream.py and core/retry.py land.

Plain frozen dataclasses with the sections' keys; :func:`build_policy` makes
any such dataclass from a config mapping, rejecting unknown keys and values of
the wrong type.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

__all__ = ["BreakerPolicy", "OutlierPolicy", "RetryPolicy", "UpstreamPolicy", "build_policy"]

T = TypeVar("T")


@dataclasses.dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 3
    budget: float = 0.2

    def __post_init__(self) -> None:
        if not 1 <= self.attempts <= 10:
            raise ValueError(f"attempts: expected 1-10, got {self.attempts}")
        if not 0 <= self.budget <= 1:
            raise ValueError(f"budget: expected 0-1, got {self.budget}")


@dataclasses.dataclass(frozen=True, slots=True)
class BreakerPolicy:
    window: int = 20
    failure_rate_threshold: float = 50.0
    minimum_calls: int = 10
    wait_in_open: float = 5.0
    permitted_half_open_calls: int = 3


@dataclasses.dataclass(frozen=True, slots=True)
class OutlierPolicy:
    consecutive_failures: int = 5
    base_ejection: float = 1.0
    max_ejection: float = 30.0


@dataclasses.dataclass(frozen=True, slots=True)
class UpstreamPolicy:
    balancer: str = "round_robin"
    breaker: BreakerPolicy = BreakerPolicy()
    outlier: OutlierPolicy = OutlierPolicy()


def build_policy(cls: type[T], doc: Mapping[str, Any]) -> T:
    """``cls(**doc)`` for a dataclass of scalar fields; ValueError naming the bad key."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key, value in doc.items():
        if key not in fields:
            raise ValueError(f"unknown key {key!r}; expected one of {', '.join(sorted(fields))}")
        tp = hints[key]
        if tp is float:
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            ok = ok and math.isfinite(value) and value >= 0
        elif tp is int:
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        else:
            ok = isinstance(value, tp)
        if not ok:
            raise ValueError(f"{key}: expected a non-negative {tp.__name__}, got {value!r}")
    return cls(**doc)
