"""Which failed attempts are tried again, and how many retries an upstream can afford.

- :class:`RetryPolicy` decides, per failed attempt, whether another attempt is
  safe and allowed: a connect failure (nothing was sent) for any method; a
  reset, a timeout or a 502/503/504 only for an idempotent method and only
  before any byte of the response reached the client; never past ``attempts``.
- :class:`RetryBudget` (Finagle's, also Envoy's idea) bounds retries to about
  ``ratio`` of the requests seen in the last ``ttl`` seconds plus a floor of
  ``min_retries_per_second``, so that retries can never multiply the load of an
  upstream that is already failing.

Failure kinds (:data:`FailureKind`), shared with the outlier detector and the
breaker: ``connect`` (no connection: refused, unreachable, connect timeout),
``reset`` (the connection broke after the request was sent), ``timeout`` (no
answer within the per-try or total timeout), ``5xx`` (the upstream answered
with a status of 500 or more).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any, Literal

from core.errors import SettingsError

__all__ = [
    "FAILURE_KINDS",
    "IDEMPOTENT_METHODS",
    "FailureKind",
    "RetryBudget",
    "RetryPolicy",
]

FailureKind = Literal["connect", "5xx", "reset", "timeout"]
FAILURE_KINDS: frozenset[str] = frozenset({"connect", "5xx", "reset", "timeout"})

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
"""RFC 9110 section 9.2.2; a request with one of these may be sent twice."""


@dataclasses.dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How many tries one request gets and which failures are tried again.

    ``attempts`` counts every try, the first included (1 disables retries).
    ``retry_on`` names the failure kinds that may be retried; a ``5xx`` is
    retried only when its status is in ``retriable_statuses``.
    ``per_try_timeout`` (seconds, None for none) bounds one attempt; the
    route's total timeout bounds them all.
    """

    attempts: int = 3
    retry_on: frozenset[str] = frozenset({"connect", "reset", "timeout", "5xx"})
    retriable_statuses: frozenset[int] = frozenset({502, 503, 504})
    per_try_timeout: float | None = None

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise SettingsError("retry: attempts must be at least 1")
        unknown = set(self.retry_on) - FAILURE_KINDS
        if unknown:
            raise SettingsError(
                f"retry: retry_on has unknown kinds {sorted(unknown)}; known: {sorted(FAILURE_KINDS)}"
            )
        if self.per_try_timeout is not None and self.per_try_timeout <= 0:
            raise SettingsError("retry: per_try_timeout must be positive")

    def should_retry(
        self,
        kind: str,
        method: str,
        attempt: int,
        response_started: bool,
        status: int = 0,
    ) -> bool:
        """Whether attempt number ``attempt`` (1 for the first), failed with ``kind``, may be tried again.

        ``response_started`` is True once any byte of the response was sent to
        the client. ``status`` is the upstream's status for a ``5xx``. The
        retry budget is a separate question: see :meth:`RetryBudget.try_withdraw`.
        """
        if attempt >= self.attempts or response_started or kind not in self.retry_on:
            return False
        if kind == "connect":
            return True
        if method not in IDEMPOTENT_METHODS:
            return False
        return kind != "5xx" or status in self.retriable_statuses


class RetryBudget:
    """At most ``ratio`` x requests + ``min_retries_per_second`` x ``ttl`` retries per ``ttl`` seconds.

    Call :meth:`deposit` once per request (not per attempt) and
    :meth:`try_withdraw` before each retry; a False answer means "do not
    retry, answer with the failure". Requests and retries are counted in ten
    slots of ``ttl / 10`` seconds, so the window slides in steps of a tenth of
    ``ttl``. Counters: ``retries`` (granted) and ``exhausted`` (refused).
    """

    __slots__ = (
        "_clock",
        "_dep",
        "_deposits",
        "_reserve",
        "_slot",
        "_slot_end",
        "_slot_index",
        "_wd",
        "_withdrawals",
        "exhausted",
        "min_retries_per_second",
        "ratio",
        "retries",
        "ttl",
    )

    SLOTS = 10

    def __init__(
        self,
        ratio: float = 0.2,
        min_retries_per_second: float = 10.0,
        ttl: float = 10.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ratio < 0 or min_retries_per_second < 0 or ttl <= 0:
            raise SettingsError(
                "retry budget: ratio and min_retries_per_second must not be negative, ttl must be positive"
            )
        self._clock = clock
        self.ratio = ratio
        self.min_retries_per_second = min_retries_per_second
        self.ttl = ttl
        self._reserve = min_retries_per_second * ttl
        self._slot = ttl / self.SLOTS
        self._dep = [0] * self.SLOTS
        self._wd = [0] * self.SLOTS
        self._deposits = self._withdrawals = self._slot_index = 0
        self._slot_end = clock() + self._slot
        self.retries = self.exhausted = 0

    def set_limits(self, ratio: float, min_retries_per_second: float) -> None:
        """Change ``ratio`` and the floor (hot reload), keeping what the window has counted."""
        self.ratio = ratio
        self.min_retries_per_second = min_retries_per_second
        self._reserve = min_retries_per_second * self.ttl

    def deposit(self) -> None:
        """Count one request."""
        now = self._clock()
        if now >= self._slot_end:
            self._advance(now)
        self._dep[self._slot_index] += 1
        self._deposits += 1

    def try_withdraw(self) -> bool:
        """Take one retry from the budget; False when it is spent."""
        now = self._clock()
        if now >= self._slot_end:
            self._advance(now)
        # The epsilon keeps 10 x 0.1 from being less than 1.
        if self._deposits * self.ratio + self._reserve - self._withdrawals < 1.0 - 1e-9:
            self.exhausted += 1
            return False
        self._wd[self._slot_index] += 1
        self._withdrawals += 1
        self.retries += 1
        return True

    def balance(self) -> float:
        """Retries the budget would grant now."""
        now = self._clock()
        if now >= self._slot_end:
            self._advance(now)
        return max(0.0, self._deposits * self.ratio + self._reserve - self._withdrawals)

    def describe(self) -> dict[str, Any]:
        return {
            "ratio": self.ratio,
            "min_retries_per_second": self.min_retries_per_second,
            "balance": int(self.balance()),
            "retries": self.retries,
            "exhausted": self.exhausted,
        }

    def _advance(self, now: float) -> None:
        passed = int((now - self._slot_end) // self._slot) + 1
        if passed >= self.SLOTS:
            self._dep = [0] * self.SLOTS
            self._wd = [0] * self.SLOTS
            self._deposits = self._withdrawals = 0
        else:
            i = self._slot_index
            for _ in range(passed):
                i = (i + 1) % self.SLOTS
                self._deposits -= self._dep[i]
                self._withdrawals -= self._wd[i]
                self._dep[i] = self._wd[i] = 0
            self._slot_index = i
        self._slot_end += passed * self._slot
