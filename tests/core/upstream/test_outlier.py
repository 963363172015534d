from __future__ import annotations

import math

import pytest

from core.errors import SettingsError
from core.upstream.outlier import OutlierDetector, OutlierPolicy
from core.upstream.upstream import Endpoint


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def endpoints(n: int) -> list[Endpoint]:
    return [Endpoint(f"i{k}", "10.0.0.1", 8000 + k) for k in range(n)]


def fail(detector: OutlierDetector[Endpoint], ep: Endpoint, times: int, total: int) -> bool:
    """Report ``times`` failures; True if the last one ejected ``ep``."""
    ejected = False
    for _ in range(times):
        ejected = detector.failure(ep, total)
    return ejected


def test_defaults_follow_envoy_with_a_half_cap() -> None:
    policy = OutlierPolicy()
    assert policy.consecutive_failures == 5
    assert policy.base_ejection_time == 30.0
    assert policy.max_ejection_time == 300.0
    assert policy.max_ejection_percent == 50.0


def test_consecutive_failures_eject() -> None:
    clock = Clock()
    detector: OutlierDetector[Endpoint] = OutlierDetector(OutlierPolicy(), clock=clock)
    ep = endpoints(4)[0]
    assert not fail(detector, ep, 4, total=4)
    assert not ep.ejected
    assert detector.failure(ep, 4)
    assert ep.ejected
    assert ep.ejected_until == 130.0
    assert detector.ejected == {"i0": ep}
    assert detector.next_return == 130.0


def test_a_success_resets_the_count() -> None:
    detector: OutlierDetector[Endpoint] = OutlierDetector(OutlierPolicy(), clock=Clock())
    ep = endpoints(4)[0]
    fail(detector, ep, 4, total=4)
    detector.success(ep)
    assert not fail(detector, ep, 4, total=4)
    assert not ep.ejected
    assert detector.failure(ep, 4)


def test_failures_while_ejected_are_ignored() -> None:
    detector: OutlierDetector[Endpoint] = OutlierDetector(OutlierPolicy(), clock=Clock())
    ep = endpoints(4)[0]
    fail(detector, ep, 5, total=4)
    assert not fail(detector, ep, 20, total=4)
    assert ep.ejected_total == 1
    assert ep.consecutive_failures == 0


def test_endpoint_returns_when_its_time_is_up() -> None:
    clock = Clock()
    detector: OutlierDetector[Endpoint] = OutlierDetector(OutlierPolicy(), clock=clock)
    ep = endpoints(4)[0]
    fail(detector, ep, 5, total=4)
    assert detector.return_due(129.9) == []
    assert ep.ejected
    assert detector.return_due(130.0) == [ep]
    assert not ep.ejected
    assert detector.ejected == {}
    assert detector.next_return == math.inf


def test_ejection_time_grows_with_each_ejection_up_to_the_cap() -> None:
    clock = Clock()
    detector: OutlierDetector[Endpoint] = OutlierDetector(OutlierPolicy(), clock=clock)
    ep = endpoints(4)[0]
    durations = []
    for _ in range(12):
        fail(detector, ep, 5, total=4)
        durations.append(ep.ejected_until - clock.now)
        clock.now = ep.ejected_until
        detector.return_due(clock.now)
    assert durations == [30, 60, 90, 120, 150, 180, 210, 240, 270, 300, 300, 300]
    assert ep.ejected_total == 12


def test_time_in_rotation_lowers_the_multiplier() -> None:
    clock = Clock()
    detector: OutlierDetector[Endpoint] = OutlierDetector(OutlierPolicy(), clock=clock)
    ep = endpoints(4)[0]
    for _ in range(3):
        fail(detector, ep, 5, total=4)
        clock.now = ep.ejected_until
        detector.return_due(clock.now)
    assert ep.ejections == 3
    clock.now += 25.0  # two full decay intervals of 10 s in rotation: 3 -> 1, then +1
    fail(detector, ep, 5, total=4)
    assert ep.ejected_until - clock.now == 60.0
    clock.now = ep.ejected_until
    detector.return_due(clock.now)
    clock.now += 3600.0  # long healthy: back to the base
    fail(detector, ep, 5, total=4)
    assert ep.ejected_until - clock.now == 30.0


