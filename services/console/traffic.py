"""The gateway as the console shows it: routes in force, and per service its traffic and health.

:class:`Traffic` reads the gateway's admin API every ``interval`` seconds
while someone looks: ``/routes`` (the table in force, its config version),
``/upstreams`` (breakers, ejected instances) and ``/metrics`` (request
counters and latency histograms). With ``--workers N`` the admin port is the
parent's, which merges every worker's (``core.workers.admin``), so these are
the gateway's figures, not one worker's.

Rates are differences between two reads of the counters, over the last
:data:`WINDOW` seconds: requests a second, the share of 5xx answers, and the
50th and 99th percentiles of the latency, interpolated inside the
histogram's buckets as Prometheus' ``histogram_quantile`` does (so a
percentile is only as precise as the bucket it falls in: 0.5 ms to 10 s).
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

from core import log
from core.tasks import TaskSet
from services.console.hub import Hub

logger = log.get("console")

__all__ = ["WINDOW", "Counters", "Traffic", "quantile"]

#: Seconds of counters the rates are computed over.
WINDOW = 10.0
BREAKER_ORDER = {"OPEN": 2, "HALF_OPEN": 1, "CLOSED": 0}


@dataclass
class Counters:
    """One service's counters at one read: answers, 5xx answers, cumulative latency buckets."""

    requests: float = 0.0
    errors: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)  # upper bound -> cumulative count


def parse_metrics(text: str) -> dict[str, Counters]:
    """The gateway's ``/metrics`` as :class:`Counters` by service, every route summed."""
    out: dict[str, Counters] = collections.defaultdict(Counters)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "gateway_requests_total":
                counters = out[sample.labels.get("service", "")]
                counters.requests += sample.value
                if sample.labels.get("status", "").startswith("5"):
                    counters.errors += sample.value
            elif sample.name == "gateway_request_duration_seconds_bucket":
                bound = float(sample.labels["le"])  # "+Inf" -> inf
                buckets = out[sample.labels.get("service", "")].buckets
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
    for own in ("unmatched", "health", ""):
        out.pop(own, None)
    return dict(out)


def quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """The ``q`` quantile of cumulative ``buckets`` (bound -> count), in seconds; None if empty.

    Linear inside the bucket it falls in (from the previous bound, 0 for
    the first); in the ``+Inf`` bucket, the largest finite bound.
    """
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    total = buckets[bounds[-1]]
    rank = q * total
    counts = [buckets[b] for b in bounds]
    i = bisect.bisect_left(counts, rank)
    i = min(i, len(bounds) - 1)
    upper = bounds[i]
    if math.isinf(upper):
        finite = [b for b in bounds if not math.isinf(b)]
        return finite[-1] if finite else None
    lower = bounds[i - 1] if i > 0 else 0.0
    below = counts[i - 1] if i > 0 else 0.0
    inside = counts[i] - below
    if inside <= 0:
        return upper
    return lower + (upper - lower) * (rank - below) / inside


