"""One upstream service as the gateway and service clients see it: its endpoints and their health.

:class:`Upstream` ties together, for one service (or one static route target
list), the mechanisms of :mod:`core.upstream.balancer`, :mod:`core.upstream.outlier`,
:mod:`core.upstream.breaker` and :mod:`core.upstream.retry` under one :class:`UpstreamPolicy`.
Every method on the request path is synchronous, allocation-light and O(1)
(the retry path, with ``exclude``, may be O(n)).

One request through an upstream ``up`` with retry policy ``rp``::

    up.budget.deposit()                          # once per request
    tried = []
    for attempt in itertools.count(1):
        ep = up.choose(tried)                    # None: no endpoint -> 503
        if ep is None or not up.breaker.try_acquire():
            ...                                  # 503, Retry-After: up.breaker.retry_after()
        up.begin(ep)
        ...                                      # send, stream the answer
        up.succeeded(ep)                         # or up.released(ep) if the client left
        # a 5xx marked as a dependency's failure: pass it on, no verdict on ep
        up.dependency_failed(ep)
        # on failure:
        up.failed(ep, kind)                      # "connect" | "5xx" | "reset" | "timeout"
        if not up.retry_allowed(rp, kind, method, attempt, response_started, status):
            ...                                  # 502 / 504 / pass the 5xx on
        tried.append(ep.key)

Every ``begin`` is closed by exactly one of ``succeeded``, ``failed``,
``dependency_failed`` or ``released``, and every granted breaker permit
likewise (those four close it).

What counts against an upstream (its ejection and its breaker) is its own
failure: no connection, a reset, a timeout, a 502 or 504, or another 5xx
that is not marked as a dependency's failure (see
:data:`core.errors.FAILURE_HEADER`). A service that answers 503 because a
service *it* calls is down is working as it should; counting that against it
turned one crashed service into an outage of its callers too.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, NamedTuple

from core.errors import SettingsError
from core.registry.store import Instance
from core.upstream.balancer import BALANCERS, Balancer, make_balancer
from core.upstream.breaker import BreakerPolicy, CircuitBreaker
from core.upstream.outlier import OutlierDetector, OutlierPolicy
from core.upstream.retry import FAILURE_KINDS, FailureKind, RetryBudget, RetryPolicy

__all__ = [
    "MAX_WEIGHT",
    "Endpoint",
    "FailureKind",
    "Target",
    "Upstream",
    "UpstreamPolicy",
    "generation",
]

MAX_WEIGHT = 1000
"""Weights are clamped to 1..MAX_WEIGHT; a malformed weight counts as 1."""


@dataclasses.dataclass(frozen=True, slots=True)
class UpstreamPolicy:
    """How traffic to one upstream is spread and guarded; built from route config.

    ``retry`` is the default retry policy of calls to this upstream (a route
    may bring its own); the retry budget is the upstream's, shared by all.
    """

    balancer: str = "round_robin"
    breaker: BreakerPolicy = dataclasses.field(default_factory=BreakerPolicy)
    outlier: OutlierPolicy = dataclasses.field(default_factory=OutlierPolicy)
    retry: RetryPolicy = dataclasses.field(default_factory=RetryPolicy)
    retry_budget_ratio: float = 0.2
    retry_budget_min_per_second: float = 10.0

    def __post_init__(self) -> None:
        if self.balancer not in BALANCERS:
            raise SettingsError(
                f"upstream: balancer must be one of {', '.join(BALANCERS)}, not {self.balancer!r}"
            )
        if self.retry_budget_ratio < 0 or self.retry_budget_min_per_second < 0:
            raise SettingsError("upstream: retry budget ratio and floor must not be negative")


class Target(NamedTuple):
    """One endpoint as configured: ``key`` is its identity (instance id, or URL).

    ``generation`` tells registrations of one key apart (the registration
    time and process id of an instance): a new one is a restarted process,
    which starts with a clean record.
    """

    key: str
    host: str
    port: int
    scheme: str = "http"
    weight: int = 1
    generation: str = ""


def generation(instance: Instance) -> str:
    """What changes when ``instance`` is registered anew by another process, or again."""
    return f"{instance.registered_at}/{instance.metadata.get('pid', '')}"


class Endpoint:
    """The live state of one endpoint of an upstream, kept across updates while its key stays.

    ``outstanding`` is attempts in flight; ``requests`` attempts begun and
    ``failures`` attempts failed (cumulative); ``generation`` as in :class:`Target`. Ejection state is kept by
    :class:`core.upstream.outlier.OutlierDetector`: ``ejected``, ``ejected_until``
    (the end of the current or last ejection), ``ejections`` (the ejection
    multiplier), ``ejected_total`` and ``consecutive_failures``.
    """

    __slots__ = (
        "consecutive_failures",
        "ejected",
        "ejected_total",
        "ejected_until",
        "ejections",
        "failures",
        "generation",
        "host",
        "key",
        "outstanding",
        "port",
        "requests",
        "scheme",
        "url",
        "weight",
    )

    def __init__(
        self,
        key: str,
        host: str,
        port: int,
        scheme: str = "http",
        weight: int = 1,
        generation: str = "",
    ) -> None:
        self.key = key
        self.generation = generation
        self.host = host
        self.port = port
        self.scheme = scheme
        self.weight = weight
        self.url = f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"
        self.outstanding = self.requests = self.failures = 0
        self.consecutive_failures = self.ejections = self.ejected_total = 0
        self.ejected = False
        self.ejected_until = 0.0

    def __repr__(self) -> str:
        return f"<Endpoint {self.key} {self.url} outstanding={self.outstanding}>"


def _weight(value: int | str) -> int:
    try:
        weight = int(value)
    except ValueError:
        return 1
    return min(max(weight, 1), MAX_WEIGHT)


class Upstream:
    """The endpoints of one upstream with their balancer, outlier detector, breaker and budget."""

    def __init__(
        self,
        name: str,
        policy: UpstreamPolicy = UpstreamPolicy(),
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.name = name
        self.policy = policy
        self._clock = clock
        self._rng = rng or random.Random()
        self.breaker = CircuitBreaker(name, policy.breaker, clock=clock)
        self.budget = RetryBudget(
            policy.retry_budget_ratio, policy.retry_budget_min_per_second, clock=clock
        )
        self._outlier: OutlierDetector[Endpoint] = OutlierDetector(policy.outlier, clock=clock)
        self._balancer: Balancer[Endpoint] = make_balancer(policy.balancer, self._rng)
        self._endpoints: dict[str, Endpoint] = {}
        self.failure_counts: dict[str, int] = dict.fromkeys(sorted(FAILURE_KINDS), 0)
        self.dependency_failures = 0
        self.probes = 0

    @property
    def endpoints(self) -> Mapping[str, Endpoint]:
        """Every endpoint by key, ejected or not, in the order of the last update."""
        return self._endpoints

    # -- membership and policy ---------------------------------------------------

    def update(self, targets: Sequence[Target]) -> None:
        """Make ``targets`` the endpoints; one that stays (same key, address and generation) keeps its state.

        A new endpoint, or a known one with a new generation (a restarted
        process), starts afresh: not ejected, nothing counted against it. Its
        arrival also ends an ``OPEN`` breaker's wait (:meth:`CircuitBreaker.probe`),
        so a restarted service is probed at once, not after the backoff.
        """
        old, new = self._endpoints, {}
        arrived = False
        for key, host, port, scheme, weight, gen in targets:
            ep = old.get(key)
            if (
                ep is None
                or ep.host != host
                or ep.port != port
                or ep.scheme != scheme
                or ep.generation != gen
            ):
                ep = Endpoint(key, host, port, scheme, _weight(weight), gen)
                arrived = True
            else:
                ep.weight = _weight(weight)
            new[key] = ep
        self._endpoints = new
        self._outlier.forget([ep for key, ep in old.items() if new.get(key) is not ep])
        self._outlier.enforce_cap(len(new))
        self._refresh()
        if arrived and self.breaker.probe():
            self.probes += 1

    def update_instances(self, instances: Sequence[Instance]) -> None:
        """:meth:`update` from registry instances: ``UP`` ones only, weight from metadata ``weight``."""
        self.update(
            [
                Target(
                    i.id,
                    i.host,
                    i.port,
                    i.scheme,
                    _weight(i.metadata.get("weight", "1")),
                    generation(i),
                )
                for i in instances
                if i.status == "UP"
            ]
        )

    def set_policy(self, policy: UpstreamPolicy) -> None:
        """Apply a new policy (hot reload), keeping endpoint, breaker and budget state."""
        old, self.policy = self.policy, policy
        if policy.balancer != old.balancer:
            self._balancer = make_balancer(policy.balancer, self._rng)
        self.breaker.set_policy(policy.breaker)
        self.budget.set_limits(policy.retry_budget_ratio, policy.retry_budget_min_per_second)
        self._outlier.policy = policy.outlier
        self._outlier.enforce_cap(len(self._endpoints))
        self._refresh()

    # -- the request path --------------------------------------------------------

    def choose(self, exclude: Collection[str] = ()) -> Endpoint | None:
        """The endpoint for the next attempt: balanced over non-ejected endpoints.

        Keys in ``exclude`` (endpoints this request already tried) are avoided
        while another eligible endpoint exists. None when there is none.
        """
        due = self._outlier.next_return
        if due != math.inf and self._clock() >= due:
            self._return_due()
        return self._balancer.pick(exclude)

    def begin(self, ep: Endpoint) -> None:
        """An attempt on ``ep`` starts."""
        ep.outstanding += 1
        ep.requests += 1

    def succeeded(self, ep: Endpoint) -> None:
        """The attempt on ``ep`` got a non-5xx answer."""
        ep.outstanding -= 1
        ep.consecutive_failures = 0
        self.breaker.on_success()

    def failed(self, ep: Endpoint, kind: FailureKind | str) -> None:
        """The attempt on ``ep`` failed with ``kind``: ``connect``, ``5xx``, ``reset`` or ``timeout``."""
        ep.outstanding -= 1
        ep.failures += 1
        self.failure_counts[kind] += 1
        # An endpoint removed by an update while this attempt ran is no longer ours to eject.
        if self._endpoints.get(ep.key) is ep and self._outlier.failure(ep, len(self._endpoints)):
            self._refresh()
        self.breaker.on_error()

    def dependency_failed(self, ep: Endpoint) -> None:
        """The attempt on ``ep`` got a 5xx marked as the failure of a service ``ep`` depends on.

        The answer goes to the client, but it is no verdict on ``ep``: counted
        neither way for ejection, and the breaker permit goes back
        (Resilience4j's ignored exceptions). Counted in ``dependency_failures``.
        """
        ep.outstanding -= 1
        self.dependency_failures += 1
        self.breaker.release()

    def released(self, ep: Endpoint) -> None:
        """The attempt on ``ep`` ended with no verdict (the client went away)."""
        ep.outstanding -= 1
        self.breaker.release()

    def retry_allowed(
        self,
        policy: RetryPolicy,
        kind: str,
        method: str,
        attempt: int,
        response_started: bool,
        status: int = 0,
    ) -> bool:
        """:meth:`RetryPolicy.should_retry`, then the retry budget.

        A connect failure is not charged to the budget: nothing reached the
        upstream, so its retry adds no load there (and it goes to another
        endpoint). Every other retry takes one from the budget.
        """
        if not policy.should_retry(kind, method, attempt, response_started, status):
            return False
        return kind == "connect" or self.budget.try_withdraw()

    # -- inspection --------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """Endpoints with ejection state and counts, breaker and retry budget: the admin page."""
        now = self._clock()
        if now >= self._outlier.next_return:
            self._return_due()
        return {
            "name": self.name,
            "balancer": self.policy.balancer,
            "endpoints": [
                {
                    "key": ep.key,
                    "url": ep.url,
                    "weight": ep.weight,
                    "outstanding": ep.outstanding,
                    "requests": ep.requests,
                    "failures": ep.failures,
                    "consecutive_failures": ep.consecutive_failures,
                    "ejected": ep.ejected,
                    "ejected_for": round(max(0.0, ep.ejected_until - now), 3)
                    if ep.ejected
                    else 0.0,
                    "ejections": ep.ejections,
                    "ejected_total": ep.ejected_total,
                }
                for ep in self._endpoints.values()
            ],
            "eligible": len(self._balancer.endpoints),
            "failures": dict(self.failure_counts),
            "dependency_failures": self.dependency_failures,
            "probes": self.probes,
            "breaker": self.breaker.describe(),
            "retry_budget": self.budget.describe(),
        }

    def _return_due(self) -> None:
        if self._outlier.return_due(self._clock()):
            self._refresh()

    def _refresh(self) -> None:
        self._balancer.set_endpoints([ep for ep in self._endpoints.values() if not ep.ejected])
