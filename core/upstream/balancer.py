"""Load balancers: which eligible endpoint takes the next attempt.

A balancer holds the eligible endpoints of one upstream, given by
:meth:`Balancer.set_endpoints` whenever that set changes (an update from
discovery, an ejection, a return), and answers :meth:`Balancer.pick` in O(1)
on the first attempt of a request. ``pick(exclude)`` skips endpoints whose key
is in ``exclude`` (those a request already tried) as long as another one
exists; that path is the retry path and may cost O(n).

- ``round_robin`` (:class:`RoundRobin`): each endpoint in turn, from a random
  start (so that gateways started together do not move in step). A retry does
  not advance the rotation, and after an update the rotation goes on after
  the endpoint it last served.
- ``least_request`` (:class:`LeastRequest`): power of two random choices on
  outstanding requests (Mitzenmacher; Envoy's LEAST_REQUEST): two distinct
  endpoints at random, the one with fewer requests in flight per unit of weight
  wins; ties go to the first drawn, so ties are random.
- ``weighted`` (:class:`Weighted`): nginx's smooth weighted round robin. The
  sequence repeats with a period of ``sum(weights) / gcd(weights)``: the first
  period of picks runs nginx's O(n) loop and records it, later picks read the
  record, so a change of the set costs O(n) and no pause. Periods longer than
  :data:`MAX_SCHEDULE` (or the ``max_schedule`` a :class:`Weighted` is given)
  are not recorded (each pick runs the loop).
"""

from __future__ import annotations

import math
import random
from collections.abc import Collection, Sequence
from typing import ClassVar, Generic, Protocol, TypeVar

__all__ = [
    "BALANCERS",
    "Balanced",
    "Balancer",
    "LeastRequest",
    "RoundRobin",
    "Weighted",
    "make_balancer",
]


class Balanced(Protocol):
    """What a balancer reads of an endpoint."""

    @property
    def key(self) -> str: ...
    @property
    def weight(self) -> int: ...
    @property
    def outstanding(self) -> int: ...


E = TypeVar("E", bound=Balanced)


MAX_SCHEDULE = 4096
"""Longest period :class:`Weighted` keeps as a schedule; above it every pick runs nginx's O(n) loop."""


class Balancer(Generic[E]):
    """Base of the balancers: holds the eligible endpoints in a stable order."""

    name: ClassVar[str] = ""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._eps: list[E] = []

    @property
    def endpoints(self) -> Sequence[E]:
        return self._eps

    def set_endpoints(self, endpoints: Sequence[E]) -> None:
        """Replace the eligible endpoints (O(n); not on the request path)."""
        self._eps = list(endpoints)

    def pick(self, exclude: Collection[str] = ()) -> E | None:
        """The endpoint for the next attempt, avoiding ``exclude`` while another exists; None when empty."""
        raise NotImplementedError


class RoundRobin(Balancer[E]):
    name: ClassVar[str] = "round_robin"

    def __init__(self, rng: random.Random | None = None) -> None:
        super().__init__(rng)
        self._next = 0

    def set_endpoints(self, endpoints: Sequence[E]) -> None:
        old, n = self._eps, len(endpoints)
        self._eps = list(endpoints)
        if not n:
            self._next = 0
        elif not old:
            self._next = self._rng.randrange(n)
        else:
            last = old[(self._next - 1) % len(old)].key
            where = next((i for i, ep in enumerate(self._eps) if ep.key == last), None)
            self._next = (where + 1) % n if where is not None else self._next % n

    def pick(self, exclude: Collection[str] = ()) -> E | None:
        eps = self._eps
        n = len(eps)
        if not n:
            return None
        i = self._next
        ep = eps[i]
        if exclude:
            # A retry: the next one in turn that was not tried; the rotation
            # itself does not move, so retries do not skew first attempts.
            for k in range(n):
                candidate = eps[(i + k) % n]
                if candidate.key not in exclude:
                    return candidate
            return ep
        self._next = i + 1 if i + 1 < n else 0
        return ep


