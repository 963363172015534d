from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable

import pytest

from core.errors import SettingsError
from core.registry.store import Instance
from core.upstream.breaker import BreakerPolicy, State
from core.upstream.outlier import OutlierPolicy
from core.upstream.retry import RetryPolicy
from core.upstream.upstream import Endpoint, Target, Upstream, UpstreamPolicy


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(clock: Clock, n: int = 3, policy: UpstreamPolicy | None = None, seed: int = 1) -> Upstream:
    up = Upstream("billing", policy or UpstreamPolicy(), clock=clock, rng=random.Random(seed))
    up.update([Target(f"i{k}", "10.0.0.1", 8000 + k) for k in range(n)])
    return up


def chosen(up: Upstream, exclude: tuple[str, ...] = ()) -> Endpoint:
    ep = up.choose(exclude)
    assert ep is not None
    return ep


def breaker_state(up: Upstream) -> State:
    return up.breaker.state


def fail(up: Upstream, key: str, times: int = 1, kind: str = "connect") -> None:
    for _ in range(times):
        ep = up.endpoints[key]
        up.begin(ep)
        up.failed(ep, kind)


def eligible(up: Upstream, picks: int = 60) -> set[str]:
    return {chosen(up).key for _ in range(picks)}


def request(
    up: Upstream,
    works: Callable[[Endpoint], bool],
    method: str = "GET",
    rp: RetryPolicy | None = None,
) -> tuple[bool, list[str]]:
    """One request as the data plane runs it; ``works(ep)`` says whether an attempt succeeds."""
    rp = rp or RetryPolicy()
    up.budget.deposit()
    tried: list[str] = []
    attempt = 0
    while True:
        attempt += 1
        ep = up.choose(tried)
        if ep is None or not up.breaker.try_acquire():
            return False, tried
        up.begin(ep)
        tried.append(ep.key)
        if works(ep):
            up.succeeded(ep)
            return True, tried
        up.failed(ep, "connect")
        if not up.retry_allowed(rp, "connect", method, attempt, False):
            return False, tried


# -- membership ---------------------------------------------------------------------


def test_update_sets_the_endpoints_in_order() -> None:
    up = make(Clock())
    assert list(up.endpoints) == ["i0", "i1", "i2"]
    ep = up.endpoints["i1"]
    assert (ep.host, ep.port, ep.scheme, ep.weight, ep.url) == (
        "10.0.0.1",
        8001,
        "http",
        1,
        "http://10.0.0.1:8001",
    )


def test_update_keeps_the_state_of_endpoints_that_stay() -> None:
    up = make(Clock())
    kept = up.endpoints["i1"]
    up.begin(kept)
    fail(up, "i1", 2)
    up.update([Target("i1", "10.0.0.1", 8001, "http", 4), Target("i9", "10.0.0.9", 80)])
    assert up.endpoints["i1"] is kept
    assert kept.outstanding == 1
    assert kept.failures == 2
    assert kept.consecutive_failures == 2
    assert kept.weight == 4
    assert list(up.endpoints) == ["i1", "i9"]


def test_an_endpoint_at_a_new_address_starts_afresh() -> None:
    up = make(Clock())
    fail(up, "i1", 2)
    up.update([Target("i1", "10.0.0.2", 8001)])
    assert up.endpoints["i1"].failures == 0
    assert up.endpoints["i1"].url == "http://10.0.0.2:8001"


def test_ipv6_endpoint_url_has_brackets() -> None:
    up = make(Clock(), 0)
    up.update([Target("v6", "::1", 9000, "https")])
    assert up.endpoints["v6"].url == "https://[::1]:9000"


def test_update_instances_takes_up_instances_with_their_weight() -> None:
    up = make(Clock(), 0)
    up.update_instances(
        [
            Instance("billing", "a", "10.0.0.1", 80, metadata={"weight": "5"}),
            Instance("billing", "b", "10.0.0.2", 80, status="OUT_OF_SERVICE"),
            Instance("billing", "c", "10.0.0.3", 443, scheme="https"),
            Instance("billing", "d", "10.0.0.4", 80, metadata={"weight": "heavy"}),
            Instance("billing", "e", "10.0.0.5", 80, metadata={"weight": "-3"}),
            Instance("billing", "f", "10.0.0.6", 80, metadata={"weight": "99999"}),
        ]
    )
    assert {k: ep.weight for k, ep in up.endpoints.items()} == {
        "a": 5,
        "c": 1,
        "d": 1,
        "e": 1,
        "f": 1000,
    }
    assert up.endpoints["c"].url == "https://10.0.0.3:443"


