"""``python -m bench gateway``: the routing path, side by side, on loopback.

One upstream process answers 1 KiB on two ports (nginx when installed, else
the asyncio server of :mod:`bench._http_load`); both ports are registered as
the two instances of the service ``bench-upstream`` in a private Redis. The
same load (wrk when installed, else the built-in generator, as reported) goes,
at a fixed number of keep-alive connections, to:

- ``direct``: the upstream itself;
- ``nginx``: an nginx ``proxy_pass`` to both ports with upstream keepalive,
  one process (``master_process off``) to compare with the single-process
  gateway (when nginx is installed);
- ``haproxy``, ``caddy``: the same proxy in HAProxy (one thread, ``http-reuse
  always``) and Caddy (``reverse_proxy``, ``GOMAXPROCS=1``), as anchors, when
  installed (``apt-get install haproxy caddy``), no access log in any;
- ``gateway``: ``python -m gateway --workers 1`` with one static route to the
  service; ``gateway-accesslog``: the same with every request in the access
  log (JSON); ``gateway-otel``: the same exporting a span per request to an
  OTLP/HTTP receiver in this process (when the ``otel`` extra is installed;
  each run waits until the receiver has a span for every request it served,
  so the export's CPU is counted in the run); ``gateway-otel-10``: the same
  sampling one trace in ten (``--otel-sample 0.1``), the other nine recorded
  nowhere; ``gateway-otel-0``: the same sampling none, what an unsampled
  request costs with export on; ``gateway-auth``, ``gateway-limited`` and ``gateway-synced``: the
  same process behind a token check, an exact rate limit (a Redis round trip
  per request) and a synced one (decided in memory); ``gateway-session``: the
  same process on a route that takes the gateway's session cookie (logged in
  through ``POST /-/session`` against a stand-in auth service registered as
  ``auth``) and relays the session's token, with the default session cache
  (1 s); ``gateway-session-nocache``: the same with ``--session-cache 0``, a
  Redis round trip per request (the stateful model with immediate logout);
- ``gateway-1000``: the same with 1,000 routes, the one hit declared last;
- ``gateway-interpreted``: the same as ``gateway`` with ``ESSAIM_NATIVE=off``:
  the hot path's Python source, beside the compiled build that ``gateway``
  runs when ``make native`` built one (the report's proxies line says which
  build each runs; docs/gateway.md, "The compiled build");
- ``nginx-wN``, ``gateway-wN``: nginx with N worker processes (and its
  master) and the gateway with ``--workers N`` (its parent and N workers),
  N from ``--workers`` (default: one per CPU), for the scaling from 1 to N.

CPU is counted for a proxy's whole process tree (the gateway's parent and
workers, nginx's master and workers). Each run records the load average
before and after, and the CPU the rest of the machine used while it ran
(``/proc/stat``'s busy time less the proxy's, the upstream's, the load
generator's and the benchmark's own): runs where that stayed under
``QUIET_OTHERS`` are quiet, and the figures lead with the medians of the
quiet runs (all runs when none was quiet, flagged). A busy machine inflates
nginx's CPU per request more than the gateway's, so busy runs flatter the
ratio.

Cases run interleaved, ``--repeat`` times each (every other round in reverse
order), after a warm-up; each figure is the median over the runs, and the
best (lowest) CPU per request is kept beside it. Per case: requests/s, p50/p99 latency, and the
CPU time of the proxy process (and of the upstream) per request, from
``/proc/<pid>/stat`` (utime + stime) over the run divided by the requests
served. Then, at half of the gateway's saturation rate, open-loop
constant-rate runs (``bench/openloop.c``, see :mod:`bench._openloop`; the
Python generator of :mod:`bench._http_load` without a C compiler or with
``--python-open-loop``) against ``direct``, nginx and the gateway, each
proxy pinned to the last CPU and the generator and upstream to the others,
give the p99 latency each proxy adds. Last, the cost of one
:meth:`core.routes.table.RouteTable.match` with 1 and with 1,000 routes.

Results: a table on stdout and JSON in ``--output`` (by default
``bench/results/gateway.json``; ``--quick`` writes only when asked).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import importlib.util
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from bench import _openloop
from bench._run import NOISY_LOAD, Run
from core.runner import free_port

ROOT = Path(__file__).resolve().parent.parent
SERVICE = "bench-upstream"
PATH = "/bench/item"
CLK_TCK = os.sysconf("SC_CLK_TCK")

TARGETS = {
    "cpu_vs_nginx": 2.0,
    "cpu_vs_nginx_aim": 1.5,
    "routes_1000_vs_1": 1.10,
    "added_p99_ms": 1.0,
    "added_p99_vs_nginx_ms": 0.5,
}

#: How long a run takes with the defaults (python -m bench --help), with nginx installed.
DURATION = "about 11 min"

QUIET_LOAD = NOISY_LOAD
"""The 1-minute load average under which the machine was quiet when the benchmark began
(the threshold of every benchmark's noisy flag, :data:`bench._run.NOISY_LOAD`)."""

SPANS_WAIT = 5.0
"""Seconds a gateway-otel run waits after its load for the collector to have every span."""
OTEL_SAMPLES = {"gateway-otel": 1.0, "gateway-otel-10": 0.1, "gateway-otel-0": 0.0}
"""The span-exporting cases and the share of traces each samples (``--otel-sample``)."""
QUIET_OTHERS = 0.05
"""A run is quiet when the processes outside it used less CPU than this (in CPUs: 0.05
is 5% of one core) on average while it ran. The load average can't tell: a run of the
benchmark itself keeps two or three processes busy, which lifts the 1-minute load
average by about 0.3 in 10 seconds whatever else the machine does."""

LATE_LIMIT_MS = 5.0
"""Past this p99 lateness of the constant-rate sends (1 ms ticks), the figures are flagged."""

# Every request gets a new path (a last segment) and query unless
# --same-request: what most traffic looks like, where nothing prepared for the
# last request (its route lookup included) is reused.
WRK_VARY = """
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, wrk.path .. "/" .. n .. "?n=" .. n)
end
"""

WRK_SCRIPT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "p50_us": %.1f, "p99_us": %.1f, ' ..
    '"errors": %d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""


@dataclasses.dataclass(frozen=True)
class Options:
    quick: bool
    duration: float
    warmup: float
    repeat: int
    rate_duration: float
    connections: int
    threads: int
    use_nginx: bool
    use_wrk: bool
    output: Path | None
    same_request: bool = False
    workers: int = 1
    use_haproxy: bool = False
    use_caddy: bool = False
    only: frozenset[str] = frozenset()
    # The C constant-rate generator (bench/openloop.c, built on first use), or None: Python's.
    openloop: str | None = None
    python_open_loop: bool = False


def parse_args(argv: list[str]) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench gateway",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    parser.add_argument("--quick", action="store_true", help="1 s runs, once: a smoke test")
    parser.add_argument("--duration", type=float, help="seconds per run (default 10; quick 1)")
    parser.add_argument("--repeat", type=int, help="runs per case, interleaved (default 3)")
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument("--no-nginx", action="store_true", help="act as if nginx were absent")
    parser.add_argument("--no-wrk", action="store_true", help="act as if wrk were absent")
    parser.add_argument(
        "--same-request",
        action="store_true",
        help="repeat one request byte for byte (the gateway's memos then hit) instead of "
        "giving every request a new path and query string",
    )
    parser.add_argument(
        "--workers",
        type=int,
        help="N of the nginx-wN and gateway-wN cases (default: one per CPU; 1: no such case)",
    )
    parser.add_argument("--no-anchors", action="store_true", help="no HAProxy and Caddy rows")
    parser.add_argument(
        "--only",
        metavar="CASE,...",
        help="run only these cases (comma-separated names, e.g. nginx,gateway,gateway-accesslog;"
        " nginx and direct are always kept: the ratios need them)",
    )
    parser.add_argument(
        "--python-open-loop",
        action="store_true",
        help="constant-rate runs from the Python generator (bench._http_load --rate) instead of"
        " bench/openloop.c",
    )
    parser.add_argument("--output", type=Path, help="JSON results file")
    args = parser.parse_args(argv)
    only = frozenset(x.strip() for x in (args.only or "").split(",") if x.strip())
    quick = bool(args.quick)
    duration = args.duration or (1.0 if quick else 10.0)
    output = args.output
    if output is None and not quick:
        output = ROOT / "bench" / "results" / "gateway.json"
    return Options(
        quick=quick,
        duration=duration,
        warmup=0.3 if quick else min(3.0, duration),
        repeat=args.repeat or (1 if quick else 3),
        rate_duration=duration,
        connections=args.connections,
        threads=args.threads,
        use_nginx=not args.no_nginx and nginx_binary() is not None,
        use_wrk=not args.no_wrk and shutil.which("wrk") is not None,
        output=output,
        same_request=args.same_request,
        workers=args.workers or _cpus(),
        use_haproxy=not args.no_anchors and shutil.which("haproxy") is not None,
        use_caddy=not args.no_anchors and shutil.which("caddy") is not None,
        only=only | {"direct", "nginx"} if only else only,
        openloop=None if args.python_open_loop else _openloop.binary()[0],
        python_open_loop=bool(args.python_open_loop),
    )


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# ----------------------------------------------------------------------------- processes


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


def version_of(cmd: list[str]) -> str:
    """The first line of ``cmd``'s output, without a copyright notice."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=5, check=False)
    except OSError:
        return "absent"
    first = (done.stdout + done.stderr).strip().splitlines()[0]
    return first.split(" Copyright")[0].split(" - ")[0].replace("nginx version: ", "")


def busy_cpu_seconds() -> float:
    """CPU time the whole machine spent busy since boot (every CPU; ``/proc/stat``)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def cpus_busy_seconds(cpus: set[int]) -> float:
    """CPU time the given CPUs spent busy since boot (their ``cpuN`` lines of ``/proc/stat``)."""
    wanted = {f"cpu{n}" for n in cpus}
    total = 0
    with open("/proc/stat") as f:
        for line in f:
            fields = line.split()
            if fields and fields[0] in wanted:
                user, nice, system, _idle, _iowait, irq, softirq, steal = (
                    int(x) for x in fields[1:9]
                )
                total += user + nice + system + irq + softirq + steal
    return total / CLK_TCK


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far, from ``/proc/<pid>/stat``."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and of every descendant alive now (a parent and its workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    total = 0.0
    todo = [pid]
    while todo:
        current = todo.pop()
        with contextlib.suppress(OSError):
            total += cpu_seconds(current)
        todo.extend(children.get(current, ()))
    return total


def set_affinity(pid: int, cpus: set[int]) -> None:
    """Run every thread of ``pid`` on ``cpus`` (a thread that is gone is skipped)."""
    try:
        threads = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return
    for tid in threads:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(tid, cpus)


def rate_cpus() -> tuple[set[int], set[int]] | None:
    """CPUs for the constant-rate runs: (the proxy's, the generator's and upstream's).

    The proxy gets the last CPU to itself, the generator and the upstream the
    others: on a small machine, processes that share cores wait for each
    other in the scheduler for milliseconds, and that, not the proxy, would
    make the tail. None with a single CPU.
    """
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    return {cpus[-1]}, set(cpus[:-1])


async def wait_port(port: int, process: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}:\n{_tail(log)}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return
    raise RuntimeError(f"{what} did not listen on {port} within 20 s:\n{_tail(log)}")


async def wait_http(
    url: str,
    process: subprocess.Popen[bytes],
    what: str,
    log: Path,
    headers: tuple[str, ...] = (),
) -> bytes:
    """Poll ``url`` until it answers 200; that answer's body."""
    import aiohttp

    sent = dict(h.split(": ", 1) for h in headers)

    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{what} exited with {process.returncode}:\n{_tail(log)}")
            try:
                async with session.get(
                    url, headers=sent, timeout=aiohttp.ClientTimeout(total=1)
                ) as r:
                    if r.status == 200:
                        return await r.read()
            except (TimeoutError, aiohttp.ClientError):
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{what}: {url} did not answer 200 within 30 s:\n{_tail(log)}")


def gateway_build(health: bytes) -> str:
    """``mypyc`` or ``interpreted`` and why, from a gateway's ``/health`` body (core/native/loader.py)."""
    build = orjson.loads(health).get("build") or {}
    return f"Essaim, hot path {build.get('build', '?')} ({build.get('reason', 'not said')})"


def _tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def spawn(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=str(ROOT),
            env=env,
            start_new_session=True,
        )


# ----------------------------------------------------------------------------- nginx

NGINX_MAIN = """
daemon off;
master_process {master};
worker_processes {workers};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    default_type application/octet-stream;
{body}
}}
"""

NGINX_UPSTREAM = """
    server {{
{listens}
        location / {{ return 200 "{payload}"; }}
    }}
"""

NGINX_PROXY = """
    upstream bench {{
        server 127.0.0.1:{p1};
        server 127.0.0.1:{p2};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://bench;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
"""


def start_nginx(
    binary: str, workdir: Path, name: str, body: str, workers: int = 1
) -> subprocess.Popen[bytes]:
    """nginx with a private prefix and config in the foreground: one process, or a master and ``workers``."""
    prefix = workdir / name
    for sub in ("tmp", "logs"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    master = "on" if workers > 1 else "off"
    conf.write_text(NGINX_MAIN.format(dir=prefix, body=body, master=master, workers=workers))
    cmd = [binary, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
    return spawn(cmd, prefix / "stdout.log")


HAPROXY = """
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 75s
    timeout server 75s
    http-reuse always
frontend bench
    bind 127.0.0.1:{port}
    default_backend upstream
backend upstream
    balance roundrobin
    server u1 127.0.0.1:{p1}
    server u2 127.0.0.1:{p2}
"""

CADDYFILE = """
{{
    admin off
    auto_https off
    storage file_system {dir}
}}
http://127.0.0.1:{port} {{
    reverse_proxy 127.0.0.1:{p1} 127.0.0.1:{p2} {{
        lb_policy round_robin
    }}
}}
"""


def start_anchor(kind: str, workdir: Path, port: int, p1: int, p2: int) -> subprocess.Popen[bytes]:
    """HAProxy (one thread) or Caddy (one OS thread for Go code), like nginx: no log, keep-alive."""
    folder = workdir / kind
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "haproxy":
        conf = folder / "haproxy.cfg"
        conf.write_text(HAPROXY.format(port=port, p1=p1, p2=p2))
        return spawn(["haproxy", "-db", "-f", str(conf)], folder / "stdout.log")
    conf = folder / "Caddyfile"
    conf.write_text(CADDYFILE.format(port=port, p1=p1, p2=p2, dir=folder / "data"))
    env = dict(os.environ, GOMAXPROCS="1", HOME=str(folder), XDG_DATA_HOME=str(folder / "data"),
               XDG_CONFIG_HOME=str(folder / "config"))  # fmt: skip
    cmd = ["caddy", "run", "--config", str(conf), "--adapter", "caddyfile"]
    return spawn(cmd, folder / "stdout.log", env)


# ----------------------------------------------------------------------------- routes


def routes_toml(count: int) -> str:
    """``count`` routes; the one that bench requests hit (``/bench/**``) is the last."""
    out = []
    for i in range(count - 1):
        kind = i % 4
        if kind == 0:
            out.append(
                f'[[routes]]\nid = "items-{i}"\npath = "/api/v1/svc{i}/items/{{id}}"\n'
                f'methods = ["GET"]\nservice = "svc-{i}"\nrewrite = "/items/{{id}}"\n'
            )
        elif kind == 1:
            out.append(
                f'[[routes]]\nid = "svc-{i}"\nprefix = "/svc{i}"\nservice = "svc-{i}"\n'
                "strip_prefix = 1\n"
            )
        elif kind == 2:
            out.append(
                f'[[routes]]\nid = "bench-sibling-{i}"\npath = "/bench/x{i}"\n'
                f'urls = ["http://127.0.0.1:9"]\n'
            )
        elif i == 3:
            # A parameter beside the hit: /bench/item walks into it and backtracks.
            out.append(
                '[[routes]]\nid = "bench-detail"\npath = "/bench/{id}/detail"\n'
                'service = "svc-detail"\n'
            )
        else:
            out.append(
                f'[[routes]]\nid = "tenant-{i}"\nprefix = "/"\nhost = "t{i}.example.com"\n'
                f'service = "svc-{i}"\n'
            )
    out.append(f'[[routes]]\nid = "bench"\nprefix = "/bench"\nservice = "{SERVICE}"\n')
    return "\n".join(out)


#: Routes beside the public one in the gateway case: the same upstream behind a
#: token check (cached verification) and behind a rate limit too generous to
#: refuse (its Redis round trip is what is measured).
GUARDED_ROUTES = f"""
[[routes]]
id = "bench-auth"
prefix = "/auth-bench"
service = "{SERVICE}"
strip_prefix = 1
auth = "authenticated"

[[routes]]
id = "bench-limited"
prefix = "/limited-bench"
service = "{SERVICE}"
strip_prefix = 1
rate_limit = {{ replenish_rate = 10000000, burst_capacity = 10000000 }}

[[routes]]
id = "bench-synced"
prefix = "/synced-bench"
service = "{SERVICE}"
strip_prefix = 1
rate_limit = {{ replenish_rate = 10000000, burst_capacity = 10000000, mode = "synced" }}

[[routes]]
id = "bench-session"
prefix = "/session-bench"
service = "{SERVICE}"
strip_prefix = 1
auth = "authenticated"
auth_via = "session"
"""


def matcher_cost(tables: dict[str, Path], rounds: int = 15) -> dict[str, float]:
    """Nanoseconds per :meth:`RouteTable.match` of the benchmark's request, per table.

    The tables are timed in turns and each keeps its best round, so that a
    noisy neighbour slows both rather than one.
    """
    from core.routes.table import RouteTable

    calls: dict[str, Callable[[], object]] = {}
    for name, path in tables.items():
        table = RouteTable.load_file(path)
        found = table.match("GET", "127.0.0.1", PATH, {})
        if found is None or found[0].id != "bench":
            raise RuntimeError(f"{path}: the benchmark's request matched {found}")
        headers: dict[str, str] = {}
        calls[name] = functools.partial(table.match, "GET", "127.0.0.1:8080", PATH, headers)
    number = 10_000
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(rounds):
        for name, call in calls.items():
            best[name] = min(best[name], timeit.timeit(call, number=number))
    return {name: round(t / number * 1e9, 1) for name, t in best.items()}


# ----------------------------------------------------------------------------- load


async def run_load(
    url: str,
    opts: Options,
    duration: float,
    rate: float | None = None,
    headers: tuple[str, ...] = (),
    cpus: set[int] | None = None,
) -> dict[str, Any]:
    """One run: wrk (closed loop) when available, else the built-in generator.

    At a constant ``rate``: bench/openloop.c when it was built, else the
    built-in generator's open loop.
    """
    if rate is not None and opts.openloop is not None:
        parts = urlsplit(url)
        cmd = [
            opts.openloop, parts.hostname or "127.0.0.1", str(parts.port or 80), parts.path,
            str(rate), str(duration), str(opts.connections),
        ]  # fmt: skip
        if opts.same_request:
            cmd.append("--same")
        for header in headers:
            cmd += ["--header", header]
        out = await _run(cmd, duration, cpus)
        return dict(orjson.loads(out.strip().splitlines()[-1]))
    if rate is None and opts.use_wrk:
        script = Path(tempfile.gettempdir()) / f"essaim-bench-wrk-{os.getpid()}.lua"
        script.write_text(WRK_SCRIPT if opts.same_request else WRK_VARY + WRK_SCRIPT)
        cmd = [
            "wrk", "-t", str(opts.threads), "-c", str(opts.connections),
            "-d", f"{max(1, round(duration))}s", "-s", str(script),
        ]  # fmt: skip
        for header in headers:
            cmd += ["-H", header]
        cmd.append(url)
        out = await _run(cmd, duration)
        line = next((x for x in out.splitlines() if x.startswith("WRKJSON ")), None)
        if line is None:
            raise RuntimeError(f"wrk gave no result:\n{out}")
        raw = orjson.loads(line[8:])
        seconds = raw["duration_us"] / 1e6
        return {
            "requests": raw["requests"],
            "errors": raw["errors"],
            "duration": round(seconds, 3),
            "rps": round(raw["requests"] / seconds, 1),
            "p50_ms": round(raw["p50_us"] / 1000, 4),
            "p99_ms": round(raw["p99_us"] / 1000, 4),
        }
    cmd = [
        sys.executable, "-m", "bench._http_load", "load", "--url", url,
        "--connections", str(opts.connections), "--duration", str(duration),
    ]  # fmt: skip
    if rate is not None:
        cmd += ["--rate", str(rate)]
    if opts.same_request:
        cmd.append("--same-request")
    for header in headers:
        cmd += ["--header", header]
    out = await _run(cmd, duration, cpus)
    return dict(orjson.loads(out.strip().splitlines()[-1]))


async def _run(cmd: list[str], duration: float, cpus: set[int] | None = None) -> str:
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=str(ROOT)
    )
    if cpus is not None:
        set_affinity(proc.pid, cpus)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), duration + 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}):\n{out.decode(errors='replace')}")
    return out.decode()


