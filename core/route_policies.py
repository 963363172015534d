"""Interim policy types for routes, until core/upstream.py and core/retry.py land.

Plain frozen dataclasses with the sections' keys, built by
:func:`core.route_config.build_policy`.
"""

from __future__ import annotations

import dataclasses

__all__ = ["BreakerPolicy", "OutlierPolicy", "RetryPolicy", "UpstreamPolicy"]


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
