from __future__ import annotations

import pytest

from core.errors import SettingsError
from core.upstream.retry import IDEMPOTENT_METHODS, RetryBudget, RetryPolicy


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


ALL_METHODS = ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE", "POST", "PATCH", "CONNECT"]


@pytest.mark.parametrize("method", ALL_METHODS)
def test_connect_failure_is_retried_for_any_method(method: str) -> None:
    assert RetryPolicy().should_retry("connect", method, 1, False)


@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize(("kind", "status"), [("reset", 0), ("timeout", 0), ("5xx", 502)])
def test_reset_timeout_and_gateway_errors_are_retried_only_for_idempotent_methods(
    method: str, kind: str, status: int
) -> None:
    retried = RetryPolicy().should_retry(kind, method, 1, False, status)
    assert retried is (method in IDEMPOTENT_METHODS)


@pytest.mark.parametrize("status", [502, 503, 504])
def test_gateway_error_statuses_are_retried(status: int) -> None:
    assert RetryPolicy().should_retry("5xx", "GET", 1, False, status)


@pytest.mark.parametrize("status", [500, 501, 505, 599, 0])
def test_other_5xx_are_not_retried_by_default(status: int) -> None:
    assert not RetryPolicy().should_retry("5xx", "GET", 1, False, status)


def test_retriable_statuses_can_be_widened() -> None:
    policy = RetryPolicy(retriable_statuses=frozenset({500, 502, 503, 504}))
    assert policy.should_retry("5xx", "GET", 1, False, 500)


@pytest.mark.parametrize("kind", ["reset", "timeout", "5xx"])
def test_nothing_is_retried_once_the_response_started(kind: str) -> None:
    assert not RetryPolicy().should_retry(kind, "GET", 1, True, 503)


def test_attempts_bound_the_number_of_tries() -> None:
    policy = RetryPolicy(attempts=3)
    assert policy.should_retry("connect", "POST", 1, False)
    assert policy.should_retry("connect", "POST", 2, False)
    assert not policy.should_retry("connect", "POST", 3, False)


def test_one_attempt_disables_retries() -> None:
    assert not RetryPolicy(attempts=1).should_retry("connect", "GET", 1, False)


def test_retry_on_limits_the_kinds_retried() -> None:
    policy = RetryPolicy(retry_on=frozenset({"connect"}))
    assert policy.should_retry("connect", "GET", 1, False)
    assert not policy.should_retry("reset", "GET", 1, False)
    assert not policy.should_retry("timeout", "GET", 1, False)
    assert not policy.should_retry("5xx", "GET", 1, False, 503)


@pytest.mark.parametrize(
    "settings",
    [{"attempts": 0}, {"retry_on": frozenset({"connect", "4xx"})}, {"per_try_timeout": 0.0}],
)
def test_invalid_retry_policy_is_refused(settings: dict[str, object]) -> None:
    with pytest.raises(SettingsError, match="retry: "):
        RetryPolicy(**settings)  # type: ignore[arg-type]


# -- budget ---------------------------------------------------------------------


def drain(budget: RetryBudget) -> int:
    granted = 0
    while budget.try_withdraw():
        granted += 1
    return granted


def test_budget_without_requests_grants_the_floor() -> None:
    budget = RetryBudget(ratio=0.2, min_retries_per_second=1.0, ttl=10.0, clock=Clock())
    assert drain(budget) == 10  # 1 per second over 10 s
    assert budget.exhausted == 1
    assert budget.retries == 10


def test_budget_grants_ratio_of_requests_plus_floor() -> None:
    budget = RetryBudget(ratio=0.2, min_retries_per_second=0.0, clock=Clock())
    for _ in range(1000):
        budget.deposit()
    assert drain(budget) == 200
    assert not budget.try_withdraw()


def test_budget_refills_as_requests_come_in() -> None:
    budget = RetryBudget(ratio=0.2, min_retries_per_second=0.0, clock=Clock())
    for _ in range(10):
        budget.deposit()
    assert drain(budget) == 2
    for _ in range(4):
        budget.deposit()
    assert not budget.try_withdraw()  # 14 x 0.2 = 2.8, two taken
    budget.deposit()
    assert budget.try_withdraw()  # 15 x 0.2 = 3


def test_budget_forgets_requests_and_retries_older_than_ttl() -> None:
    clock = Clock()
    budget = RetryBudget(ratio=0.5, min_retries_per_second=0.0, ttl=10.0, clock=clock)
    for _ in range(100):
        budget.deposit()
    assert drain(budget) == 50
    clock.now += 5.0
    for _ in range(20):
        budget.deposit()
    assert drain(budget) == 10  # the first 100 and their 50 retries still count
    clock.now += 5.0  # the first 100 requests and 50 retries leave the window
    assert budget.balance() == 0.0  # 20 x 0.5 - 10
    clock.now += 5.0
    assert budget.balance() == 0.0
    for _ in range(4):
        budget.deposit()
    assert drain(budget) == 2


def test_budget_after_a_long_silence_starts_over() -> None:
    clock = Clock()
    budget = RetryBudget(ratio=0.2, min_retries_per_second=0.0, ttl=10.0, clock=clock)
    for _ in range(100):
        budget.deposit()
    drain(budget)
    clock.now += 3600.0
    assert budget.balance() == 0.0
    for _ in range(50):
        budget.deposit()
    assert drain(budget) == 10


def test_budget_keeps_retries_near_ratio_under_sustained_failure() -> None:
    clock = Clock()
    budget = RetryBudget(ratio=0.2, min_retries_per_second=1.0, ttl=10.0, clock=clock)
    retries = 0
    for _second in range(60):
        for _ in range(100):  # 100 requests a second, every one wants a retry
            budget.deposit()
            retries += budget.try_withdraw()
        clock.now += 1.0
    # 20% of 6000 plus the floor of 1 per second
    assert 1200 <= retries <= 1200 + 60 + 10


def test_set_limits_applies_to_what_was_counted() -> None:
    budget = RetryBudget(ratio=0.1, min_retries_per_second=0.0, clock=Clock())
    for _ in range(100):
        budget.deposit()
    budget.set_limits(0.3, 0.0)
    assert drain(budget) == 30


def test_budget_describe() -> None:
    budget = RetryBudget(ratio=0.2, min_retries_per_second=0.0, clock=Clock())
    for _ in range(10):
        budget.deposit()
    drain(budget)
    assert budget.describe() == {
        "ratio": 0.2,
        "min_retries_per_second": 0.0,
        "balance": 0,
        "retries": 2,
        "exhausted": 1,
    }


def test_invalid_budget_is_refused() -> None:
    with pytest.raises(SettingsError):
        RetryBudget(ratio=-0.1)
