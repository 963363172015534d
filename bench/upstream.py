"""``python -m bench upstream [--quick]``: per-call cost of the upstream mechanisms.

Times, in microseconds per call (best of several runs), what the data plane
does on every request: choosing an endpoint with each balancer, with and
without ``exclude`` (a retry), the breaker permit, attempt accounting and the
retry budget. No network: this is the CPU the mechanisms add to a request.
"""

from __future__ import annotations

import random
import timeit
from typing import Any

from core.upstream.upstream import Target, Upstream, UpstreamPolicy


def _upstream(balancer: str, n: int) -> Upstream:
    up = Upstream("bench", UpstreamPolicy(balancer=balancer), rng=random.Random(1))
    up.update([Target(f"i{k}", "10.0.0.1", 8000 + k, "http", 1 + k % 3) for k in range(n)])
    return up


def main(argv: list[str]) -> int:
    number, repeat = (20_000, 3) if "--quick" in argv else (200_000, 5)

    def us(stmt: str, env: dict[str, Any]) -> float:
        return min(timeit.repeat(stmt, globals=env, number=number, repeat=repeat)) / number * 1e6

    request = "up.budget.deposit(); e = up.choose(); up.breaker.try_acquire(); up.begin(e); up.succeeded(e)"
    print(f"{'balancer':14} {'n':>4} {'choose':>8} {'exclude':>8} {'request':>8}  (us per call)")
    for balancer in ("round_robin", "least_request", "weighted"):
        for n in (3, 10, 100):
            env: dict[str, Any] = {"up": _upstream(balancer, n), "ex": ("i0",)}
            print(
                f"{balancer:14} {n:>4} {us('up.choose()', env):8.3f} "
                f"{us('up.choose(ex)', env):8.3f} {us(request, env):8.3f}"
            )
    up = _upstream("round_robin", 3)
    env = {"up": up, "ep": up.endpoints["i0"], "rp": up.policy.retry}
    for label, stmt in [
        ("breaker.try_acquire (closed)", "up.breaker.try_acquire()"),
        ("begin + succeeded", "up.begin(ep); up.succeeded(ep)"),
        ("budget.deposit", "up.budget.deposit()"),
        ("retry_allowed (connect)", "up.retry_allowed(rp, 'connect', 'GET', 1, False)"),
    ]:
        print(f"{label:30} {us(stmt, env):8.3f}")
    return 0