class LeastRequest(Balancer[E]):
    name: ClassVar[str] = "least_request"

    def pick(self, exclude: Collection[str] = ()) -> E | None:
        eps: Sequence[E] = self._eps
        if exclude:
            eps = [ep for ep in eps if ep.key not in exclude] or eps
        n = len(eps)
        if n < 2:
            return eps[0] if n else None
        rand = self._rng.random
        i = int(rand() * n)
        j = int(rand() * (n - 1))
        if j >= i:
            j += 1
        a, b = eps[i], eps[j]
        # a.outstanding / a.weight <= b.outstanding / b.weight, in integers;
        # +1 so that an idle heavy endpoint beats an idle light one.
        if (a.outstanding + 1) * b.weight <= (b.outstanding + 1) * a.weight:
            return a
        return b


class Weighted(Balancer[E]):
    name: ClassVar[str] = "weighted"

    def __init__(
        self, rng: random.Random | None = None, *, max_schedule: int = MAX_SCHEDULE
    ) -> None:
        super().__init__(rng)
        self._max_schedule = max_schedule
        self._weights: list[int] = []
        self._current: list[int] = []
        self._total = 0
        self._schedule: list[E] = []
        self._pos = 0
        self._keep = False

    def set_endpoints(self, endpoints: Sequence[E]) -> None:
        eps = list(endpoints)
        if len(eps) > 1:
            # A random rotation, so that gateways started together do not move in step.
            k = self._rng.randrange(len(eps))
            eps = eps[k:] + eps[:k]
        self._eps = eps
        weights = [max(1, ep.weight) for ep in eps]
        divisor = math.gcd(*weights) if weights else 1
        self._weights = [w // divisor for w in weights]
        self._total = sum(self._weights)
        self._current = [0] * len(eps)
        # Equal weights: nginx's sequence is the list itself.
        self._schedule = list(eps) if self._total == len(eps) else []
        self._pos = 0
        self._keep = self._total <= self._max_schedule

    def pick(self, exclude: Collection[str] = ()) -> E | None:
        if not self._eps:
            return None
        if exclude:
            return self._pick_excluding(exclude)
        pos, schedule = self._pos, self._schedule
        if pos < len(schedule):
            ep = schedule[pos]
        else:
            # The first period runs nginx's loop and records it: the currents
            # are all back to zero after one period, so the sequence repeats.
            ep = self._eps[self._step()]
            if self._keep:
                schedule.append(ep)
        pos += 1
        self._pos = 0 if pos >= self._total else pos
        return ep

    def _pick_excluding(self, exclude: Collection[str]) -> E:
        """The next endpoint in the sequence that is not excluded; the sequence does not move."""
        schedule, eps = self._schedule, self._eps
        if len(schedule) == self._total:
            for k in range(self._total):
                candidate = schedule[(self._pos + k) % self._total]
                if candidate.key not in exclude:
                    return candidate
            return schedule[self._pos]
        # Mid-period: the untried endpoint nginx's next round would favour.
        best = -1
        for i, (current, weight) in enumerate(zip(self._current, self._weights, strict=True)):
            if eps[i].key not in exclude and (
                best < 0 or current + weight > self._current[best] + self._weights[best]
            ):
                best = i
        return eps[best] if best >= 0 else eps[0]

    def _step(self) -> int:
        """One round of nginx's smooth weighted round robin; the index chosen."""
        current, weights = self._current, self._weights
        best = 0
        for i, w in enumerate(weights):
            current[i] += w
            if current[i] > current[best]:
                best = i
        current[best] -= self._total
        return best


BALANCERS = (RoundRobin.name, LeastRequest.name, Weighted.name)
"""The balancer names a policy may use."""


def make_balancer(name: str, rng: random.Random | None = None) -> Balancer[E]:
    """A new balancer of kind ``name`` (one of :data:`BALANCERS`); KeyError for another."""
    if name == RoundRobin.name:
        return RoundRobin(rng)
    if name == LeastRequest.name:
        return LeastRequest(rng)
    if name == Weighted.name:
        return Weighted(rng)
    raise KeyError(name)