def test_no_endpoint_means_none_chosen() -> None:
    up = make(Clock(), 0)
    assert up.choose() is None
    up.update([Target("a", "h", 1)])
    up.update([])
    assert up.choose() is None


def test_round_robin_by_default_spreads_evenly() -> None:
    up = make(Clock())
    assert Counter(chosen(up).key for _ in range(300)) == {"i0": 100, "i1": 100, "i2": 100}


def test_retry_goes_to_another_endpoint_while_one_exists() -> None:
    up = make(Clock())
    first = chosen(up)
    second = chosen(up, (first.key,))
    third = chosen(up, (first.key, second.key))
    assert len({first.key, second.key, third.key}) == 3
    assert chosen(up, (first.key, second.key, third.key)).key in up.endpoints


# -- outlier ejection through the upstream ------------------------------------------


def test_failing_endpoint_is_ejected_and_comes_back() -> None:
    clock = Clock()
    up = make(clock)
    fail(up, "i0", 4, "5xx")
    assert eligible(up) == {"i0", "i1", "i2"}
    fail(up, "i0", 1, "5xx")
    assert eligible(up) == {"i1", "i2"}
    clock.now += 29.0
    assert eligible(up) == {"i1", "i2"}
    clock.now += 1.0
    assert eligible(up) == {"i0", "i1", "i2"}


def test_every_failure_kind_counts_toward_ejection() -> None:
    up = make(Clock())
    for kind in ("connect", "5xx", "reset", "timeout", "connect"):
        fail(up, "i0", 1, kind)
    assert up.endpoints["i0"].ejected
    assert up.describe()["failures"] == {"5xx": 1, "connect": 2, "reset": 1, "timeout": 1}


def test_a_success_in_between_keeps_an_endpoint_in() -> None:
    up = make(Clock())
    for _ in range(3):
        fail(up, "i0", 4)
        ep = up.endpoints["i0"]
        up.begin(ep)
        up.succeeded(ep)
    assert eligible(up) == {"i0", "i1", "i2"}


def test_ejection_time_grows_for_a_flapping_endpoint() -> None:
    clock = Clock()
    up = make(clock)
    out_for = []
    for _ in range(3):
        fail(up, "i0", 5)
        out_for.append(up.describe()["endpoints"][0]["ejected_for"])
        clock.now = up.endpoints["i0"].ejected_until
        assert "i0" in eligible(up)
    assert out_for == [30.0, 60.0, 90.0]


def test_at_most_half_of_the_endpoints_are_ejected() -> None:
    up = make(Clock(), 4)
    for key in up.endpoints:
        fail(up, key, 10)
    assert sum(ep.ejected for ep in up.endpoints.values()) == 2
    assert len(eligible(up)) == 2


def test_single_endpoint_is_never_ejected() -> None:
    up = make(Clock(), 1)
    fail(up, "i0", 50)
    assert chosen(up).key == "i0"


def test_endpoints_leaving_bring_back_ejected_ones_within_the_cap() -> None:
    up = make(Clock(), 2)
    fail(up, "i0", 5)
    assert eligible(up) == {"i1"}
    up.update([Target("i0", "10.0.0.1", 8000)])
    assert eligible(up) == {"i0"}


def test_failure_reported_for_a_departed_endpoint_changes_nothing() -> None:
    up = make(Clock(), 4)
    gone = up.endpoints["i0"]
    for _ in range(5):
        up.begin(gone)
    up.update([Target(f"i{k}", "10.0.0.1", 8000 + k) for k in (1, 2, 3)])
    for _ in range(5):
        up.failed(gone, "connect")
    assert gone.outstanding == 0
    assert not gone.ejected
    assert eligible(up) == {"i1", "i2", "i3"}


