"""A circuit breaker per upstream, with Resilience4j's states, names and arithmetic.

:class:`CircuitBreaker` is ``CLOSED`` while the failure rate over the last
``sliding_window_size`` recorded calls stays under ``failure_rate_threshold``
(percent; judged once ``minimum_number_of_calls`` are recorded). When it is
reached the breaker is ``OPEN``: every :meth:`~CircuitBreaker.try_acquire` is
refused for a wait. The first call after that moves it to ``HALF_OPEN``, which
lets ``permitted_number_of_calls_in_half_open_state`` calls through; when they
have all been recorded, their failure rate decides: ``OPEN`` again, or
``CLOSED`` with a fresh window.

The wait backs off (Resilience4j's exponential wait, Akka's
``maxResetTimeout``): it is ``wait_duration_in_open_state`` when the breaker
opens from ``CLOSED``, multiplied by ``exponential_backoff_multiplier`` each
time a ``HALF_OPEN`` probe fails, at most
``exponential_max_wait_duration_in_open_state``, and back to the first wait
once the breaker closes. So an outage of a second costs about a second,
while a dead upstream is probed less and less often. :meth:`~CircuitBreaker.probe`
ends a wait early, when there is news (a new instance registered).

One permit is one attempt on the upstream: acquire before each try (retries
included) and finish each granted permit with exactly one of
:meth:`~CircuitBreaker.on_success`, :meth:`~CircuitBreaker.on_error` or
:meth:`~CircuitBreaker.release`. Nothing here awaits, allocates or logs on the
call path; the clock is read only in ``OPEN`` and on a transition.
"""

from __future__ import annotations

import dataclasses
import enum
import time
from collections.abc import Callable
from typing import Any

from core import log
from core.errors import SettingsError

__all__ = ["BreakerPolicy", "CircuitBreaker", "State", "TransitionListener"]

logger = log.get("breaker")


class State(enum.StrEnum):
    CLOSED = "CLOSED"
    OPEN = "OPEN"
    HALF_OPEN = "HALF_OPEN"


CLOSED, OPEN, HALF_OPEN = State.CLOSED, State.OPEN, State.HALF_OPEN

TransitionListener = Callable[[str, State, State], None]
"""Called as ``listener(breaker_name, old_state, new_state)`` on every transition."""


@dataclasses.dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """Resilience4j's count-based breaker settings, with defaults for a gateway.

    See docs/upstream.md for why these defaults. ``enabled=False`` makes
    :meth:`CircuitBreaker.try_acquire` always grant and nothing is recorded.
    """

    sliding_window_size: int = 50
    failure_rate_threshold: float = 50.0
    minimum_number_of_calls: int = 20
    wait_duration_in_open_state: float = 1.0
    permitted_number_of_calls_in_half_open_state: int = 5
    exponential_backoff_multiplier: float = 2.0
    exponential_max_wait_duration_in_open_state: float = 10.0
    enabled: bool = True

    def __post_init__(self) -> None:
        if self.sliding_window_size < 1:
            raise SettingsError("breaker: sliding_window_size must be at least 1")
        if not 0 < self.failure_rate_threshold <= 100:
            raise SettingsError("breaker: failure_rate_threshold must be in (0, 100]")
        if self.minimum_number_of_calls < 1:
            raise SettingsError("breaker: minimum_number_of_calls must be at least 1")
        if self.wait_duration_in_open_state < 0:
            raise SettingsError("breaker: wait_duration_in_open_state must not be negative")
        if self.permitted_number_of_calls_in_half_open_state < 1:
            raise SettingsError(
                "breaker: permitted_number_of_calls_in_half_open_state must be at least 1"
            )
        if self.exponential_backoff_multiplier < 1:
            raise SettingsError("breaker: exponential_backoff_multiplier must be at least 1")
        if self.exponential_max_wait_duration_in_open_state < 0:
            raise SettingsError(
                "breaker: exponential_max_wait_duration_in_open_state must not be negative"
            )

    @property
    def max_wait(self) -> float:
        """The longest ``OPEN`` wait: the backoff's cap, never below the first wait."""
        return max(
            self.exponential_max_wait_duration_in_open_state, self.wait_duration_in_open_state
        )