@dataclasses.dataclass
class Case:
    name: str
    url: str
    proxy_pid: int | None
    upstream_pid: int
    runs: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    headers: tuple[str, ...] = ()
    # Where the case's gateway exports its spans (gateway-otel): a run ends
    # once it has them all, so that their export is in the run's CPU time.
    collector: Any = None
    # The share of the requests' traces it samples (--otel-sample), so exports.
    sample: float = 1.0


async def measure(
    case: Case,
    opts: Options,
    duration: float,
    rate: float | None = None,
    cpus: set[int] | None = None,
    proxy_cpus: set[int] | None = None,
) -> dict[str, Any]:
    """One run of ``case`` with the CPU time its proxy and upstream spent per request.

    With ``proxy_cpus`` (the CPUs the proxy is pinned to), also
    ``others_on_proxy_cpus``: what other processes and the kernel took of
    those CPUs meanwhile (CPUs), which pinning does not keep away.
    """
    pids = {"proxy": case.proxy_pid, "upstream": case.upstream_pid}
    load_before = os.getloadavg()[0]
    own_before = _own_cpu_seconds()
    busy_before = busy_cpu_seconds()
    pinned_before = cpus_busy_seconds(proxy_cpus) if proxy_cpus else 0.0
    started = time.monotonic()
    before = {k: tree_cpu_seconds(p) for k, p in pids.items() if p is not None}
    spans_before = case.collector.received if case.collector is not None else 0
    result = await run_load(case.url, opts, duration, rate, case.headers, cpus)
    if case.collector is not None:
        from core.testing import wait_until

        collector, served = case.collector, int(result["requests"])
        # Sampled, a run's sampled traces are the ratio of its requests within 2 (the
        # gateway spreads its sampled trace ids evenly, as a Weyl sequence): 4 fewer is all.
        wanted = served if case.sample >= 1.0 else max(0, int(served * case.sample) - 4)
        with contextlib.suppress(TimeoutError):  # spans dropped: the count says so
            await wait_until(lambda: collector.received - spans_before >= wanted, SPANS_WAIT)
        result["spans"] = collector.received - spans_before
    after = {k: tree_cpu_seconds(p) for k, p in pids.items() if p is not None}
    busy = busy_cpu_seconds() - busy_before
    pinned = cpus_busy_seconds(proxy_cpus) - pinned_before if proxy_cpus else 0.0
    elapsed = time.monotonic() - started
    load_after = os.getloadavg()[0]
    result["load_before"] = round(load_before, 2)
    result["load_after"] = round(load_after, 2)
    # What the machine spent outside this run: its busy time less the proxy's,
    # the upstream's, the load generator's and this process' own (CPUs, on average).
    ours = sum(after[k] - before[k] for k in after) + _own_cpu_seconds() - own_before
    others = max(0.0, busy - ours) / max(elapsed, 1e-3)
    result["others_cpus"] = round(others, 3)
    result["quiet"] = others < QUIET_OTHERS
    if proxy_cpus and "proxy" in after:
        own = after["proxy"] - before["proxy"]
        result["others_on_proxy_cpus"] = round(max(0.0, pinned - own) / max(elapsed, 1e-3), 3)
    served = max(1, int(result["requests"]))
    for key in ("proxy", "upstream"):
        result[f"{key}_cpu_us"] = (
            round((after[key] - before[key]) / served * 1e6, 2) if key in before else None
        )
    return result


