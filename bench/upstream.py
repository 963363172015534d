"""``python -m bench upstream [--quick]``: per-call cost of the upstream mechanisms.

Times, in microseconds per call (best of several runs), what the data plane
does on every request: choosing an endpoint with each balancer, with and
without ``exclude`` (a retry), the breaker permit, attempt accounting and the
retry budget. No network: this is the CPU the mechanisms add to a request.
"""

from __future__ import annotations

import argparse
import json
import random
import timeit
from pathlib import Path
from typing import Any

from bench._run import Run
from core.upstream.upstream import Target, Upstream, UpstreamPolicy

#: How long a run takes with the defaults (python -m bench --help).
DURATION = "about 40 s"


def _upstream(balancer: str, n: int) -> Upstream:
    up = Upstream("bench", UpstreamPolicy(balancer=balancer), rng=random.Random(1))
    up.update([Target(f"i{k}", "10.0.0.1", 8000 + k, "http", 1 + k % 3) for k in range(n)])
    return up


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench upstream", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="10 times fewer calls, 3 rounds")
    parser.add_argument("--output", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    number, repeat = (20_000, 3) if args.quick else (200_000, 5)
    balancers = [(b, n) for b in ("round_robin", "least_request", "weighted") for n in (3, 10, 100)]
    run = Run("upstream", quick=args.quick, steps=len(balancers) + 1)

    def us(stmt: str, env: dict[str, Any]) -> float:
        return min(timeit.repeat(stmt, globals=env, number=number, repeat=repeat)) / number * 1e6

    request = "up.budget.deposit(); e = up.choose(); up.breaker.try_acquire(); up.begin(e); up.succeeded(e)"
    rows: list[dict[str, Any]] = []
    for balancer, n in balancers:
        run.step(f"balancer {balancer}, {n} instances")
        env: dict[str, Any] = {"up": _upstream(balancer, n), "ex": ("i0",)}
        rows.append({"balancer": balancer, "instances": n, "choose_us": us("up.choose()", env),
                     "exclude_us": us("up.choose(ex)", env), "request_us": us(request, env)})  # fmt: skip
    run.step("breaker, attempts, retry budget")
    up = _upstream("round_robin", 3)
    env = {"up": up, "ep": up.endpoints["i0"], "rp": up.policy.retry}
    parts = {
        label: us(stmt, env)
        for label, stmt in [
            ("breaker.try_acquire (closed)", "up.breaker.try_acquire()"),
            ("begin + succeeded", "up.begin(ep); up.succeeded(ep)"),
            ("budget.deposit", "up.budget.deposit()"),
            ("retry_allowed (connect)", "up.retry_allowed(rp, 'connect', 'GET', 1, False)"),
        ]
    }
    machine = run.machine()
    print(f"{'balancer':14} {'n':>4} {'choose':>8} {'exclude':>8} {'request':>8}  (us per call)")
    for row in rows:
        print(
            f"{row['balancer']:14} {row['instances']:>4} {row['choose_us']:8.3f} "
            f"{row['exclude_us']:8.3f} {row['request_us']:8.3f}"
        )
    for label, cost in parts.items():
        print(f"{label:30} {cost:8.3f}")
    print(Run.load_line(machine))
    if args.output is not None:
        report = {"quick": args.quick, "balancers": rows, "parts_us": parts, "load": machine}
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2) + "\n")
        print(f"written to {args.output}")
    return 0