@pytest.mark.parametrize(
    ("total", "ejectable"),
    [(1, 0), (2, 1), (3, 1), (4, 2), (5, 2), (10, 5)],
)
def test_never_more_than_half_of_the_endpoints_are_ejected(total: int, ejectable: int) -> None:
    detector: OutlierDetector[Endpoint] = OutlierDetector(OutlierPolicy(), clock=Clock())
    eps = endpoints(total)
    for ep in eps:
        fail(detector, ep, 5, total)
    assert sum(ep.ejected for ep in eps) == ejectable
    assert len(detector.ejected) == ejectable


def test_endpoint_held_back_by_the_cap_is_ejected_once_room_is_made() -> None:
    clock = Clock()
    detector: OutlierDetector[Endpoint] = OutlierDetector(OutlierPolicy(), clock=clock)
    a, b = endpoints(2)
    fail(detector, a, 5, total=2)
    assert not fail(detector, b, 7, total=2)
    clock.now += 30.0
    detector.return_due(clock.now)
    assert detector.failure(b, 2)  # still failing: its count was kept
    assert b.ejected
    assert not a.ejected


def test_max_ejection_percent_100_may_eject_all() -> None:
    detector: OutlierDetector[Endpoint] = OutlierDetector(
        OutlierPolicy(max_ejection_percent=100), clock=Clock()
    )
    eps = endpoints(3)
    for ep in eps:
        fail(detector, ep, 5, total=3)
    assert all(ep.ejected for ep in eps)


def test_zero_consecutive_failures_disables_ejection() -> None:
    detector: OutlierDetector[Endpoint] = OutlierDetector(
        OutlierPolicy(consecutive_failures=0), clock=Clock()
    )
    ep = endpoints(4)[0]
    assert not fail(detector, ep, 100, total=4)
    assert not ep.ejected


def test_enforce_cap_returns_the_soonest_due_first() -> None:
    clock = Clock()
    detector: OutlierDetector[Endpoint] = OutlierDetector(OutlierPolicy(), clock=clock)
    eps = endpoints(4)
    fail(detector, eps[0], 5, total=4)
    clock.now += 1.0
    fail(detector, eps[1], 5, total=4)
    # Two endpoints leave: one ejected of the two left is the most allowed.
    back = detector.enforce_cap(2)
    assert back == [eps[0]]
    assert not eps[0].ejected
    assert eps[1].ejected
    assert detector.next_return == eps[1].ejected_until


def test_endpoint_returned_early_by_the_cap_decays_from_its_return() -> None:
    clock = Clock()
    detector: OutlierDetector[Endpoint] = OutlierDetector(OutlierPolicy(), clock=clock)
    ep = endpoints(2)[0]
    fail(detector, ep, 5, total=2)
    clock.now += 5.0
    detector.enforce_cap(1)
    assert ep.ejected_until == clock.now
    clock.now += 10.0  # one decay interval since it came back
    fail(detector, ep, 5, total=4)
    assert ep.ejected_until - clock.now == 30.0


def test_forget_drops_departed_endpoints() -> None:
    detector: OutlierDetector[Endpoint] = OutlierDetector(OutlierPolicy(), clock=Clock())
    eps = endpoints(4)
    fail(detector, eps[0], 5, total=4)
    detector.forget([eps[0]])
    assert detector.ejected == {}
    assert detector.next_return == math.inf


@pytest.mark.parametrize(
    "settings",
    [
        {"consecutive_failures": -1},
        {"base_ejection_time": 0},
        {"base_ejection_time": 60, "max_ejection_time": 30},
        {"max_ejection_percent": 101},
        {"decay_interval": 0},
    ],
)
def test_invalid_policy_is_refused(settings: dict[str, float]) -> None:
    with pytest.raises(SettingsError, match="outlier: "):
        OutlierPolicy(**settings)  # type: ignore[arg-type]
