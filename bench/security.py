"""``python -m bench security [--quick] [--output PATH]``: the cost of auth on one request.

Token verification (:mod:`core.security.tokens`), in one process, on one core:

- ``verify cached``: :meth:`Verifier.verify` of a token already verified (the
  path of every request after a user's first), a dict lookup and a clock read;
- ``authorize cached``: the whole per-request step of the gateway
  (:func:`core.security.access.authorize`: header parsing, cached verify, role check);
- ``verify full``: a token never seen (the cache is cleared between calls):
  header decoding, Ed25519 signature check by PyJWT, claims;
- ``reject bad signature``: a forged token, which is never cached.

Rate limiting (:mod:`core.security.ratelimit`), against a private Redis started for the
run: ``rate limit check`` is one :meth:`RateLimiter.check` (one EVALSHA of the
token-bucket script over :class:`core.security.resp.RespClient`), sequential, as wall
time and as the CPU time of the calling process per call (the Redis server's
own CPU is not counted); ``rate limit check, 64 concurrent`` is the CPU per
check when 64 checks are in flight on the one pipelined connection.

Each figure is the best of ``--rounds`` rounds of ``--n`` calls (CPU time per
call, ``time.process_time``), in microseconds. Results: a table on stdout and
JSON in ``--output`` (default ``bench/results/security.json``; ``--quick``
writes only when asked).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench._run import Run
from core.runner import install_uvloop
from core.security.access import Policy, authorize
from core.security.jwks import KeySet
from core.security.ratelimit import RateLimiter
from core.security.resp import RespClient
from core.security.tokens import TokenError, Verifier
from core.testing import RedisServer

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "security.json"
#: How long a run takes with the defaults (python -m bench --help).
DURATION = "about 30 s"


def _jwk(private: Ed25519PrivateKey, kid: str) -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads(jwt.algorithms.OKPAlgorithm.to_jwk(private.public_key()))
    return {**doc, "kid": kid, "use": "sig", "alg": "EdDSA"}


def _token(private: Ed25519PrivateKey, kid: str) -> str:
    now = int(time.time())
    claims = {
        "iss": "bench",
        "aud": "essaim",
        "sub": "u-1",
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
        "jti": "j1",
        "roles": ["user", "admin"],
    }
    return jwt.encode(claims, private, algorithm="EdDSA", headers={"kid": kid})


def _per_call_us(fn: Callable[[], object], n: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(n):
            fn()
        best = min(best, time.process_time() - start)
    return best / n * 1e6


def bench(n: int, rounds: int, run: Run) -> dict[str, Any]:
    private = Ed25519PrivateKey.generate()
    keys = KeySet()
    keys.load({"keys": [_jwk(private, "k1")]})
    verifier = Verifier(keys, issuer="bench", audience="essaim")
    token = _token(private, "k1")
    forged = _token(Ed25519PrivateKey.generate(), "k1")
    header = f"Bearer {token}"
    policy = Policy.parse("roles:admin")
    verifier.verify(token)

    def full() -> None:
        verifier.forget()
        verifier.verify(token)

    def reject() -> None:
        with contextlib.suppress(TokenError):
            verifier.verify(forged)

    full_n = max(1, n // 50)
    figures: dict[str, float] = {}
    for key, what, fn, calls in (
        ("verify_cached_us", "verify, cached token", lambda: verifier.verify(token), n),
        ("authorize_cached_us", "authorize, cached token",
         lambda: authorize(verifier, policy, header), n),
        ("verify_full_us", "verify, new token", full, full_n),
        ("reject_bad_signature_us", "reject a bad signature", reject, full_n),
    ):  # fmt: skip
        run.step(f"{what}: {rounds} rounds of {calls} calls")
        figures[key] = _per_call_us(fn, calls, rounds)
    run.step(f"rate limit checks against a private Redis: {rounds} rounds of {max(1, n // 20)}")
    figures.update(asyncio.run(_ratelimit(max(1, n // 20), rounds)))
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "pyjwt": jwt.__version__,
        "n": n,
        "rounds": rounds,
        **{k: round(v, 3) for k, v in figures.items()},
    }


async def _ratelimit(n: int, rounds: int) -> dict[str, float]:
    server = RedisServer().start()
    client = RespClient(server.url)
    try:
        limiter = RateLimiter(client, replenish_rate=1_000_000, burst_capacity=1_000_000)
        await limiter.check("bench", "warm-up")
        wall = cpu = float("inf")
        for _ in range(rounds):
            start, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(n):
                await limiter.check("bench", "user:u-1")
            wall = min(wall, time.perf_counter() - start)
            cpu = min(cpu, time.process_time() - start_cpu)
        batches = max(1, n // 64)
        concurrent = float("inf")
        for _ in range(rounds):
            start_cpu = time.process_time()
            for _ in range(batches):
                await asyncio.gather(*(limiter.check("bench", f"user:{i}") for i in range(64)))
            concurrent = min(concurrent, time.process_time() - start_cpu)
        return {
            "ratelimit_wall_us": wall / n * 1e6,
            "ratelimit_cpu_us": cpu / n * 1e6,
            "ratelimit_concurrent_cpu_us": concurrent / (batches * 64) * 1e6,
        }
    finally:
        await client.close()
        server.close()


def _table(report: dict[str, Any]) -> str:
    rows = [
        ("verify, cached token", report["verify_cached_us"]),
        ("authorize (roles), cached token", report["authorize_cached_us"]),
        ("verify, new token (Ed25519)", report["verify_full_us"]),
        ("reject a bad signature", report["reject_bad_signature_us"]),
        ("rate limit check (wall)", report["ratelimit_wall_us"]),
        ("rate limit check (client CPU)", report["ratelimit_cpu_us"]),
        ("rate limit check, 64 concurrent (CPU)", report["ratelimit_concurrent_cpu_us"]),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"{'what':<{width}}  per call"]
    lines += [f"{name:<{width}}  {value:9.2f} µs" for name, value in rows]
    lines.append(Run.load_line(report["load"]))
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench security", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a fraction of a second")
    parser.add_argument("--n", type=int, default=200_000, help="calls per round (cached paths)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--output", type=Path, default=None, help=f"JSON results (default {RESULTS})"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.rounds = 5_000, 2
    if args.n < 1 or args.rounds < 1:
        parser.error("--n and --rounds must be >= 1")
    install_uvloop()
    run = Run("security", quick=args.quick, steps=5)
    report = bench(args.n, args.rounds, run)
    report["quick"] = args.quick
    report["load"] = run.machine()
    print(_table(report))
    output = args.output if args.output is not None else (None if args.quick else RESULTS)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
        print(f"written to {output}")
    return 0