def _own_cpu_seconds() -> float:
    """This process' CPU time and its reaped children's (the load generator runs end reaped)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def _turn(cases: list[Case], rep: int) -> list[Case]:
    """The order of one round: reversed every other round, so that drift hits all cases alike."""
    return cases if rep % 2 == 0 else cases[::-1]


def median_of(all_runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the quiet runs (of every run when none was quiet, then ``quiet`` is false)."""
    quiet = [r for r in all_runs if r.get("quiet")]
    runs = quiet or all_runs
    out: dict[str, Any] = {
        "quiet": bool(quiet),
        "quiet_runs": len(quiet),
        "loads": [[r.get("load_before"), r.get("load_after")] for r in all_runs],
        "others_cpus": [r.get("others_cpus") for r in all_runs],
    }
    for key in ("rps", "p50_ms", "p99_ms", "proxy_cpu_us", "upstream_cpu_us"):
        values = [r[key] for r in runs if r.get(key) is not None]
        out[key] = round(statistics.median(values), 4) if values else None
    cpus = [r["proxy_cpu_us"] for r in runs if r.get("proxy_cpu_us") is not None]
    out["proxy_cpu_us_best"] = min(cpus) if cpus else None
    out["requests"] = sum(int(r["requests"]) for r in all_runs)
    out["errors"] = sum(int(r["errors"]) for r in all_runs)
    if any("spans" in r for r in all_runs):
        out["spans"] = sum(int(r.get("spans", 0)) for r in all_runs)
    return out


