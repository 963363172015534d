"""Passive outlier ejection: take an endpoint out of rotation after consecutive failures.

Envoy's consecutive-5xx detection, on the outcomes of real traffic (no probes):

- ``consecutive_failures`` failed attempts in a row (connect, reset, timeout
  or 5xx) eject an endpoint; a success resets the count.
- An ejection lasts ``base_ejection_time`` x the endpoint's ejection
  multiplier, capped at ``max_ejection_time``. Each ejection raises the
  multiplier by one; each full ``decay_interval`` the endpoint then spends in
  rotation lowers it by one, so a flapping endpoint stays out longer and
  longer while one that failed once, long ago, starts again from the base.
- At most ``max_ejection_percent`` of an upstream's endpoints are ejected at
  once: one more is ejected only if the ejected share stays within it (with
  the default 50%, one endpoint alone is never ejected, one of two may be).
- Ejected endpoints come back when their time is up, with a count of zero.

:class:`OutlierDetector` owns the ejected set of one upstream and works on
any object with the :class:`Ejectable` attributes. Only a failure reads the
clock; a success is one attribute store.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable
from typing import Generic, Protocol, TypeVar

from core.errors import SettingsError

__all__ = ["Ejectable", "OutlierDetector", "OutlierPolicy"]


@dataclasses.dataclass(frozen=True, slots=True)
class OutlierPolicy:
    """Settings of passive ejection; ``consecutive_failures=0`` disables it."""

    consecutive_failures: int = 5
    base_ejection_time: float = 30.0
    max_ejection_time: float = 300.0
    max_ejection_percent: float = 50.0
    decay_interval: float = 10.0

    def __post_init__(self) -> None:
        if self.consecutive_failures < 0:
            raise SettingsError("outlier: consecutive_failures must not be negative")
        if self.base_ejection_time <= 0 or self.max_ejection_time < self.base_ejection_time:
            raise SettingsError(
                "outlier: base_ejection_time must be positive and at most max_ejection_time"
            )
        if not 0 <= self.max_ejection_percent <= 100:
            raise SettingsError("outlier: max_ejection_percent must be in [0, 100]")
        if self.decay_interval <= 0:
            raise SettingsError("outlier: decay_interval must be positive")


class Ejectable(Protocol):
    """The per-endpoint state the detector reads and writes."""

    key: str
    consecutive_failures: int
    ejected: bool
    ejected_until: float
    ejections: int
    ejected_total: int


E = TypeVar("E", bound=Ejectable)


class OutlierDetector(Generic[E]):
    """Ejection bookkeeping for the endpoints of one upstream.

    The caller owns the endpoints and tells the detector how many there are;
    ``ejected`` maps key to endpoint for those out of rotation and
    ``next_return`` is the earliest time one of them is due back (``inf`` when
    none is out).
    """

    def __init__(
        self,
        policy: OutlierPolicy = OutlierPolicy(),
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self._clock = clock
        self.ejected: dict[str, E] = {}
        self.next_return = math.inf

    def success(self, ep: E) -> None:
        ep.consecutive_failures = 0

    def failure(self, ep: E, total: int) -> bool:
        """Count a failed attempt on ``ep``, one of ``total`` endpoints; True if it is now ejected."""
        if ep.ejected:
            return False  # attempts begun before its ejection
        ep.consecutive_failures += 1
        threshold = self.policy.consecutive_failures
        if not threshold or ep.consecutive_failures < threshold:
            return False
        if (len(self.ejected) + 1) * 100 > self.policy.max_ejection_percent * total:
            return False
        self._eject(ep, self._clock())
        return True

    def return_due(self, now: float) -> list[E]:
        """Bring back every endpoint whose ejection is over at ``now``; they are returned."""
        back = [ep for ep in self.ejected.values() if ep.ejected_until <= now]
        for ep in back:
            self._return(ep, now)
        self._update_next_return()
        return back

    def enforce_cap(self, total: int) -> list[E]:
        """Bring back endpoints, soonest due first, until the ejected share is within the cap.

        Called when the endpoint set shrinks or the policy changes, so that an
        upstream with endpoints never has all of them ejected.
        """
        allowed = int(self.policy.max_ejection_percent * total // 100)
        back: list[E] = []
        if len(self.ejected) > allowed:
            by_return = sorted(self.ejected.values(), key=lambda ep: ep.ejected_until)
            back = by_return[: len(self.ejected) - allowed]
            now = self._clock()
            for ep in back:
                self._return(ep, now)
            self._update_next_return()
        return back

    def forget(self, eps: Iterable[E]) -> None:
        """Drop endpoints that left the upstream."""
        for ep in eps:
            self.ejected.pop(ep.key, None)
        self._update_next_return()

    def _eject(self, ep: E, now: float) -> None:
        policy = self.policy
        if ep.ejections:
            # ejected_until is when it came back; one step down per interval since.
            steps = int(max(0.0, now - ep.ejected_until) // policy.decay_interval)
            ep.ejections = max(0, ep.ejections - steps)
        max_multiplier = math.ceil(policy.max_ejection_time / policy.base_ejection_time)
        ep.ejections = min(ep.ejections + 1, max_multiplier)
        ep.ejected = True
        ep.ejected_total += 1
        ep.ejected_until = now + min(
            policy.base_ejection_time * ep.ejections, policy.max_ejection_time
        )
        ep.consecutive_failures = 0
        self.ejected[ep.key] = ep
        self.next_return = min(self.next_return, ep.ejected_until)

    def _return(self, ep: E, now: float) -> None:
        ep.ejected = False
        ep.ejected_until = min(ep.ejected_until, now)
        ep.consecutive_failures = 0
        del self.ejected[ep.key]

    def _update_next_return(self) -> None:
        self.next_return = min((ep.ejected_until for ep in self.ejected.values()), default=math.inf)
