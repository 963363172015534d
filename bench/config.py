"""``python -m bench config [--quick] [--output PATH]``: a config change reaching 100 clients.

Starts a private Redis, the config service (``python -m configsvc``, its own
process) and ``--clients`` config clients spread over ``--processes``
processes (``python -m core.config.watch``; each client has its own Redis
subscription). Then, ``--changes`` times, it PUTs a new version of the
``billing`` document and waits until every client has applied the new merged
version. The latency of one client for one change runs from just before the
PUT is sent to the moment that client had applied the version (the
wall-clock time its change callback recorded, in its own process: one
machine, one clock). The path measured is the whole one: the write script
and its publish, pub/sub delivery to every subscriber, each client's GET of
the merged config from the service, validation and apply.

The first ``--warmup`` changes are not counted. Results: a table on stdout
and JSON in ``--output`` (by default ``bench/results/config.json``;
``--quick`` writes only when asked).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench._run import Run
from core.config.watch import WatcherProcesses
from core.runner import install_uvloop
from core.testing import RedisServer, free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "config.json"
TARGET_P99_MS = 100.0
#: How long a run takes with the defaults (python -m bench --help).
DURATION = "about 30 s"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux ``/proc``; 0 elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


async def _start_configsvc(
    redis_url: str, config_dir: Path
) -> tuple[asyncio.subprocess.Process, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONFIGSVC_")}
    env["REDIS_URL"] = redis_url
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "configsvc", "--port", str(port), "--config-dir", str(config_dir),
        "--data-dir", str(config_dir / "data"), "--log-level", "warning",
        cwd=ROOT, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as session:

        async def healthy() -> bool:
            if process.returncode is not None:
                raise RuntimeError(f"configsvc exited with {process.returncode}")
            try:
                async with session.get(f"{url}/health") as resp:
                    return resp.status == 200
            except aiohttp.ClientError:
                return False

        await wait_until(healthy, 20.0, 0.05, "configsvc healthy")
    return process, url


async def bench(
    clients: int, processes: int, changes: int, warmup: int, run: Run
) -> dict[str, Any]:
    run.step("start Redis and configsvc")
    redis = RedisServer().start()
    workdir = Path(tempfile.mkdtemp(prefix="essaim-bench-config-"))
    (workdir / "application.toml").write_text('[log]\nlevel = "info"\n')
    (workdir / "billing.toml").write_text('[billing]\ncurrency = "EUR"\nchange = 0\n')
    configsvc, url = await _start_configsvc(redis.url, workdir)
    per_process = -(-clients // processes)
    watchers = WatcherProcesses(
        url, "billing", redis_url=redis.url, processes=processes, clients=per_process,
        args=["--resync-interval", "300"],
    )  # fmt: skip
    latencies: list[float] = []
    per_change_max: list[float] = []
    try:
        started = time.perf_counter()
        run.step(f"start {per_process * processes} clients in {processes} processes")
        await watchers.start(timeout=120.0)
        startup_s = time.perf_counter() - started
        pids = [p.pid for p in watchers.procs]
        async with aiohttp.ClientSession() as session:
            for n in range(1, warmup + changes + 1):
                if _marked(n, warmup):
                    phase = "warm-up change" if n <= warmup else "change"
                    number = n if n <= warmup else n - warmup
                    total = warmup if n <= warmup else changes
                    run.step(f"{phase} {number} of {total}")
                if n == warmup + 1:
                    svc_cpu0 = cpu_seconds(configsvc.pid)
                    clients_cpu0 = sum(cpu_seconds(pid) for pid in pids)
                doc = {"billing": {"currency": "EUR", "change": n}}
                t0 = time.time()
                async with session.put(f"{url}/v1/documents/billing", json=doc) as resp:
                    if resp.status != 200:
                        raise RuntimeError(f"PUT answered {resp.status}: {await resp.text()}")
                async with session.get(f"{url}/v1/config/billing/default") as resp:
                    body = await resp.json()
                    if resp.status != 200:
                        raise RuntimeError(f"GET config answered {resp.status}: {body}")
                    version = str(body["version"])
                times = await watchers.wait_applied(version, timeout=30.0)
                if n > warmup:
                    change = [max(0.0, t - t0) for t in times]
                    latencies.extend(change)
                    per_change_max.append(max(change))
            svc_cpu = cpu_seconds(configsvc.pid) - svc_cpu0
            clients_cpu = sum(cpu_seconds(pid) for pid in pids) - clients_cpu0
    finally:
        await watchers.stop()
        configsvc.terminate()
        await asyncio.wait_for(configsvc.wait(), 10)
        redis.close()
        shutil.rmtree(workdir, ignore_errors=True)
    ordered = sorted(latencies)
    return {
        "benchmark": "config",
        "python": platform.python_version(),
        "loop": "uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        "cpus": os.cpu_count(),
        "clients": per_process * processes,
        "processes": processes,
        "changes": changes,
        "warmup": warmup,
        "startup_s": round(startup_s, 2),
        "samples": len(ordered),
        "p50_ms": round(percentile(ordered, 0.50) * 1000, 2),
        "p90_ms": round(percentile(ordered, 0.90) * 1000, 2),
        "p99_ms": round(percentile(ordered, 0.99) * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2) if ordered else 0.0,
        "all_clients_p50_ms": round(percentile(sorted(per_change_max), 0.50) * 1000, 2),
        "configsvc_cpu_ms_per_change": round(svc_cpu / changes * 1000, 2),
        "client_cpu_us_per_apply": round(clients_cpu / max(1, len(ordered)) * 1e6, 1),
        "target_p99_ms": TARGET_P99_MS,
    }


def _marked(n: int, warmup: int) -> bool:
    """Whether change ``n`` gets a progress line: the first of each phase, then every 10th."""
    return n in (1, warmup + 1) or n % 10 == 0


def _table(report: dict[str, Any], run: Run) -> str:
    ok = run.verdict(report["p99_ms"] < report["target_p99_ms"])
    lines = [
        f"config change -> applied by {report['clients']} clients in {report['processes']} "
        f"processes, {report['changes']} changes ({report['samples']} samples)",
        f"{'p50 ms':>10} {'p90 ms':>10} {'p99 ms':>10} {'max ms':>10} {'last client p50 ms':>20}",
        f"{report['p50_ms']:>10.2f} {report['p90_ms']:>10.2f} {report['p99_ms']:>10.2f} "
        f"{report['max_ms']:>10.2f} {report['all_clients_p50_ms']:>20.2f}",
        f"CPU: configsvc {report['configsvc_cpu_ms_per_change']:.1f} ms per change, "
        f"clients {report['client_cpu_us_per_apply']:.0f} us per client per change",
        f"target p99 < {report['target_p99_ms']:.0f} ms: {ok}",
        Run.load_line(report["load"]),
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench config", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a few seconds: 20 clients, 5 changes")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--changes", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--output", type=Path, default=None, help=f"JSON results (default {RESULTS})"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.clients, args.processes, args.changes, args.warmup = 20, 2, 5, 1
    if args.clients < 1 or args.processes < 1 or args.changes < 1 or args.warmup < 0:
        parser.error("--clients, --processes and --changes must be >= 1, --warmup >= 0")
    install_uvloop()
    marked = range(1, args.warmup + args.changes + 1)
    steps = 2 + sum(1 for n in marked if _marked(n, args.warmup))
    run = Run("config", quick=args.quick, steps=steps)
    report = asyncio.run(bench(args.clients, args.processes, args.changes, args.warmup, run))
    report["quick"] = args.quick
    report["load"] = run.machine()
    print(_table(report, run))
    output = args.output if args.output is not None else (None if args.quick else RESULTS)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
        print(f"written to {output}")
    return 0 if report["p99_ms"] < report["target_p99_ms"] or args.quick else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