# ----------------------------------------------------------------------------- the setup


@contextlib.asynccontextmanager
async def system(opts: Options, workdir: Path, notes: list[str]) -> AsyncIterator[dict[str, Any]]:
    """Start the upstream, nginx, Redis with the two instances, and the gateways."""
    stack = contextlib.ExitStack()
    astack = contextlib.AsyncExitStack()
    info: dict[str, Any] = {"cases": [], "tables": {}, "versions": {}}
    for name, count in (("gateway", 1), ("gateway-1000", 1000)):
        info["tables"][name] = workdir / f"routes-{count}.toml"
        info["tables"][name].write_text(routes_toml(count))
    info["guarded"] = workdir / "routes-guarded.toml"
    info["guarded"].write_text(routes_toml(1) + GUARDED_ROUTES)
    try:
        p1, p2 = free_port(), free_port()
        nginx = nginx_binary() if opts.use_nginx else None
        if nginx:
            listens = "\n".join(f"        listen 127.0.0.1:{p};" for p in (p1, p2))
            body = NGINX_UPSTREAM.format(listens=listens, payload="x" * 1024)
            upstream = start_nginx(nginx, workdir, "upstream", body)
            info["upstream"] = f"{version_of([nginx, '-v'])}, 1 process, 2 ports"
            up_log = workdir / "upstream" / "error.log"
        else:
            up_log = workdir / "upstream.log"
            upstream = spawn(
                [sys.executable, "-m", "bench._http_load", "serve", str(p1), str(p2)], up_log
            )
            info["upstream"] = "asyncio server (bench._http_load serve), 1 process, 2 ports"
            notes.append(
                "nginx not installed or disabled: upstream is the asyncio server; no nginx row"
            )
        stack.callback(stop, upstream)
        for port in (p1, p2):
            await wait_port(port, upstream, "upstream", up_log)
        info["cases"].append(Case("direct", f"http://127.0.0.1:{p1}{PATH}", None, upstream.pid))

        if nginx:
            port = free_port()
            proxy = start_nginx(
                nginx, workdir, "proxy", NGINX_PROXY.format(p1=p1, p2=p2, port=port)
            )
            stack.callback(stop, proxy)
            await wait_port(port, proxy, "nginx proxy", workdir / "proxy" / "error.log")
            info["cases"].append(
                Case("nginx", f"http://127.0.0.1:{port}{PATH}", proxy.pid, upstream.pid)
            )
            info["versions"]["nginx"] = version_of([nginx, "-v"])

        for kind, wanted in (("haproxy", opts.use_haproxy), ("caddy", opts.use_caddy)):
            if not wanted:
                notes.append(
                    f"{kind} not installed (apt-get install {kind}) or --no-anchors: no {kind} row"
                )
                continue
            port = free_port()
            anchor = start_anchor(kind, workdir, port, p1, p2)
            stack.callback(stop, anchor)
            await wait_http(
                f"http://127.0.0.1:{port}{PATH}", anchor, kind, workdir / kind / "stdout.log"
            )
            info["cases"].append(
                Case(kind, f"http://127.0.0.1:{port}{PATH}", anchor.pid, upstream.pid)
            )
            info["versions"][kind] = version_of(
                ["haproxy", "-v"] if kind == "haproxy" else ["caddy", "version"]
            )

        if nginx and opts.workers > 1:
            port = free_port()
            name = f"nginx-w{opts.workers}"
            proxy = start_nginx(
                nginx,
                workdir,
                name,
                NGINX_PROXY.format(p1=p1, p2=p2, port=port),
                workers=opts.workers,
            )
            stack.callback(stop, proxy)
            await wait_port(port, proxy, name, workdir / name / "error.log")
            info["cases"].append(
                Case(name, f"http://127.0.0.1:{port}{PATH}", proxy.pid, upstream.pid)
            )

        if importlib.util.find_spec("gateway") is None:
            notes.append("gateway.py not found: no gateway rows")
        else:
            await astack.enter_async_context(
                gateways(info, workdir, stack, (p1, p2), upstream.pid, opts.workers, notes)
            )
        yield info
    finally:
        await astack.aclose()
        stack.close()


