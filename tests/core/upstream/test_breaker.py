from __future__ import annotations

import pytest

from core.errors import SettingsError
from core.upstream.breaker import BreakerPolicy, CircuitBreaker, State


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(clock: Clock, **settings: float | int | bool) -> CircuitBreaker:
    policy = BreakerPolicy(
        **{
            "sliding_window_size": 10,
            "failure_rate_threshold": 50.0,
            "minimum_number_of_calls": 4,
            "wait_duration_in_open_state": 10.0,
            "permitted_number_of_calls_in_half_open_state": 3,
            **settings,
        }  # type: ignore[arg-type]
    )
    return CircuitBreaker("billing", policy, clock=clock)


def state(breaker: CircuitBreaker) -> State:
    """The state as a caller reads it (a function, so mypy does not narrow it between reads)."""
    return breaker.state


def calls(breaker: CircuitBreaker, outcomes: str) -> None:
    """Run one acquired call per character: ``s`` succeeds, ``f`` fails."""
    for outcome in outcomes:
        assert breaker.try_acquire()
        if outcome == "s":
            breaker.on_success()
        else:
            breaker.on_error()


def test_default_policy_suits_a_gateway() -> None:
    policy = BreakerPolicy()
    assert policy.sliding_window_size == 50
    assert policy.failure_rate_threshold == 50.0
    assert policy.minimum_number_of_calls == 20
    assert policy.wait_duration_in_open_state == 1.0
    assert policy.exponential_backoff_multiplier == 2.0
    assert policy.exponential_max_wait_duration_in_open_state == 10.0
    assert policy.permitted_number_of_calls_in_half_open_state == 5


def probe(breaker: CircuitBreaker, clock: Clock, outcomes: str) -> None:
    """Wait out the ``OPEN`` wait, then run the half-open probes."""
    clock.now += breaker.retry_after()
    calls(breaker, outcomes)


def test_open_wait_doubles_on_each_failed_probe_up_to_the_maximum() -> None:
    clock = Clock()
    breaker = make(
        clock, wait_duration_in_open_state=1.0, exponential_max_wait_duration_in_open_state=5.0
    )
    calls(breaker, "ffff")
    waits = [breaker.retry_after()]
    for _ in range(4):
        probe(breaker, clock, "fff")
        assert state(breaker) is State.OPEN
        waits.append(breaker.retry_after())
    assert waits == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert breaker.describe()["wait_duration_in_open_state"] == 5.0


def test_closing_resets_the_wait_to_the_first() -> None:
    clock = Clock()
    breaker = make(clock, wait_duration_in_open_state=1.0)
    calls(breaker, "ffff")
    probe(breaker, clock, "fff")
    probe(breaker, clock, "fff")
    assert breaker.retry_after() == 4.0
    probe(breaker, clock, "sss")
    assert state(breaker) is State.CLOSED
    calls(breaker, "ffff")
    assert breaker.retry_after() == 1.0


def test_a_multiplier_of_one_keeps_a_fixed_wait() -> None:
    clock = Clock()
    breaker = make(clock, wait_duration_in_open_state=3.0, exponential_backoff_multiplier=1.0)
    calls(breaker, "ffff")
    probe(breaker, clock, "fff")
    assert breaker.retry_after() == 3.0


def test_a_first_wait_above_the_maximum_stays_fixed() -> None:
    # Tables written before the backoff existed (wait 30 s) keep their wait.
    clock = Clock()
    breaker = make(clock, wait_duration_in_open_state=30.0)
    calls(breaker, "ffff")
    probe(breaker, clock, "fff")
    assert breaker.retry_after() == 30.0


def test_probe_ends_the_open_wait_at_once() -> None:
    clock = Clock()
    breaker = make(clock, wait_duration_in_open_state=1.0)
    assert not breaker.probe()  # closed: nothing to end
    calls(breaker, "ffff")
    probe(breaker, clock, "fff")
    assert breaker.retry_after() == 2.0
    assert breaker.probe()
    assert state(breaker) is State.HALF_OPEN
    calls(breaker, "fff")  # the probe failed: the backoff goes on
    assert breaker.retry_after() == 4.0
    assert breaker.probe()
    calls(breaker, "sss")
    assert state(breaker) is State.CLOSED


@pytest.mark.parametrize(
    ("field", "value"),
    [("exponential_backoff_multiplier", 0.5), ("exponential_max_wait_duration_in_open_state", -1)],
)
def test_bad_backoff_settings_are_refused(field: str, value: float) -> None:
    with pytest.raises(SettingsError, match=f"breaker: {field}"):
        BreakerPolicy(**{field: value})  # type: ignore[arg-type]


def test_closed_breaker_grants_every_call() -> None:
    breaker = make(Clock())
    assert state(breaker) is State.CLOSED
    assert all(breaker.try_acquire() for _ in range(1000))