def test_failures_from_attempts_begun_before_ejection_do_not_extend_it() -> None:
    clock = Clock()
    up = make(clock)
    ep = up.endpoints["i0"]
    for _ in range(8):
        up.begin(ep)
    for _ in range(8):
        up.failed(ep, "timeout")
    assert ep.ejected_total == 1
    assert ep.ejected_until == clock.now + 30.0


# -- accounting and the breaker -----------------------------------------------------


def test_attempt_accounting() -> None:
    up = make(Clock())
    ep = up.endpoints["i0"]
    for _ in range(3):
        up.begin(ep)
    assert ep.outstanding == 3
    up.succeeded(ep)
    up.failed(ep, "reset")
    up.released(ep)
    assert (ep.outstanding, ep.requests, ep.failures) == (0, 3, 1)
    assert up.breaker.successful_calls == 1
    assert up.breaker.failed_calls == 1


def test_failures_across_endpoints_open_the_breaker() -> None:
    policy = UpstreamPolicy(
        breaker=BreakerPolicy(sliding_window_size=10, minimum_number_of_calls=10),
        outlier=OutlierPolicy(consecutive_failures=0),
    )
    clock = Clock()
    up = make(clock, policy=policy)
    for _ in range(10):
        ep = chosen(up)
        assert up.breaker.try_acquire()
        up.begin(ep)
        up.failed(ep, "5xx")
    assert not up.breaker.try_acquire()
    assert up.breaker.retry_after() == 1.0
    assert up.describe()["breaker"]["state"] == "OPEN"


def test_released_attempt_returns_the_half_open_permit() -> None:
    policy = UpstreamPolicy(
        breaker=BreakerPolicy(
            sliding_window_size=4,
            minimum_number_of_calls=4,
            permitted_number_of_calls_in_half_open_state=1,
        )
    )
    clock = Clock()
    up = make(clock, policy=policy)
    fail(up, "i0", 4)
    clock.now += 10.0
    assert up.breaker.try_acquire()
    assert not up.breaker.try_acquire()
    up.begin(up.endpoints["i1"])
    up.released(up.endpoints["i1"])
    assert up.breaker.try_acquire()


def test_a_new_registration_of_an_ejected_instance_is_eligible_at_once() -> None:
    clock = Clock()
    up = Upstream("inventory", UpstreamPolicy(), clock=clock, rng=random.Random(1))
    first = [
        Target("inv-1", "10.0.0.1", 8001, generation="t1/100"),
        Target("inv-2", "10.0.0.1", 8002, generation="t1/101"),
    ]
    up.update(first)
    fail(up, "inv-1", 5)
    assert eligible(up) == {"inv-2"}
    # The same registration again (a heartbeat, a status read back): still out.
    up.update(first)
    assert eligible(up) == {"inv-2"}
    # Restarted on the same address: a new process, a new registration.
    up.update([first[0]._replace(generation="t2/200"), first[1]])
    assert eligible(up) == {"inv-1", "inv-2"}
    assert up.endpoints["inv-1"].failures == 0


def test_an_instance_that_keeps_failing_after_restart_is_ejected_again() -> None:
    clock = Clock()
    up = Upstream("inventory", UpstreamPolicy(), clock=clock, rng=random.Random(1))
    targets = [Target("a", "h", 1, generation="g1"), Target("b", "h", 2, generation="g1")]
    up.update(targets)
    fail(up, "a", 5)
    up.update([targets[0]._replace(generation="g2"), targets[1]])
    fail(up, "a", 5)
    assert eligible(up) == {"b"}


def test_update_instances_tells_registrations_apart() -> None:
    up = make(Clock(), 0)
    base = Instance(
        service="s", id="a", host="h", port=1, registered_at="t1", metadata={"pid": "7"}
    )
    up.update_instances([base])
    ep = up.endpoints["a"]
    up.update_instances([base])
    assert up.endpoints["a"] is ep
    up.update_instances([Instance(**{**base.to_dict(), "metadata": {"pid": "8"}})])
    assert up.endpoints["a"] is not ep