@contextlib.asynccontextmanager
async def gateways(
    info: dict[str, Any],
    workdir: Path,
    stack: contextlib.ExitStack,
    ports: tuple[int, int],
    upstream_pid: int,
    workers: int,
    notes: list[str],
) -> AsyncIterator[None]:
    from core.redis import connect
    from core.registry.discovery import Registration
    from core.registry.store import Instance
    from core.telemetry.export import missing
    from core.testing import OTLPReceiver, RedisServer

    redis_server = RedisServer().start()
    stack.callback(redis_server.close)
    # A receiver per exporting case: spans that arrive late are counted for their own case.
    collectors: dict[str, Any] = {}
    if missing() is None:
        for name in OTEL_SAMPLES:
            collectors[name] = await OTLPReceiver(keep=False).start()
    else:
        notes.append(
            "the otel extra is not installed (pip install 'essaim[otel]'): no gateway-otel rows"
        )
    redis = connect(redis_server.url)
    jwks_url, token, jwks_runner, auth_port = await _token_issuer()
    registrations = [
        Registration(redis, Instance(SERVICE, f"bench-{i}", "127.0.0.1", port, ttl=30))
        for i, port in enumerate(ports)
    ]
    # The stand-in auth service the gateway's sessions log in with (by name, as any service).
    registrations.append(
        Registration(redis, Instance("auth", "bench-auth", "127.0.0.1", auth_port, ttl=30))
    )
    try:
        for reg in registrations:
            await reg.start(wait=5)
            if not reg.registered.is_set():
                raise RuntimeError("could not register the upstream instances in Redis")
        names = [
            ("gateway", 1),
            ("gateway-1000", 1),
            ("gateway-accesslog", 1),
            ("gateway-interpreted", 1),
            ("gateway-session-nocache", 1),
        ]
        names += [(name, 1) for name in collectors]
        if workers > 1:
            names.append((f"gateway-w{workers}", workers))
        for name, count in names:
            routes = info["tables"]["gateway-1000"] if name == "gateway-1000" else info["guarded"]
            port, admin = free_port(), free_port()
            log = workdir / f"{name}.log"
            env = {
                k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "REDIS_URL"))
            }
            env["PYTHONUNBUFFERED"] = "1"
            if name == "gateway-interpreted":
                env["ESSAIM_NATIVE"] = "off"
            cmd = [
                sys.executable, "-m", "gateway", "--host", "127.0.0.1", "--port", str(port),
                "--admin-host", "127.0.0.1", "--admin-port", str(admin),
                "--redis-url", redis_server.url, "--routes", str(routes), "--log-level", "warning",
                "--jwks-url", jwks_url, "--jwt-issuer", ISSUER, "--jwt-audience", "essaim",
                "--workers", str(count),
            ]  # fmt: skip
            if name == "gateway-accesslog":
                # Every request logged (to the case's log file), in JSON as operators keep it.
                cmd += ["--access-log", "on", "--log-format", "json"]
            if name == "gateway-session-nocache":
                cmd += ["--session-cache", "0"]
            sample = OTEL_SAMPLES.get(name, 1.0)
            collector = collectors.get(name)
            if collector is not None:
                cmd += ["--otel-endpoint", collector.url, "--otel-sample", str(sample)]
            proc = spawn(cmd, log, env)
            stack.callback(stop, proc)
            health = await wait_http(f"http://127.0.0.1:{admin}/health", proc, name, log)
            # Which build of the hot path the case runs, as the gateway itself says.
            build = gateway_build(health)
            if info["versions"].setdefault("gateway", build) != build:
                info["versions"][name] = build
            url = f"http://127.0.0.1:{port}{PATH}"
            await wait_http(url, proc, f"{name} routing to the upstream", log)
            if name == "gateway-session-nocache":
                cookie = (await _session_cookie(port, proc, log),)
                url = f"http://127.0.0.1:{port}/session-bench/item"
                await wait_http(url, proc, f"{name} routing", log, headers=cookie)
                info["cases"].append(Case(name, url, proc.pid, upstream_pid, headers=cookie))
                continue
            info["cases"].append(
                Case(name, url, proc.pid, upstream_pid,
                     collector=collector,
                     sample=sample)
            )  # fmt: skip
            if name == "gateway":
                auth = (f"Authorization: Bearer {token}",)
                cookie = (await _session_cookie(port, proc, log),)
                for case, prefix, headers in (
                    ("gateway-auth", "/auth-bench", auth),
                    ("gateway-session", "/session-bench", cookie),
                    ("gateway-limited", "/limited-bench", ()),
                    ("gateway-synced", "/synced-bench", ()),
                ):
                    guarded = f"http://127.0.0.1:{port}{prefix}/item"
                    await wait_http(guarded, proc, f"{case} routing", log, headers=headers)
                    info["cases"].append(
                        Case(case, guarded, proc.pid, upstream_pid, headers=headers)
                    )
        yield
    finally:
        await jwks_runner.cleanup()
        for reg in registrations:
            await reg.stop()
        await redis.aclose()
        for collector in collectors.values():
            await collector.close()


ISSUER = "essaim-bench"


async def _session_cookie(port: int, process: subprocess.Popen[bytes], log: Path) -> str:
    """``Cookie: essaim_session=...`` of a login through the gateway's ``POST /-/session``."""
    import aiohttp

    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the gateway exited with {process.returncode}:\n{_tail(log)}")
            try:
                async with session.post(
                    f"http://127.0.0.1:{port}/-/session",
                    json={"username": "bench", "password": "bench"},
                    timeout=aiohttp.ClientTimeout(total=2),
                ) as r:
                    if r.status == 200:
                        for line in r.headers.getall("Set-Cookie", []):
                            if line.startswith("essaim_session="):
                                return "Cookie: " + line.split(";", 1)[0]
            except (TimeoutError, aiohttp.ClientError):
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"no session from POST /-/session within 30 s:\n{_tail(log)}")