def test_failures_below_minimum_number_of_calls_do_not_open() -> None:
    breaker = make(Clock())
    calls(breaker, "fff")
    assert state(breaker) is State.CLOSED
    assert breaker.failure_rate() == -1.0


def test_opens_when_failure_rate_reaches_threshold_exactly() -> None:
    breaker = make(Clock())
    calls(breaker, "ssf")
    calls(breaker, "f")  # 2 of 4 = 50%: Resilience4j opens at >= threshold
    assert state(breaker) is State.OPEN
    assert breaker.opened == 1


def test_stays_closed_just_under_threshold() -> None:
    breaker = make(Clock(), minimum_number_of_calls=10)
    calls(breaker, "ssssssffff")  # 4 of 10 = 40%
    assert state(breaker) is State.CLOSED
    assert breaker.failure_rate() == 40.0
    calls(breaker, "f")  # window slides: drops an s, 5 of 10 = 50%
    assert state(breaker) is State.OPEN


def test_window_forgets_calls_older_than_its_size() -> None:
    breaker = make(Clock(), minimum_number_of_calls=10)
    calls(breaker, "ffff" + "s" * 6)  # 40%
    calls(breaker, "ssss")  # the four failures slid out
    assert breaker.failure_rate() == 0.0
    calls(breaker, "ffff")  # 4 of the last 10
    assert state(breaker) is State.CLOSED
    assert breaker.describe()["failed_buffered_calls"] == 4


def test_minimum_above_window_size_means_a_full_window() -> None:
    breaker = make(Clock(), sliding_window_size=5, minimum_number_of_calls=100)
    calls(breaker, "ffff")
    assert state(breaker) is State.CLOSED
    calls(breaker, "f")
    assert state(breaker) is State.OPEN


def test_open_breaker_refuses_calls_and_counts_them() -> None:
    clock = Clock()
    breaker = make(clock)
    calls(breaker, "ffff")
    assert not breaker.try_acquire()
    assert not breaker.try_acquire()
    assert breaker.not_permitted_calls == 2


def test_retry_after_counts_down_the_open_wait() -> None:
    clock = Clock()
    breaker = make(clock)
    assert breaker.retry_after() == 0.0
    calls(breaker, "ffff")
    assert breaker.retry_after() == 10.0
    clock.now += 7.5
    assert breaker.retry_after() == 2.5
    assert not breaker.try_acquire()


def test_after_the_wait_half_open_grants_only_the_permitted_calls() -> None:
    clock = Clock()
    breaker = make(clock)
    calls(breaker, "ffff")
    clock.now += 10.0
    assert state(breaker) is State.HALF_OPEN
    assert [breaker.try_acquire() for _ in range(4)] == [True, True, True, False]
    assert breaker.retry_after() == 0.0


def test_half_open_closes_when_permitted_calls_succeed() -> None:
    clock = Clock()
    breaker = make(clock)
    calls(breaker, "ffff")
    clock.now += 10.0
    calls(breaker, "ssf")  # 1 of 3 = 33% < 50%
    assert state(breaker) is State.CLOSED
    # A fresh window: the failures that opened it are gone.
    assert breaker.describe()["buffered_calls"] == 0
    calls(breaker, "fff")
    assert state(breaker) is State.CLOSED


def test_half_open_opens_again_when_permitted_calls_fail() -> None:
    clock = Clock()
    breaker = make(clock)
    calls(breaker, "ffff")
    clock.now += 10.0
    calls(breaker, "sff")  # 2 of 3 = 67%
    assert state(breaker) is State.OPEN
    assert breaker.retry_after() == 10.0
    assert breaker.opened == 2


def test_half_open_decides_only_when_all_permitted_calls_are_recorded() -> None:
    clock = Clock()
    breaker = make(clock)
    calls(breaker, "ffff")
    clock.now += 10.0
    calls(breaker, "ff")
    assert state(breaker) is State.HALF_OPEN
    calls(breaker, "s")
    assert state(breaker) is State.OPEN


def test_released_half_open_permit_can_be_granted_again() -> None:
    clock = Clock()
    breaker = make(clock)
    calls(breaker, "ffff")
    clock.now += 10.0
    assert [breaker.try_acquire() for _ in range(3)] == [True, True, True]
    assert not breaker.try_acquire()
    breaker.release()
    assert breaker.try_acquire()
    breaker.on_success()
    breaker.on_success()
    breaker.on_success()
    assert state(breaker) is State.CLOSED


def test_outcomes_of_calls_started_before_opening_do_not_decide_half_open() -> None:
    clock = Clock()
    breaker = make(clock)
    for _ in range(3):
        assert breaker.try_acquire()  # slow calls still in flight
    calls(breaker, "ffff")
    clock.now += 10.0
    assert state(breaker) is State.HALF_OPEN
    breaker.on_success()  # the three stale calls finish, no permit out
    breaker.on_success()
    breaker.on_success()
    assert state(breaker) is State.HALF_OPEN
    calls(breaker, "fff")
    assert state(breaker) is State.OPEN