class CircuitBreaker:
    """The breaker state machine of one upstream.

    Counters (cumulative, for metrics): ``successful_calls``, ``failed_calls``,
    ``not_permitted_calls``, ``opened`` (times it went ``OPEN``).
    ``wait`` is the length of the current (or next) ``OPEN`` wait.
    """

    __slots__ = (
        "_clock",
        "_failures",
        "_half_failures",
        "_half_granted",
        "_half_recorded",
        "_index",
        "_listeners",
        "_min_calls",
        "_open_until",
        "_recorded",
        "_ring",
        "_state",
        "_threshold",
        "failed_calls",
        "name",
        "not_permitted_calls",
        "opened",
        "policy",
        "successful_calls",
        "wait",
    )

    def __init__(
        self,
        name: str,
        policy: BreakerPolicy = BreakerPolicy(),
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._clock = clock
        self._listeners: list[TransitionListener] = []
        self._state = CLOSED
        self._open_until = 0.0
        self._half_granted = self._half_recorded = self._half_failures = 0
        self.successful_calls = self.failed_calls = self.not_permitted_calls = self.opened = 0
        self.policy = policy
        self.wait = policy.wait_duration_in_open_state
        self._reset_window()

    # -- configuration -----------------------------------------------------------

    def set_policy(self, policy: BreakerPolicy) -> None:
        """Apply a new policy (hot reload). The state is kept; the window too if its size is."""
        old, self.policy = self.policy, policy
        if policy.sliding_window_size != old.sliding_window_size:
            self._reset_window()
        else:
            self._set_thresholds()
        if self._state is CLOSED:
            self.wait = policy.wait_duration_in_open_state
        else:
            self.wait = min(max(self.wait, policy.wait_duration_in_open_state), policy.max_wait)
        if not policy.enabled and self._state is not CLOSED:
            self._transition(CLOSED)

    def on_transition(self, listener: TransitionListener) -> None:
        """Add a listener called on every state change (for metrics and logs).

        A listener runs synchronously inside the call that caused the change;
        an exception it raises is logged and swallowed.
        """
        self._listeners.append(listener)

    # -- the call path -----------------------------------------------------------

    @property
    def state(self) -> State:
        """The current state; an ``OPEN`` breaker whose wait is over reads ``HALF_OPEN``."""
        if self._state is OPEN and self._clock() >= self._open_until:
            self._transition(HALF_OPEN)
        return self._state

    def try_acquire(self) -> bool:
        """A permit for one attempt: False while ``OPEN`` or when ``HALF_OPEN`` permits are out."""
        state = self._state
        if state is CLOSED:
            return True
        if state is OPEN:
            if self._clock() < self._open_until:
                self.not_permitted_calls += 1
                return False
            self._transition(HALF_OPEN)
        if self._half_granted < self.policy.permitted_number_of_calls_in_half_open_state:
            self._half_granted += 1
            return True
        self.not_permitted_calls += 1
        return False

    def on_success(self) -> None:
        """Record a successful attempt."""
        self.successful_calls += 1
        self._record(0)

    def on_error(self) -> None:
        """Record a failed attempt."""
        self.failed_calls += 1
        self._record(1)

    def release(self) -> None:
        """Give a permit back without an outcome (the client went away)."""
        if self._state is HALF_OPEN and self._half_granted > self._half_recorded:
            self._half_granted -= 1

    def probe(self) -> bool:
        """End an ``OPEN`` wait now, so that the next calls probe (``HALF_OPEN``); True if it was open.

        For news that the upstream may be back, such as a new instance
        registering: waiting out the rest of the backoff would only lengthen
        the outage. A failed probe opens the breaker again with the next wait.
        """
        if self._state is not OPEN:
            return False
        self._transition(HALF_OPEN)
        return True

    def retry_after(self) -> float:
        """Seconds until the ``OPEN`` state ends; 0.0 in any other state."""
        if self._state is not OPEN:
            return 0.0
        return max(0.0, self._open_until - self._clock())

    # -- inspection --------------------------------------------------------------

    def failure_rate(self) -> float:
        """Failure percentage over the window, or -1.0 below ``minimum_number_of_calls``."""
        if self._recorded < self._min_calls:
            return -1.0
        return 100.0 * self._failures / self._recorded

    def describe(self) -> dict[str, Any]:
        """State, window and counters, for the admin page."""
        state = self.state
        return {
            "state": str(state),
            "retry_after": round(self.retry_after(), 3),
            "wait_duration_in_open_state": round(self.wait, 3),
            "failure_rate": round(self.failure_rate(), 2),
            "buffered_calls": self._recorded,
            "failed_buffered_calls": self._failures,
            "half_open_permits_used": self._half_granted if state is HALF_OPEN else 0,
            "successful_calls": self.successful_calls,
            "failed_calls": self.failed_calls,
            "not_permitted_calls": self.not_permitted_calls,
            "opened": self.opened,
        }

    def reset(self) -> None:
        """Back to ``CLOSED`` with an empty window (an operator's action)."""
        if self._state is not CLOSED:
            self._transition(CLOSED)
        self._reset_window()

    # -- internals ---------------------------------------------------------------

    def _reset_window(self) -> None:
        self._ring = bytearray(self.policy.sliding_window_size)
        self._index = self._recorded = self._failures = 0
        self._set_thresholds()

    def _set_thresholds(self) -> None:
        # Resilience4j: a minimum above the window size means "a full window".
        self._min_calls = min(self.policy.minimum_number_of_calls, self.policy.sliding_window_size)
        self._threshold = self.policy.failure_rate_threshold

    def _record(self, failed: int) -> None:
        state = self._state
        if state is CLOSED:
            if not self.policy.enabled:
                return
            ring, i = self._ring, self._index
            if self._recorded == len(ring):
                self._failures -= ring[i]
            else:
                self._recorded += 1
            ring[i] = failed
            self._failures += failed
            i += 1
            self._index = 0 if i == len(ring) else i
            if (
                self._recorded >= self._min_calls
                and self._failures * 100 >= self._threshold * self._recorded
            ):
                self._transition(OPEN)
        elif state is HALF_OPEN and self._half_granted > self._half_recorded:
            # Outcomes of attempts started before the breaker opened arrive with
            # no permit out; they say nothing about the upstream now.
            self._half_recorded += 1
            self._half_failures += failed
            if self._half_recorded >= self.policy.permitted_number_of_calls_in_half_open_state:
                if self._half_failures * 100 >= self._threshold * self._half_recorded:
                    self._transition(OPEN)
                else:
                    self._transition(CLOSED)

    def _transition(self, new: State) -> None:
        old, self._state = self._state, new
        if new is OPEN:
            policy = self.policy
            if old is HALF_OPEN:
                # A failed probe: the upstream is still down, probe less often.
                self.wait = min(self.wait * policy.exponential_backoff_multiplier, policy.max_wait)
            else:
                self.wait = policy.wait_duration_in_open_state
            self._open_until = self._clock() + self.wait
            self.opened += 1
        elif new is HALF_OPEN:
            self._half_granted = self._half_recorded = self._half_failures = 0
        else:
            self.wait = self.policy.wait_duration_in_open_state
            self._reset_window()
        for listener in self._listeners:
            try:
                listener(self.name, old, new)
            except Exception:
                logger.exception("breaker %s: transition listener failed", self.name)