async def _token_issuer() -> tuple[str, str, Any, int]:
    """A JWKS served from this process and a token signed with its key (valid 1 hour).

    The same server stands in for the auth service of the gateway's sessions:
    ``POST /token`` and ``/token/refresh`` answer that token, ``/token/revoke`` 200.
    """
    import base64
    import time

    import jwt
    from aiohttp import web
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    key = Ed25519PrivateKey.generate()
    x = base64.urlsafe_b64encode(
        key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    ).rstrip(b"=")
    doc = {
        "keys": [{"kty": "OKP", "crv": "Ed25519", "x": x.decode(), "kid": "bench", "alg": "EdDSA"}]
    }

    async def serve(request: web.Request) -> web.Response:
        return web.json_response(doc)

    async def grant(request: web.Request) -> web.Response:
        await request.read()
        tokens = {"access_token": token, "token_type": "Bearer", "expires_in": 3600,
                  "refresh_token": "bench-refresh", "refresh_expires_in": 3600}  # fmt: skip
        return web.json_response(tokens)

    async def revoke(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/jwks.json", serve)
    app.router.add_post("/token", grant)
    app.router.add_post("/token/refresh", grant)
    app.router.add_post("/token/revoke", revoke)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": "essaim", "sub": "bench", "roles": ["user"],
              "iat": now, "nbf": now, "exp": now + 3600, "jti": "bench"}  # fmt: skip
    token = jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": "bench"})
    return f"http://127.0.0.1:{port}/jwks.json", token, runner, port


# ----------------------------------------------------------------------------- the run


async def bench(opts: Options, run: Run) -> dict[str, Any]:
    notes: list[str] = []
    if not opts.use_wrk:
        notes.append(
            "wrk not installed or disabled: closed-loop load from the built-in Python generator "
            "(bench._http_load), which saturates before wrk would; compare ratios, not req/s"
        )
    with tempfile.TemporaryDirectory(prefix="essaim-bench-gw-") as tmp:
        workdir = Path(tmp)
        run.step("start Redis, the upstream and the proxies")
        async with system(opts, workdir, notes) as info:
            cases: list[Case] = info["cases"]
            if opts.only:
                unknown = opts.only - {c.name for c in cases}
                if unknown:
                    notes.append(f"--only: no such case here: {', '.join(sorted(unknown))}")
                cases = [c for c in cases if c.name in opts.only]
            rated_count = sum(1 for c in cases if c.name in ("direct", "nginx", "gateway"))
            steps = 1 + len(cases) * (1 + opts.repeat) + rated_count * opts.repeat + 1
            for case in cases:
                run.step(f"warm-up: {case.name}, {opts.warmup:g} s", steps=steps)
                await measure(case, opts, opts.warmup)
            for rep in range(opts.repeat):
                for case in _turn(cases, rep):
                    run.step(f"round {rep + 1} of {opts.repeat}: {case.name}, {opts.duration:g} s")
                    case.runs.append(await measure(case, opts, opts.duration))
            summary = {case.name: {**median_of(case.runs), "runs": case.runs} for case in cases}

            fixed: dict[str, Any] = {}
            gateway_rps = summary.get("gateway", {}).get("rps")
            if gateway_rps:
                rate = round(gateway_rps / 2)
                generator = "built-in open loop (bench._http_load --rate)"
                if opts.openloop is not None:
                    generator = "bench/openloop.c (C, paced by a 50 us timer)"
                else:
                    notes.append(
                        "constant-rate runs from the Python generator: "
                        + ("--python-open-loop" if opts.python_open_loop else _openloop.binary()[1])
                    )
                fixed = {"rate": rate, "generator": generator}
                rated = [c for c in cases if c.name in ("direct", "nginx", "gateway")]
                runs: dict[str, list[dict[str, Any]]] = {c.name: [] for c in rated}
                split = rate_cpus()
                everywhere = os.sched_getaffinity(0)
                if split is not None:
                    fixed["cpus"] = {
                        "proxy": sorted(split[0]),
                        "generator_and_upstream": sorted(split[1]),
                    }
                    for case in rated:
                        if case.proxy_pid is not None:
                            set_affinity(case.proxy_pid, split[0])
                        set_affinity(case.upstream_pid, split[1])
                else:
                    notes.append("one CPU: the constant-rate runs share it with the generator")
                try:
                    await _rated_rounds(opts, run, rated, rate, runs, split)
                finally:
                    for case in rated:
                        for pid in (case.proxy_pid, case.upstream_pid):
                            if pid is not None:
                                set_affinity(pid, everywhere)
                for name, each in runs.items():
                    fixed[name] = {
                        **median_of(each),
                        "late_p99_ms": statistics.median(r["late_p99_ms"] for r in each),
                        # The far tail: how long the machine's own stalls held a request.
                        "p999_ms": statistics.median(r["p999_ms"] for r in each),
                        "max_ms": max(r["max_ms"] for r in each),
                        "runs": each,
                    }
                    intruded = [
                        r["others_on_proxy_cpus"] for r in each if "others_on_proxy_cpus" in r
                    ]
                    if intruded:
                        fixed[name]["others_on_proxy_cpus"] = statistics.median(intruded)
                fixed["added_p99_ms"] = round(
                    fixed["gateway"]["p99_ms"] - fixed["direct"]["p99_ms"], 4
                )
                if "nginx" in fixed:
                    fixed["nginx_added_p99_ms"] = round(
                        fixed["nginx"]["p99_ms"] - fixed["direct"]["p99_ms"], 4
                    )
                late = max(fixed[name]["late_p99_ms"] for name in runs)
                if late > LATE_LIMIT_MS:
                    notes.append(
                        f"the constant-rate generator fell behind its schedule (sends late by "
                        f"p99 {late:.1f} ms): the machine was busy; the added p99 is not reliable"
                    )
            run.step("RouteTable.match with 1 and 1,000 routes, in process")
            matcher = matcher_cost(info["tables"])
            upstream_desc = info["upstream"]
            versions = info["versions"]

    ratios = _ratios(summary, fixed)
    return {
        "machine": {
            "cpus": os.cpu_count(),
            "cpu": _cpu_model(),
            "python": platform.python_version(),
            "kernel": platform.release(),
            "memory_monitor": memory_monitor(),
        },
        "settings": {
            "connections": opts.connections,
            "duration_s": opts.duration,
            "repeat": opts.repeat,
            "warmup_s": opts.warmup,
            "load": f"{version_of(['wrk', '-v'])}, {opts.threads} thread(s)"
            if opts.use_wrk
            else "built-in Python closed-loop generator (bench._http_load)",
            "upstream": upstream_desc,
            "versions": versions,
            "workers": opts.workers,
            "response_bytes": 1024,
            "path": PATH,
            "requests": "one request repeated byte for byte (--same-request)"
            if opts.same_request
            else "a new path and query string on every request",
            "quick": opts.quick,
        },
        "cases": summary,
        "ratios": ratios,
        "fixed_rate": fixed,
        "matcher_ns": matcher,
        "targets": TARGETS,
        "notes": notes,
    }


async def _rated_rounds(
    opts: Options,
    run: Run,
    rated: list[Case],
    rate: int,
    runs: dict[str, list[dict[str, Any]]],
    split: tuple[set[int], set[int]] | None,
) -> None:
    """The constant-rate rounds, the generator on ``split[1]`` when given."""
    for rep in range(opts.repeat):
        for case in _turn(rated, rep):
            run.step(
                f"constant rate {rate:,} req/s, round {rep + 1} of {opts.repeat}:"
                f" {case.name}, {opts.rate_duration:g} s"
            )
            runs[case.name].append(
                await measure(
                    case,
                    opts,
                    opts.rate_duration,
                    rate,
                    cpus=split[1] if split else None,
                    # direct has no proxy: the upstream's CPUs are not watched
                    proxy_cpus=split[0] if split and case.proxy_pid is not None else None,
                )
            )


