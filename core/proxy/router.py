"""Where a request goes: the route table in force, discovery routes, one upstream per target.

:class:`Router` is what the data plane asks on every request
(:meth:`Router.resolve`) and what the control plane feeds: a new static
route table (:meth:`Router.install`, swapped whole) and registry changes
(:meth:`Router.registry_changed`, from the discovery watcher). Neither
awaits anything; a request sees either the old table or the new one.

A request goes to the first of:

1. the static route the table matches (``core.routes.table.RouteTable.match``);
2. the discovery route ``/{service}/rest``: ``service`` as registered,
   ``/{service}`` stripped; an unknown service is 404, and 503 while no
   registry snapshot was ever loaded (Redis away since the start).

Upstreams: one :class:`core.upstream.upstream.Upstream` per service and policy
(routes to a service with the same balancer, breaker and outlier settings
share its endpoint health and breaker), and one per static route with a URL
list. They survive table reloads while their key stays, so breaker state and
ejections are kept.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from core import log
from core.errors import NotFound, ServiceUnavailable
from core.proxy.guard import AuthVia, Guard
from core.proxy.stats import Row
from core.proxy.wire import header_pattern
from core.registry.discovery import Watcher
from core.registry.store import SERVICE_RE
from core.routes.table import Route, RouteTable, Timeouts
from core.security.access import PUBLIC, Policy
from core.security.ratelimit import RateLimiter, RateLimitPolicy
from core.security.relay import SessionGate
from core.security.tokens import Verifier
from core.upstream.breaker import State
from core.upstream.retry import RetryPolicy
from core.upstream.upstream import Target, Upstream, UpstreamPolicy

logger = log.get("gateway.router")

__all__ = ["DISCOVERY_ROUTE", "Plan", "Router"]

#: The ``route`` label of requests that took a discovery route.
DISCOVERY_ROUTE = "discovery"

DEFAULT_POLICY = UpstreamPolicy()
_NO_HEADERS: dict[str, str] = {}
# Routing decisions kept by method, host and path (cleared whole when full).
_CACHE_SIZE = 4096
# How many first sightings of a (method, host, path) the cache's doorkeeper
# remembers (by hash) before it starts again.
_SEEN_SIZE = 16384
DEFAULT_RETRY = RetryPolicy()
_AUTHORIZATION = frozenset((b"authorization",))
DEFAULT_TIMEOUTS = Timeouts()


@dataclasses.dataclass(slots=True, eq=False)
class Plan:
    """How requests that one route matched are proxied; built once per route and table.

    ``route`` and ``service`` are the metrics labels; header edits are
    precomputed as lower-case names and ``name: value\\r\\n`` lines (an added
    header replaces one of the same name, so its name is dropped too).
    """

    route: str
    service: str
    upstream: Upstream
    retry: RetryPolicy
    connect_timeout: float
    per_try_timeout: float
    total_timeout: float
    source: Route | None = None
    request_add: tuple[bytes, ...] = ()
    request_drop: frozenset[bytes] | None = None
    response_add: tuple[bytes, ...] = ()
    response_drop: re.Pattern[bytes] | None = None
    # The route's access policy and rate limit (None: public and unlimited).
    guard: Guard | None = None
    # A one-entry memo of the last response head framed for this route:
    # (status, raw header block, head up to the gateway's lines, body mode,
    # body ends with the connection, Via line, has a Date); see core.proxy.response.
    last_response: tuple[int, bytes, bytes, int, bool, bytes, bool] | None = None
    # The route's counters (core.proxy.stats.Row), found on its first request.
    row: Row | None = None


def _edits(
    add: tuple[tuple[str, str], ...], remove: frozenset[str]
) -> tuple[tuple[bytes, ...], frozenset[bytes] | None]:
    lines = tuple(f"{name}: {value}\r\n".encode("latin-1") for name, value in add)
    drop = frozenset(n.lower().encode("latin-1") for n in remove) | frozenset(
        name.lower().encode("latin-1") for name, _ in add
    )
    return lines, (drop or None)


def _response_edits(
    add: tuple[tuple[str, str], ...], remove: frozenset[str]
) -> tuple[tuple[bytes, ...], re.Pattern[bytes] | None]:
    lines, drop = _edits(add, remove)
    return lines, (header_pattern(drop) if drop else None)


def _header_getter(headers: list[tuple[bytes, bytes]]) -> Callable[[str], str | None]:
    def get(name: str) -> str | None:
        wanted = name.encode("latin-1")
        for key, value in headers:
            if key.lower() == wanted:
                return value.decode("latin-1")
        return None

    return get


class Router:
    """The routing decision and the upstreams it leads to.

    ``watcher`` feeds service endpoints; ``policy``, ``retry`` and
    ``timeouts`` apply to discovery routes (static routes carry their own).
    """

    def __init__(
        self,
        watcher: Watcher | None,
        *,
        policy: UpstreamPolicy = DEFAULT_POLICY,
        retry: RetryPolicy = DEFAULT_RETRY,
        timeouts: Timeouts = DEFAULT_TIMEOUTS,
    ) -> None:
        self.watcher = watcher
        self.policy = policy
        self.retry = retry
        self.timeouts = timeouts
        self.table = RouteTable(())
        self.source = "none"
        self.installed_at = 0.0
        self.rejected: dict[str, Any] | None = None
        self.reloads = {"applied": 0, "rejected": 0}
        self.transitions: dict[tuple[str, str, str], int] = {}
        self._upstreams: dict[tuple[str, ...], Upstream] = {}
        self._by_service: dict[str, list[Upstream]] = {}
        self._plans: dict[str, Plan] = {}
        self._discovery: dict[str, Plan] = {}
        self._header_routes = False
        self._cache: dict[tuple[str, bytes | None, str], tuple[Plan, str, str]] = {}
        # The hashes of requests seen once (see resolve): ints, which the GC never tracks.
        self._seen: set[int] = set()
        # Moves with every change a prepared request head depends on.
        self.generation = 0
        # Access control, set by the gateway before traffic: the token
        # verifier (None: routes that need a token answer 503), the policy of
        # discovery routes, and how to make a route's rate limiter.
        self.verifier: Verifier | None = None
        self.discovery_access: Policy = PUBLIC
        self.discovery_via: AuthVia = "token"
        self.limiter_for: Callable[[RateLimitPolicy], RateLimiter] | None = None
        # Sessions (None: routes that accept only sessions answer 503).
        self.sessions: SessionGate | None = None

    def _guard(
        self, route_id: str, policy: Policy, limit: RateLimitPolicy | None, via: AuthVia = "token"
    ) -> Guard | None:
        """The checks of a route, or None when it is public and unlimited."""
        limiter = None
        if limit is not None and self.limiter_for is not None:
            limiter = self.limiter_for(limit)
        if policy.public and limiter is None:
            return None
        return Guard(route_id, policy, self.verifier, limiter, via=via, sessions=self.sessions)

    # -- the request path --------------------------------------------------------------

    def resolve(
        self, method: str, host: bytes | None, path: str, headers: list[tuple[bytes, bytes]]
    ) -> tuple[Plan, str, str]:
        """``(plan, upstream path, stripped prefix)`` for a request; an ``HTTPProblem`` if none.

        ``path`` is the request path without its query, normalized
        (:func:`core.routes.path.normalize_path`).
        """
        key = (method, host, path)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        found = self._resolve(method, host, path, headers)
        if not self._header_routes:
            # Cacheable: the answer depends on method, host and path only (and
            # on the table and the registry, whose changes clear the cache).
            # Kept on the second sighting: traffic where every path is new
            # (ids in paths) would fill the cache with entries never hit
            # again, and those two tuples a request, living until the cache
            # is cleared, made the collector run (and pause the loop for up to
            # 2 ms) once every 400 requests instead of about every 2,000.
            seen = self._seen
            sighting = hash(key)
            if sighting in seen:
                if len(self._cache) >= _CACHE_SIZE:
                    self._cache.clear()
                self._cache[key] = found
            else:
                if len(seen) >= _SEEN_SIZE:
                    seen.clear()
                seen.add(sighting)
        return found

    def _resolve(
        self, method: str, host: bytes | None, path: str, headers: list[tuple[bytes, bytes]]
    ) -> tuple[Plan, str, str]:
        table = self.table
        if table.routes:
            hit = table.match(
                method,
                host.decode("latin-1") if host is not None else None,
                path,
                _header_getter(headers) if self._header_routes else _NO_HEADERS,
                normalized=True,
            )
            if hit is not None:
                route, params = hit
                upstream_path = route.upstream_path(params, path)
                stripped = _stripped(route, path) if route.strip_prefix else ""
                return self._plans[route.id], upstream_path, stripped
        end = path.find("/", 1)
        service = path[1:end] if end > 0 else path[1:]
        found = self._discovery.get(service)
        watcher = self.watcher
        if found is None or (watcher is not None and not watcher.known(service)):
            found = self._discovery_plan(service)
        return found, path[end:] if end > 0 else "/", "/" + service

    def _discovery_plan(self, service: str) -> Plan:
        watcher = self.watcher
        if watcher is None or not SERVICE_RE.match(service):
            raise NotFound("no route matches this path")
        if not watcher.known(service):
            if watcher.relists == 0:
                raise ServiceUnavailable(
                    "the gateway has not loaded the service registry yet",
                    headers={"Retry-After": "1"},
                )
            raise NotFound(f"no service named {service!r} is registered")
        upstream = self._upstream_for_service(service, self.policy, service)
        plan = Plan(
            route=DISCOVERY_ROUTE,
            service=service,
            upstream=upstream,
            retry=self.retry,
            connect_timeout=self.timeouts.connect,
            per_try_timeout=self.timeouts.per_try,
            total_timeout=self.timeouts.total,
            guard=self._guard(DISCOVERY_ROUTE, self.discovery_access, None, self.discovery_via),
            request_drop=_AUTHORIZATION
            if self.discovery_via != "token" and not self.discovery_access.public
            else None,
        )
        self._discovery[service] = plan
        return plan

    # -- the control plane ------------------------------------------------------------

    def install(self, table: RouteTable, *, source: str, at: float) -> None:
        """Put ``table`` in force, with its plans and upstreams; upstreams still used are kept."""
        plans: dict[str, Plan] = {}
        keep: set[tuple[str, ...]] = set()
        for route in table.routes:
            policy, retry = route.upstream, route.retry
            if route.service is not None:
                upstream = self._upstream_for_service(route.service, policy, route.id)
                keep.add(self._service_key(route.service, policy))
                service = route.service
            else:
                upstream = self._upstream_for_urls(route, policy)
                keep.add(("urls", route.id))
                service = upstream.name
            request_add, request_drop = _edits(
                route.request_headers_add, route.request_headers_remove
            )
            response_add, response_drop = _response_edits(
                route.response_headers_add, route.response_headers_remove
            )
            access = Policy.parse(route.auth)
            if route.auth_via != "token" and not access.public:
                # The gateway sends the Authorization line itself (core.proxy.guard).
                request_drop = (request_drop or frozenset()) | _AUTHORIZATION
            plans[route.id] = Plan(
                route=route.id,
                service=service,
                upstream=upstream,
                retry=retry,
                connect_timeout=route.timeouts.connect,
                per_try_timeout=route.timeouts.per_try,
                total_timeout=route.timeouts.total,
                source=route,
                request_add=request_add,
                request_drop=request_drop,
                response_add=response_add,
                response_drop=response_drop,
                guard=self._guard(route.id, access, route.rate_limit, route.auth_via),
            )
        for plan in self._discovery.values():
            keep.add(self._service_key(plan.service, self.policy))
        self._plans = plans
        self.generation += 1
        self._cache.clear()
        self._header_routes = any(route.headers for route in table.routes)
        self.table = table
        self.source = source
        self.installed_at = at
        self.reloads["applied"] += 1
        for key in [k for k in self._upstreams if k not in keep]:
            dropped = self._upstreams.pop(key)
            if key[0] == "service":
                self._by_service[key[1]].remove(dropped)
        logger.info(
            "route table %s in force: %d routes (from %s)", table.version, len(table), source
        )

    def reject(self, reason: str, *, source: str, version: str | None, at: float) -> None:
        """Record a rejected table (the one in force stays); shown on ``/routes``."""
        self.rejected = {"reason": reason, "source": source, "version": version, "at": at}
        self.reloads["rejected"] += 1
        logger.error("route table from %s rejected, previous kept: %s", source, reason)

    def registry_changed(self, services: set[str]) -> None:
        """Watcher callback: refresh the endpoints of the upstreams of ``services``."""
        watcher = self.watcher
        if watcher is None:
            return
        self.generation += 1
        self._cache.clear()
        for service in services:
            for upstream in self._by_service.get(service, ()):
                upstream.update_instances(watcher.instances(service))

    @staticmethod
    def _service_key(service: str, policy: UpstreamPolicy) -> tuple[str, ...]:
        return ("service", service, repr(policy))

    def _upstream_for_service(self, service: str, policy: UpstreamPolicy, owner: str) -> Upstream:
        key = self._service_key(service, policy)
        upstream = self._upstreams.get(key)
        if upstream is None:
            siblings = self._by_service.setdefault(service, [])
            name = service if not siblings and policy == self.policy else f"{service}@{owner}"
            if any(u.name == name for u in siblings):
                name = f"{service}@{owner}"
            upstream = self._new_upstream(key, name, policy)
            siblings.append(upstream)
            if self.watcher is not None:
                upstream.update_instances(self.watcher.instances(service))
        return upstream

    def _upstream_for_urls(self, route: Route, policy: UpstreamPolicy) -> Upstream:
        key = ("urls", route.id)
        targets = [Target(u.url, u.host, u.port, u.scheme, u.weight) for u in route.urls]
        upstream = self._upstreams.get(key)
        if upstream is None:
            upstream = self._new_upstream(key, f"route:{route.id}", policy)
        elif upstream.policy != policy:
            upstream.set_policy(policy)
        upstream.update(targets)
        return upstream

    def _new_upstream(self, key: tuple[str, ...], name: str, policy: UpstreamPolicy) -> Upstream:
        upstream = Upstream(name, policy)
        upstream.breaker.on_transition(self._transition)
        self._upstreams[key] = upstream
        return upstream

    def _transition(self, name: str, old: State, new: State) -> None:
        key = (name, str(old), str(new))
        self.transitions[key] = self.transitions.get(key, 0) + 1
        logger.warning("circuit breaker of %s: %s -> %s", name, old, new)

    # -- inspection ---------------------------------------------------------------------

    def upstreams(self) -> list[Upstream]:
        return sorted(self._upstreams.values(), key=lambda u: u.name)

    def describe_routes(self) -> dict[str, Any]:
        """The table in force, its version and source, and the last rejected one."""
        doc = self.table.describe()
        doc["source"] = self.source
        doc["installed_at"] = self.installed_at
        doc["discovery"] = {
            "pattern": "/{service}/**",
            "strip": "/{service}",
            "services": sorted(self._discovery),
        }
        doc["last_rejected"] = self.rejected
        doc["reloads"] = dict(self.reloads)
        return doc

    def describe_upstreams(self) -> dict[str, Any]:
        routes: dict[int, list[str]] = {}
        for plan in [*self._plans.values(), *self._discovery.values()]:
            routes.setdefault(id(plan.upstream), []).append(plan.route)
        out = []
        for upstream in self.upstreams():
            doc = upstream.describe()
            doc["routes"] = sorted(set(routes.get(id(upstream), [])))
            out.append(doc)
        return {"upstreams": out}

    def metrics(self) -> Iterator[Metric]:
        """Breakers and ejections now, breaker transitions, table reloads: for the collector.

        The breaker's state is one series per state, 1 for the state it is in
        (the usual encoding of an enum: summed over the workers of
        ``--workers N``, each series counts the workers whose breaker is in
        that state); an endpoint's ejection is 1 while it is ejected.
        """
        states = GaugeMetricFamily(
            "gateway_breaker_state",
            "1 for the state of each upstream's circuit breaker",
            labels=["upstream", "state"],
        )
        ejected = GaugeMetricFamily(
            "gateway_endpoint_ejected",
            "1 while an endpoint is ejected as an outlier",
            labels=["upstream", "endpoint"],
        )
        for upstream in self.upstreams():
            doc = upstream.describe()
            now = doc["breaker"]["state"]
            for state in ("CLOSED", "OPEN", "HALF_OPEN"):
                states.add_metric([upstream.name, state], 1.0 if state == now else 0.0)
            for endpoint in doc["endpoints"]:
                ejected.add_metric(
                    [upstream.name, endpoint["key"]], 1.0 if endpoint["ejected"] else 0.0
                )
        yield states
        yield ejected
        transitions = CounterMetricFamily(
            "gateway_breaker_transitions",
            "circuit breaker state changes by upstream",
            labels=["upstream", "from", "to"],
        )
        for (name, old, new), count in sorted(self.transitions.items()):
            transitions.add_metric([name, old, new], count)
        yield transitions
        reloads = CounterMetricFamily(
            "gateway_route_table_reloads",
            "route tables applied or rejected",
            labels=["result"],
        )
        for result, count in sorted(self.reloads.items()):
            reloads.add_metric([result], count)
        yield reloads


def _stripped(route: Route, path: str) -> str:
    """The part of ``path`` that ``strip_prefix`` removed ('' when nothing was)."""
    if not route.strip_prefix:
        return ""
    i = 0
    for _ in range(route.strip_prefix):
        i = path.find("/", i + 1)
        if i < 0:
            return path.rstrip("/")
    return path[:i]