def test_a_new_instance_ends_the_open_breakers_wait() -> None:
    clock = Clock()
    policy = UpstreamPolicy(
        breaker=BreakerPolicy(sliding_window_size=4, minimum_number_of_calls=4),
    )
    up = Upstream("billing", policy, clock=clock, rng=random.Random(1))
    up.update([Target("only", "h", 1, generation="g1")])
    fail(up, "only", 4)
    assert breaker_state(up) is State.OPEN
    up.update([Target("only", "h", 1, generation="g2")])  # restarted
    assert breaker_state(up) is State.HALF_OPEN
    assert up.breaker.try_acquire()
    assert up.probes == 1


def test_a_dependency_failure_counts_against_neither_ejection_nor_breaker() -> None:
    clock = Clock()
    policy = UpstreamPolicy(
        breaker=BreakerPolicy(sliding_window_size=4, minimum_number_of_calls=4),
    )
    up = make(clock, 2, policy)
    for _ in range(20):
        ep = up.endpoints["i0"]
        assert up.breaker.try_acquire()
        up.begin(ep)
        up.dependency_failed(ep)
    assert breaker_state(up) is State.CLOSED
    assert eligible(up) == {"i0", "i1"}
    assert up.endpoints["i0"].outstanding == 0
    assert up.describe()["dependency_failures"] == 20
    assert up.failure_counts["5xx"] == 0


def test_a_dependency_failure_gives_a_half_open_permit_back() -> None:
    clock = Clock()
    policy = UpstreamPolicy(
        breaker=BreakerPolicy(
            sliding_window_size=4,
            minimum_number_of_calls=4,
            permitted_number_of_calls_in_half_open_state=1,
        )
    )
    up = make(clock, 1, policy)
    fail(up, "i0", 4)
    clock.now += 1.0
    assert up.breaker.try_acquire()
    assert not up.breaker.try_acquire()
    up.begin(up.endpoints["i0"])
    up.dependency_failed(up.endpoints["i0"])
    assert up.breaker.try_acquire()


def test_least_request_policy_prefers_the_endpoint_with_fewer_in_flight() -> None:
    up = make(Clock(), 2, UpstreamPolicy(balancer="least_request"))
    busy = up.endpoints["i0"]
    for _ in range(5):
        up.begin(busy)
    assert eligible(up) == {"i1"}


def test_weighted_policy_spreads_by_weight() -> None:
    up = make(Clock(), 0, UpstreamPolicy(balancer="weighted"))
    up.update([Target("a", "h", 1, "http", 3), Target("b", "h", 2, "http", 1)])
    assert Counter(chosen(up).key for _ in range(400)) == {"a": 300, "b": 100}


# -- hot reload ---------------------------------------------------------------------


def test_set_policy_keeps_endpoint_and_breaker_state() -> None:
    clock = Clock()
    up = make(
        clock,
        policy=UpstreamPolicy(
            breaker=BreakerPolicy(sliding_window_size=5, minimum_number_of_calls=5)
        ),
    )
    fail(up, "i0", 5)
    assert breaker_state(up) is State.OPEN
    up.set_policy(UpstreamPolicy(balancer="least_request"))
    assert up.policy.balancer == "least_request"
    assert up.endpoints["i0"].ejected
    assert eligible(up) == {"i1", "i2"}
    assert not up.breaker.try_acquire()


def test_set_policy_with_a_lower_cap_brings_endpoints_back() -> None:
    up = make(Clock(), 4)
    fail(up, "i0", 5)
    fail(up, "i1", 5)
    up.set_policy(UpstreamPolicy(outlier=OutlierPolicy(max_ejection_percent=25)))
    assert len(eligible(up)) == 3


def test_invalid_balancer_is_refused() -> None:
    with pytest.raises(SettingsError, match="balancer must be one of round_robin"):
        UpstreamPolicy(balancer="random")


def test_unknown_failure_kind_is_a_programming_error() -> None:
    up = make(Clock())
    ep = up.endpoints["i0"]
    up.begin(ep)
    with pytest.raises(KeyError):
        up.failed(ep, "teapot")


# -- retries ------------------------------------------------------------------------