def _ratios(summary: dict[str, Any], fixed: dict[str, Any]) -> dict[str, Any]:
    def ratio(a: str, b: str, key: str) -> float | None:
        x, y = summary.get(a, {}).get(key), summary.get(b, {}).get(key)
        return round(x / y, 3) if x and y else None

    return {
        "gateway_vs_nginx_cpu": ratio("gateway", "nginx", "proxy_cpu_us"),
        "gateway_vs_nginx_rps": ratio("gateway", "nginx", "rps"),
        "gateway_vs_nginx_cpu_best": ratio("gateway", "nginx", "proxy_cpu_us_best"),
        "routes_1000_vs_1_cpu": ratio("gateway-1000", "gateway", "proxy_cpu_us"),
        "routes_1000_vs_1_cpu_best": ratio("gateway-1000", "gateway", "proxy_cpu_us_best"),
        "routes_1000_vs_1_rps": ratio("gateway-1000", "gateway", "rps"),
        "auth_vs_public_cpu": ratio("gateway-auth", "gateway", "proxy_cpu_us"),
        "session_vs_token_cpu": ratio("gateway-session", "gateway-auth", "proxy_cpu_us"),
        "session_nocache_vs_token_cpu": ratio(
            "gateway-session-nocache", "gateway-auth", "proxy_cpu_us"
        ),
        "rate_limited_vs_public_cpu": ratio("gateway-limited", "gateway", "proxy_cpu_us"),
        "synced_vs_public_cpu": ratio("gateway-synced", "gateway", "proxy_cpu_us"),
        "access_log_vs_none_cpu": ratio("gateway-accesslog", "gateway", "proxy_cpu_us"),
        "gateway_vs_interpreted_cpu": ratio("gateway", "gateway-interpreted", "proxy_cpu_us"),
        "otel_vs_none_cpu": ratio("gateway-otel", "gateway", "proxy_cpu_us"),
        "otel_10_vs_none_cpu": ratio("gateway-otel-10", "gateway", "proxy_cpu_us"),
        "otel_0_vs_none_cpu": ratio("gateway-otel-0", "gateway", "proxy_cpu_us"),
        "added_p99_ms": fixed.get("added_p99_ms"),
        "cpu_vs_nginx": {
            name: ratio(name, "nginx", "proxy_cpu_us")
            for name in summary
            if name not in ("direct", "nginx") and summary[name].get("proxy_cpu_us")
        },
        "rps_vs_nginx": {
            name: ratio(name, "nginx", "rps") for name in summary if name not in ("direct", "nginx")
        },
        "scaling_rps": {
            base: ratio(name, base, "rps")
            for name in summary
            for base in ("gateway", "nginx")
            if name.startswith(f"{base}-w")
        },
    }


DAMON = Path("/sys/kernel/mm/damon/admin/kdamonds")


def memory_monitor(root: Path = DAMON) -> str | None:
    """What the kernel's DAMON is doing, when a kdamond runs; None when none does.

    A DAMON context samples the memory it monitors every ``sample_us`` from a
    kernel thread (kdamond); on the 24 GiB development VMs it held a CPU for
    up to 4 ms at a time: a stall every proxy meets at a constant rate, which
    its p99 shows in proportion to how slowly it drains the backlog it leaves.
    """
    running = []
    for kdamond in sorted(root.glob("[0-9]*")):
        with contextlib.suppress(OSError, ValueError):
            if (kdamond / "state").read_text().strip() != "on":
                continue
            context = kdamond / "contexts" / "0"
            intervals = context / "monitoring_attrs" / "intervals"
            sample_ms = int((intervals / "sample_us").read_text()) / 1000
            ops = (context / "operations").read_text().strip()
            actions = sorted(
                {a.read_text().strip() for a in (context / "schemes").glob("[0-9]*/action")}
            )
            running.append(
                f"kdamond {kdamond.name} ({ops}, sampling every {sample_ms:g} ms"
                + (f", {'/'.join(actions)}" if actions else "")
                + ")"
            )
    return "DAMON on: " + ", ".join(running) if running else None


def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


# ----------------------------------------------------------------------------- report