def _window_figures(old: Counters | None, new: Counters, seconds: float) -> dict[str, Any]:
    base = old or Counters()
    requests = new.requests - base.requests
    if requests < 0 or seconds <= 0:  # the gateway restarted: its counters started over
        return {"rate": None, "error_rate": None, "p50": None, "p99": None, "requests": 0}
    errors = new.errors - base.errors
    delta = {b: c - base.buckets.get(b, 0.0) for b, c in new.buckets.items()}
    return {
        "rate": round(requests / seconds, 3),
        "error_rate": round(errors / requests, 4) if requests else None,
        "p50": _ms(quantile(0.5, delta)) if requests else None,
        "p99": _ms(quantile(0.99, delta)) if requests else None,
        "requests": int(requests),
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


class Traffic:
    """The gateway's admin view, read while someone looks; :meth:`start`, :meth:`stop`."""

    section = "gateway"

    def __init__(
        self, hub: Hub, session: aiohttp.ClientSession, admin_url: str, *, interval: float = 1.0
    ) -> None:
        self.hub = hub
        self.session = session
        self.url = admin_url.rstrip("/")
        self.interval = interval
        self.samples: collections.deque[tuple[float, dict[str, Counters]]] = collections.deque()
        self.tasks = TaskSet("console:gateway")
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        self.tasks.spawn(self._poll(), "poll")

    async def stop(self) -> None:
        await self.tasks.stop()

    async def _get(self, path: str) -> bytes:
        timeout = aiohttp.ClientTimeout(total=2.0)
        async with self.session.get(self.url + path, timeout=timeout) as resp:
            if resp.status != 200:
                raise aiohttp.ClientResponseError(
                    resp.request_info,
                    (),
                    status=resp.status,
                    message=f"{path} answered {resp.status}",
                )
            return await resp.read()

    async def refresh(self) -> None:
        """Read the admin API once and publish the ``gateway`` section."""
        async with self._lock:
            try:
                routes, upstreams, metrics = await asyncio.gather(
                    self._get("/routes"), self._get("/upstreams"), self._get("/metrics")
                )
                doc = self._describe(
                    orjson.loads(routes), orjson.loads(upstreams), parse_metrics(metrics.decode())
                )
            except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
                doc = {
                    "admin": self.url,
                    "reachable": False,
                    "error": f"the gateway's admin API at {self.url} did not answer: "
                    f"{exc or type(exc).__name__}",
                }
            await self.hub.set("gateway", doc)

    def _describe(
        self, routes: dict[str, Any], upstreams: dict[str, Any], counters: dict[str, Counters]
    ) -> dict[str, Any]:
        now = time.monotonic()
        if self.samples and now - self.samples[-1][0] > WINDOW:
            self.samples.clear()  # nobody looked for a while: start the window afresh
        self.samples.append((now, counters))
        while len(self.samples) > 2 and now - self.samples[1][0] >= WINDOW:
            self.samples.popleft()
        first_at, first = self.samples[0]
        seconds = now - first_at
        services: dict[str, dict[str, Any]] = {}

        def row(name: str) -> dict[str, Any]:
            if name not in services:
                services[name] = {"name": name, "breakers": [], "ejected": [], "endpoints": 0,
                                  "breaker": "CLOSED", "total_requests": 0}  # fmt: skip
            return services[name]

        for name, now_counters in counters.items():
            entry = row(name)
            entry["total_requests"] = int(now_counters.requests)
            if len(self.samples) > 1:
                entry.update(_window_figures(first.get(name), now_counters, seconds))
        seen: dict[str, set[str]] = collections.defaultdict(set)
        for upstream in upstreams.get("upstreams", []):
            name = str(upstream["name"]).split("@")[0]
            entry = row(name)
            state = upstream.get("breaker", {}).get("state", "CLOSED")
            entry["breakers"].append({
                "upstream": upstream["name"],
                "routes": upstream.get("routes", []),
                "state": state,
                "retry_after": upstream.get("breaker", {}).get("retry_after", 0.0),
            })  # fmt: skip
            if BREAKER_ORDER.get(state, 0) > BREAKER_ORDER.get(entry["breaker"], 0):
                entry["breaker"] = state
            for endpoint in upstream.get("endpoints", []):
                seen[name].add(endpoint["key"])
                if endpoint.get("ejected"):
                    entry["ejected"].append({
                        "instance": endpoint["key"],
                        "url": endpoint.get("url"),
                        "for": endpoint.get("ejected_for", 0.0),
                        "upstream": upstream["name"],
                    })  # fmt: skip
        for name, keys in seen.items():
            services[name]["endpoints"] = len(keys)
        for name, entry in services.items():
            # The gateway counts its own session endpoints as a "service" of that name.
            entry["own"] = name == "session" and not entry["breakers"]
            entry.setdefault("rate", None)
            entry.setdefault("error_rate", None)
            entry.setdefault("p50", None)
            entry.setdefault("p99", None)
            entry.setdefault("requests", 0)
        table = [
            {
                "id": r.get("id"),
                "path": r.get("path"),
                "methods": r.get("methods") or [],
                "target": r.get("service") or [u if isinstance(u, str) else u.get("url")
                                                 for u in r.get("urls", [])],
                "auth": r.get("auth", "public"),
                "auth_via": r.get("auth_via"),
                "rate_limit": r.get("rate_limit"),
            }
            for r in routes.get("routes", [])
        ]  # fmt: skip
        return {
            "admin": self.url,
            "reachable": True,
            "error": None,
            "workers": routes.get("workers", 1),
            "window": round(min(seconds, WINDOW), 1) if len(self.samples) > 1 else None,
            "routes": {
                "version": routes.get("version"),
                "source": routes.get("source"),
                "installed_at": routes.get("installed_at"),
                "routes": table,
                "discovery": routes.get("discovery", {}),
                "last_rejected": routes.get("last_rejected"),
            },
            "services": [services[name] for name in sorted(services)],
        }

    async def _poll(self) -> None:
        while True:
            await self.hub.active()
            await self.refresh()
            await asyncio.sleep(self.interval)