def test_connect_retries_are_not_charged_to_the_budget() -> None:
    up = make(
        Clock(), policy=UpstreamPolicy(retry_budget_ratio=0.0, retry_budget_min_per_second=0.0)
    )
    rp = RetryPolicy()
    assert up.retry_allowed(rp, "connect", "POST", 1, False)
    assert not up.retry_allowed(rp, "reset", "GET", 1, False)
    assert up.budget.exhausted == 1


def test_retry_allowed_asks_the_policy_before_the_budget() -> None:
    up = make(
        Clock(), policy=UpstreamPolicy(retry_budget_ratio=0.0, retry_budget_min_per_second=0.1)
    )
    rp = RetryPolicy()
    assert not up.retry_allowed(rp, "reset", "POST", 1, False)  # not idempotent: budget untouched
    assert up.retry_allowed(rp, "5xx", "GET", 1, False, 503)  # the one retry of the floor
    assert not up.retry_allowed(rp, "5xx", "GET", 1, False, 503)


def test_one_dead_endpoint_of_two_costs_no_request() -> None:
    clock = Clock()
    up = make(clock, 2)
    dead = "i0"
    results = [request(up, lambda ep: ep.key != dead) for _ in range(200)]
    assert all(ok for ok, _ in results)
    assert up.endpoints[dead].ejected
    assert up.endpoints[dead].failures == 5  # ejected after 5, then left alone
    assert breaker_state(up) is State.CLOSED


@pytest.mark.parametrize("balancer", ["round_robin", "least_request", "weighted"])
def test_one_dead_endpoint_of_two_under_load_leaves_the_breaker_closed(balancer: str) -> None:
    """A refused connection looks idle to P2C; the default window outlasts ejection's 5 failures."""
    for seed in range(20):
        up = make(Clock(), 2, UpstreamPolicy(balancer=balancer), seed=seed)
        for _ in range(3):  # slow requests in flight on the live endpoint
            up.begin(up.endpoints["i1"])
        results = [request(up, lambda ep: ep.key == "i1") for _ in range(100)]
        assert all(ok for ok, _ in results)
        assert up.breaker.opened == 0


def test_whole_service_down_opens_the_breaker_then_recovers() -> None:
    clock = Clock()
    up = make(clock, 3)
    down = True
    results = [request(up, lambda ep: not down) for _ in range(30)]
    assert not any(ok for ok, _ in results)
    assert breaker_state(up) is State.OPEN
    # while open, requests fail fast without touching an endpoint
    before = sum(ep.requests for ep in up.endpoints.values())
    assert request(up, lambda ep: True) == (False, [])
    assert sum(ep.requests for ep in up.endpoints.values()) == before
    down = False
    clock.now += 10.0
    assert all(request(up, lambda ep: not down)[0] for _ in range(10))
    assert breaker_state(up) is State.CLOSED


def test_describe_shows_endpoints_breaker_and_budget() -> None:
    clock = Clock()
    up = make(clock, 2)
    fail(up, "i0", 5)
    up.begin(up.endpoints["i1"])
    clock.now += 12.5
    page = up.describe()
    assert page["name"] == "billing"
    assert page["balancer"] == "round_robin"
    assert page["eligible"] == 1
    assert page["endpoints"] == [
        {
            "key": "i0",
            "url": "http://10.0.0.1:8000",
            "weight": 1,
            "outstanding": 0,
            "requests": 5,
            "failures": 5,
            "consecutive_failures": 0,
            "ejected": True,
            "ejected_for": 17.5,
            "ejections": 1,
            "ejected_total": 1,
        },
        {
            "key": "i1",
            "url": "http://10.0.0.1:8001",
            "weight": 1,
            "outstanding": 1,
            "requests": 1,
            "failures": 0,
            "consecutive_failures": 0,
            "ejected": False,
            "ejected_for": 0.0,
            "ejections": 0,
            "ejected_total": 0,
        },
    ]
    assert page["breaker"]["state"] == "CLOSED"
    assert page["breaker"]["failed_calls"] == 5
    assert page["retry_budget"]["retries"] == 0


def test_describe_shows_an_endpoint_back_once_its_time_is_up() -> None:
    clock = Clock()
    up = make(clock, 2)
    fail(up, "i0", 5)
    clock.now += 30.0
    page = up.describe()
    assert page["eligible"] == 2
    assert page["endpoints"][0]["ejected"] is False