def report(result: dict[str, Any], out: Callable[[str], None] = print) -> None:
    s = result["settings"]
    quick = bool(s.get("quick"))
    out(
        f"Gateway routing path: {s['connections']} connections, {s['duration_s']:g} s x "
        f"{s['repeat']} run(s) per case, interleaved, medians"
    )
    out(f"  load: {s['load']}; upstream: {s['upstream']}; {s['response_bytes']} B answers")
    if s.get("versions"):
        out("  proxies: " + "; ".join(f"{k} {v}" for k, v in s["versions"].items()))
    out(f"  requests: {s.get('requests', 'a new path and query string on every request')}")
    out(
        f"  machine: {result['machine']['cpus']} CPUs, {result['machine']['cpu']}, Python {result['machine']['python']}"
    )
    if result["machine"].get("memory_monitor"):
        out(
            f"  machine: {result['machine']['memory_monitor']} (a kernel thread that takes"
            " a CPU now and then: see direct's p99.9 and max)"
        )
    out("")
    r = result["ratios"]
    quiet = [name for name, row in result["cases"].items() if row.get("quiet")]
    rule = (
        f"the rest of the machine used under {QUIET_OTHERS:g} CPU while the run went on "
        "(/proc/stat's busy time less the run's own processes)"
    )
    out(
        f"  quiet runs ({rule}): medians of those; cases with none are marked NOISY and use every run"
        if quiet
        else f"  NOISY: no run was quiet ({rule}); "
        "a busy machine inflates nginx's CPU per request more than the gateway's, "
        "so these ratios flatter the gateway"
    )
    out("")
    out(
        f"{'case':<16}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'proxy CPU':>12}{'vs nginx':>10}"
        f"{'upstream CPU':>14}{'errors':>8}  others' CPU / load 1-min before/after, each run"
    )
    for name, row in result["cases"].items():
        vs = r.get("cpu_vs_nginx", {}).get(name)
        vs_text = "1.00x" if name == "nginx" else "-" if vs is None else f"{vs:.2f}x"
        loads = " ".join(
            f"{o if o is not None else float('nan'):.2f}:{a:.2f}/{b:.2f}"
            for o, (a, b) in zip(row.get("others_cpus", []), row.get("loads", []), strict=False)
        )
        flag = "" if row.get("quiet") else " NOISY"
        out(
            f"{name:<16}{row['rps']:>10,.0f}{row['p50_ms']:>9.3f}{row['p99_ms']:>9.3f}"
            f"{_us(row['proxy_cpu_us']):>12}{vs_text:>10}{_us(row['upstream_cpu_us']):>14}"
            f"{row['errors']:>8}  {loads}{flag}"
        )
    t = result["targets"]
    out("")
    if r["gateway_vs_nginx_cpu"] is not None:
        out(
            f"gateway / nginx CPU per request: {r['gateway_vs_nginx_cpu']:.2f}x "
            f"(target <= {t['cpu_vs_nginx']}x, aim {t['cpu_vs_nginx_aim']}x: "
            f"{_verdict(r['gateway_vs_nginx_cpu'] <= t['cpu_vs_nginx'], quick)}); "
            f"best runs {r['gateway_vs_nginx_cpu_best']:.2f}x; req/s {r['gateway_vs_nginx_rps']:.2f}x"
        )
    if r.get("auth_vs_public_cpu") is not None:
        out(
            f"authenticated route (cached verification) / public route, CPU per request: "
            f"{r['auth_vs_public_cpu']:.2f}x"
        )
    if r.get("session_vs_token_cpu") is not None:
        cases = result["cases"]
        nocache = r.get("session_nocache_vs_token_cpu")
        out(
            f"session route (cookie, token relayed) / token route, CPU per request: "
            f"{r['session_vs_token_cpu']:.2f}x with the 1 s session cache "
            f"({_us(cases['gateway-session']['proxy_cpu_us'])} vs "
            f"{_us(cases['gateway-auth']['proxy_cpu_us'])})"
            + (
                f", {nocache:.2f}x with --session-cache 0, a Redis round trip per request "
                f"({_us(cases['gateway-session-nocache']['proxy_cpu_us'])})"
                if nocache is not None
                else ""
            )
        )
    if r.get("rate_limited_vs_public_cpu") is not None:
        out(
            f"rate-limited route (a Redis round trip) / public route, CPU per request: "
            f"{r['rate_limited_vs_public_cpu']:.2f}x"
        )
    if r.get("gateway_vs_interpreted_cpu") is not None:
        out(
            f"gateway / gateway-interpreted (the hot path's source), CPU per request: "
            f"{r['gateway_vs_interpreted_cpu']:.2f}x"
        )
    if r.get("access_log_vs_none_cpu") is not None:
        out(
            f"access log on (every request, JSON) / off, CPU per request: "
            f"{r['access_log_vs_none_cpu']:.2f}x (target <= 1.1x: "
            f"{_verdict(r['access_log_vs_none_cpu'] <= 1.1, quick)})"
        )
    if r.get("otel_vs_none_cpu") is not None:
        row = result["cases"]["gateway-otel"]
        added = row["proxy_cpu_us"] - result["cases"]["gateway"]["proxy_cpu_us"]
        out(
            f"span export on (a span per request, OTLP/HTTP) / off, CPU per request: "
            f"{r['otel_vs_none_cpu']:.2f}x ({added:+.1f} us); the collector received "
            f"{row.get('spans', 0):,} spans for {row['requests']:,} requests"
        )
    for name, key, what in (
        ("gateway-otel-10", "otel_10_vs_none_cpu", "sampling 1 trace in 10 (--otel-sample 0.1)"),
        ("gateway-otel-0", "otel_0_vs_none_cpu", "sampling none (--otel-sample 0)"),
    ):
        if r.get(key) is not None:
            row = result["cases"][name]
            added = row["proxy_cpu_us"] - result["cases"]["gateway"]["proxy_cpu_us"]
            out(
                f"span export {what} / off, CPU per request: {r[key]:.2f}x ({added:+.1f} us); "
                f"the collector received {row.get('spans', 0):,} spans for "
                f"{row['requests']:,} requests"
            )
    if r.get("synced_vs_public_cpu") is not None:
        out(
            f"synced rate-limited route (decided in memory) / public route, CPU per request: "
            f"{r['synced_vs_public_cpu']:.2f}x (target <= 1.2x: "
            f"{_verdict(r['synced_vs_public_cpu'] <= 1.2, quick)})"
        )
    for name, scale in r.get("scaling_rps", {}).items():
        if scale is not None:
            out(
                f"scaling {name} / its 1-process case, req/s at saturation: {scale:.2f}x "
                f"({result['machine']['cpus']} CPUs; wrk runs on the same cores and competes "
                f"with the proxy's workers and the upstream, so this is a floor, not the proxy's "
                f"scaling alone)"
            )
    if r["routes_1000_vs_1_cpu"] is not None:
        out(
            f"1,000 routes / 1 route: CPU per request {r['routes_1000_vs_1_cpu']:.3f}x, "
            f"(best runs {r['routes_1000_vs_1_cpu_best']:.3f}x), req/s "
            f"{r['routes_1000_vs_1_rps']:.3f}x (target within 10%: "
            f"{_verdict(abs(r['routes_1000_vs_1_cpu'] - 1) <= 0.10, quick)})"
        )
    fixed = result["fixed_rate"]
    if fixed:
        out(f"at {fixed['rate']:,} req/s (half the gateway's saturation), {fixed['generator']}:")
        if "cpus" in fixed:
            out(
                f"  (each proxy pinned to CPU {fixed['cpus']['proxy']}, the generator and the"
                f" upstream to CPU {fixed['cpus']['generator_and_upstream']})"
            )
        for name in ("direct", "nginx", "gateway"):
            if name in fixed:
                row = fixed[name]
                intruded = row.get("others_on_proxy_cpus")
                cost = row.get("proxy_cpu_us")
                if cost:
                    # At a constant rate a request rarely shares a wake-up with
                    # others: it costs more than at saturation, so "half the
                    # saturation rate" keeps a proxy busier than half the time.
                    out(
                        f"  {name:<10} CPU per request at this rate {cost:.1f} us:"
                        f" busy {cost * row['rps'] / 1e6 * 100:.0f}% of the time"
                    )
                out(
                    f"  {name:<10} p50 {row['p50_ms']:.3f} ms  p99 {row['p99_ms']:.3f} ms  "
                    f"p99.9 {row['p999_ms']:.3f} ms  max {row['max_ms']:.2f} ms  "
                    f"(sends late by p99 {row['late_p99_ms']:.3f} ms"
                    + (
                        f"; others took {intruded * 100:.1f}% of the proxy's CPU"
                        if intruded is not None
                        else ""
                    )
                    + ")"
                )
        out(
            f"  added p99 over direct: {fixed['added_p99_ms']:.3f} ms "
            f"(target < {t['added_p99_ms']} ms: {_verdict(fixed['added_p99_ms'] < t['added_p99_ms'], quick)})"
        )
        if "nginx_added_p99_ms" in fixed:
            beyond = fixed["added_p99_ms"] - fixed["nginx_added_p99_ms"]
            limit = t["added_p99_vs_nginx_ms"]
            out(
                f"  nginx's added p99 over direct: {fixed['nginx_added_p99_ms']:.3f} ms; "
                f"the gateway adds {beyond:+.3f} ms more (target within {limit} ms of nginx's: "
                f"{_verdict(beyond <= limit, quick)})"
            )
    if result["matcher_ns"]:
        costs = ", ".join(f"{k}: {v / 1000:.2f} us" for k, v in result["matcher_ns"].items())
        out(f"RouteTable.match of the request, in process: {costs}")
    for note in result["notes"]:
        out(f"note: {note}")
    if "load" in result:
        out(Run.load_line(result["load"]))


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} us"


def _verdict(ok: bool, quick: bool) -> str:
    """A smoke run (``--quick``) supports no verdict: one second of load proves nothing."""
    if quick:
        return "not judged (--quick)"
    return "met" if ok else "MISSED"


def main(argv: list[str]) -> int:
    opts = parse_args(argv)
    run = Run("gateway", quick=opts.quick)
    try:
        result = asyncio.run(bench(opts, run))
    except RuntimeError as exc:
        print(f"bench gateway: {exc}", file=sys.stderr)
        return 1
    result["load"] = run.machine()
    report(result)
    if opts.output is not None:
        opts.output.parent.mkdir(parents=True, exist_ok=True)
        opts.output.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
        print(f"results written to {opts.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