def test_outcomes_while_open_are_ignored() -> None:
    breaker = make(Clock())
    calls(breaker, "ffff")
    breaker.on_success()
    breaker.on_error()
    breaker.release()
    assert state(breaker) is State.OPEN
    assert breaker.successful_calls == 1
    assert breaker.failed_calls == 5


def test_listeners_see_every_transition_in_order() -> None:
    clock = Clock()
    breaker = make(clock)
    seen: list[tuple[str, State, State]] = []
    breaker.on_transition(lambda name, old, new: seen.append((name, old, new)))
    calls(breaker, "ffff")
    clock.now += 10.0
    calls(breaker, "fff")
    clock.now += 10.0
    calls(breaker, "sss")
    assert seen == [
        ("billing", State.CLOSED, State.OPEN),
        ("billing", State.OPEN, State.HALF_OPEN),
        ("billing", State.HALF_OPEN, State.OPEN),
        ("billing", State.OPEN, State.HALF_OPEN),
        ("billing", State.HALF_OPEN, State.CLOSED),
    ]


def test_failing_listener_does_not_break_the_call(caplog: pytest.LogCaptureFixture) -> None:
    breaker = make(Clock())

    def broken(name: str, old: State, new: State) -> None:
        raise RuntimeError("metrics down")

    later: list[State] = []
    breaker.on_transition(broken)
    breaker.on_transition(lambda name, old, new: later.append(new))
    calls(breaker, "ffff")
    assert state(breaker) is State.OPEN
    assert later == [State.OPEN]
    assert "transition listener failed" in caplog.text


def test_set_policy_with_same_window_keeps_counts() -> None:
    breaker = make(Clock())
    calls(breaker, "sfs")
    breaker.set_policy(
        BreakerPolicy(
            sliding_window_size=10, minimum_number_of_calls=4, failure_rate_threshold=25.0
        )
    )
    calls(breaker, "s")  # 1 of 4 = 25%, the new threshold
    assert state(breaker) is State.OPEN


def test_set_policy_with_new_window_size_starts_a_new_window() -> None:
    breaker = make(Clock())
    calls(breaker, "fff")
    breaker.set_policy(BreakerPolicy(sliding_window_size=4, minimum_number_of_calls=4))
    calls(breaker, "sss")
    assert state(breaker) is State.CLOSED
    assert breaker.describe()["buffered_calls"] == 3


def test_set_policy_keeps_an_open_breaker_open() -> None:
    clock = Clock()
    breaker = make(clock)
    calls(breaker, "ffff")
    breaker.set_policy(BreakerPolicy(wait_duration_in_open_state=60.0))
    assert not breaker.try_acquire()
    assert breaker.retry_after() == 10.0


def test_disabled_breaker_never_opens() -> None:
    breaker = make(Clock(), enabled=False)
    calls(breaker, "f" * 100)
    assert state(breaker) is State.CLOSED
    assert breaker.failed_calls == 100


def test_disabling_an_open_breaker_closes_it() -> None:
    breaker = make(Clock())
    calls(breaker, "ffff")
    breaker.set_policy(BreakerPolicy(enabled=False))
    assert state(breaker) is State.CLOSED
    assert breaker.try_acquire()


def test_reset_closes_with_an_empty_window() -> None:
    breaker = make(Clock())
    calls(breaker, "ffff")
    breaker.reset()
    assert state(breaker) is State.CLOSED
    calls(breaker, "fff")
    assert state(breaker) is State.CLOSED


def test_describe_reports_state_and_counters() -> None:
    clock = Clock()
    breaker = make(clock)
    calls(breaker, "sfff")
    breaker.try_acquire()
    clock.now += 4.0
    assert breaker.describe() == {
        "state": "OPEN",
        "retry_after": 6.0,
        "wait_duration_in_open_state": 10.0,
        "failure_rate": 75.0,
        "buffered_calls": 4,
        "failed_buffered_calls": 3,
        "half_open_permits_used": 0,
        "successful_calls": 1,
        "failed_calls": 3,
        "not_permitted_calls": 1,
        "opened": 1,
    }


@pytest.mark.parametrize(
    "settings",
    [
        {"sliding_window_size": 0},
        {"failure_rate_threshold": 0},
        {"failure_rate_threshold": 101},
        {"minimum_number_of_calls": 0},
        {"wait_duration_in_open_state": -1},
        {"permitted_number_of_calls_in_half_open_state": 0},
    ],
)
def test_invalid_policy_is_refused(settings: dict[str, float]) -> None:
    with pytest.raises(SettingsError, match="breaker: "):
        BreakerPolicy(**settings)  # type: ignore[arg-type]
