from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import orjson

from bench.gateway import busy_cpu_seconds, cpus_busy_seconds, memory_monitor, routes_toml
from core.routes.table import RouteTable
from tests.bench.talk import assert_talked

ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_without_nginx_and_wrk_reports_every_case_it_can_run(tmp_path: Path) -> None:
    """The CI path: neither nginx nor wrk, so the fallbacks run and the report says so."""
    output = tmp_path / "gateway.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "gateway",
            "--quick",
            "--no-nginx",
            "--no-wrk",
            "--no-anchors",
            "--workers",
            "2",
            "--output",
            str(output),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = orjson.loads(output.read_bytes())
    assert_talked(done, "gateway", result)
    assert "not judged (--quick)" in done.stdout

    assert "built-in" in result["settings"]["load"]
    assert "asyncio server" in result["settings"]["upstream"]
    assert any("wrk not installed or disabled" in n for n in result["notes"])
    assert any("nginx not installed or disabled" in n for n in result["notes"])
    assert "nginx" not in result["cases"]

    cases = result["cases"]
    expected = (
        {
            "direct",
            "gateway",
            "gateway-auth",
            "gateway-session",
            "gateway-session-nocache",
            "gateway-limited",
            "gateway-synced",
            "gateway-accesslog",
            "gateway-otel",
            "gateway-otel-10",
            "gateway-otel-0",
            "gateway-1000",
            "gateway-interpreted",
            "gateway-w2",
        }
        if (ROOT / "gateway.py").exists()
        else {"direct"}
    )
    assert set(cases) == expected
    for name, row in cases.items():
        assert row["requests"] > 0, name
        assert row["errors"] == 0, name
        assert row["rps"] > 0, name
        assert 0 < row["p50_ms"] <= row["p99_ms"], name
        assert row["upstream_cpu_us"] is not None, name
    if "gateway" in cases:
        assert cases["gateway"]["proxy_cpu_us"] > 0
        assert result["ratios"]["routes_1000_vs_1_cpu"] is not None
        # Every request of the guarded cases passed its token check / rate limit.
        assert result["ratios"]["auth_vs_public_cpu"] is not None
        # The session cases went through the session route (a cookie from POST /-/session).
        assert result["ratios"]["session_vs_token_cpu"] is not None
        assert result["ratios"]["session_nocache_vs_token_cpu"] is not None
        assert "session route (cookie, token relayed) / token route" in done.stdout
        assert result["ratios"]["rate_limited_vs_public_cpu"] is not None
        assert result["ratios"]["synced_vs_public_cpu"] is not None
        assert result["ratios"]["access_log_vs_none_cpu"] is not None
        # The hot path's source beside whichever build "gateway" runs, each as its /health says.
        assert result["ratios"]["gateway_vs_interpreted_cpu"] is not None
        versions = result["settings"]["versions"]
        assert versions["gateway"].startswith("Essaim, hot path ")
        assert versions.get("gateway-interpreted", versions["gateway"]) == (
            "Essaim, hot path interpreted (ESSAIM_NATIVE=off)"
        )
        assert "gateway / gateway-interpreted (the hot path's source)" in done.stdout
        # The export's CPU is in the runs: each ended once the collector had its spans.
        assert result["ratios"]["otel_vs_none_cpu"] is not None
        assert cases["gateway-otel"]["spans"] > 0
        assert "span export on (a span per request, OTLP/HTTP) / off" in done.stdout
        # Sampling one trace in ten: about a tenth of the requests' spans arrived.
        sampled = cases["gateway-otel-10"]
        assert result["ratios"]["otel_10_vs_none_cpu"] is not None
        assert 0.08 * sampled["requests"] <= sampled["spans"] <= 0.12 * sampled["requests"]
        assert "span export sampling 1 trace in 10 (--otel-sample 0.1) / off" in done.stdout
        # Sampling none: no span at all, the cost of an unsampled request.
        assert result["ratios"]["otel_0_vs_none_cpu"] is not None
        assert cases["gateway-otel-0"]["spans"] == 0
        assert "span export sampling none (--otel-sample 0) / off" in done.stdout
        # The workers' CPU is counted (the parent's alone would be near zero).
        assert cases["gateway-w2"]["proxy_cpu_us"] > 0.3 * cases["gateway"]["proxy_cpu_us"]
        assert result["ratios"]["scaling_rps"]["gateway"] is not None
        fixed = result["fixed_rate"]
        assert fixed["rate"] == round(cases["gateway"]["rps"] / 2)
        assert fixed["gateway"]["requests"] > 0
        assert "added_p99_ms" in fixed
        if "cpus" in fixed:  # pinned (2 CPUs or more): what others took of the proxy's CPU
            share = fixed["gateway"]["others_on_proxy_cpus"]
            assert 0 <= share <= len(fixed["cpus"]["proxy"])
            assert "of the proxy's CPU" in done.stdout
            assert "others_on_proxy_cpus" not in fixed["direct"]
        assert fixed["gateway"]["proxy_cpu_us"] > 0
        assert "gateway    CPU per request at this rate" in done.stdout
        # The far tail, where the machine's own stalls show.
        for name in ("direct", "gateway"):
            row = fixed[name]
            assert row["p99_ms"] <= row["p999_ms"] <= row["max_ms"], name
        assert "p99.9" in done.stdout
        if "nginx" in fixed:  # nginx's added p99 is the yardstick of the gateway's
            assert fixed["nginx_added_p99_ms"] == round(
                fixed["nginx"]["p99_ms"] - fixed["direct"]["p99_ms"], 4
            )
            assert "more (target within 0.5 ms of nginx's" in done.stdout
    assert set(result["matcher_ns"]) == {"gateway", "gateway-1000"}
    # Every run says how much CPU the rest of the machine used while it ran.
    for row in cases.values():
        assert all(
            isinstance(r["others_cpus"], float) and r["others_cpus"] >= 0 for r in row["runs"]
        )
        assert row["quiet"] == any(r["quiet"] for r in row["runs"])

    out = done.stdout
    assert "req/s" in out
    assert "others' CPU / load 1-min before/after" in out
    assert "direct" in out
    assert f"results written to {output}" in out


def test_the_busy_time_of_every_cpu_adds_up_to_the_machine_s() -> None:
    cpus = set(range(os.cpu_count() or 1))
    every, each = busy_cpu_seconds(), cpus_busy_seconds(cpus)
    # Read a moment apart, in 10 ms ticks: within a few ticks per CPU.
    assert abs(every - each) <= 0.05 * len(cpus) + 0.05
    assert cpus_busy_seconds({0}) <= each
    assert cpus_busy_seconds(set()) == 0


def test_bench_route_file_has_1000_routes_and_the_hit_is_the_last() -> None:
    table = RouteTable.parse(tomllib.loads(routes_toml(1000)))
    assert len(table) == 1000
    assert table.routes[-1].id == "bench"
    found = table.match("GET", "127.0.0.1:8080", "/bench/item", {})
    assert found is not None
    assert found[0].id == "bench"
    assert found[0].service == "bench-upstream"
    one = RouteTable.parse(tomllib.loads(routes_toml(1)))
    assert [r.id for r in one.routes] == ["bench"]


def test_a_running_damon_is_named_with_its_sampling_interval(tmp_path: Path) -> None:
    """The report names the kernel's memory monitor when a kdamond runs, as sysfs shows it."""
    assert memory_monitor(tmp_path) is None  # no kdamond at all
    context = tmp_path / "0" / "contexts" / "0"
    (context / "monitoring_attrs" / "intervals").mkdir(parents=True)
    (context / "schemes" / "0").mkdir(parents=True)
    (tmp_path / "0" / "state").write_text("off\n")
    (context / "monitoring_attrs" / "intervals" / "sample_us").write_text("500000\n")
    (context / "operations").write_text("paddr\n")
    (context / "schemes" / "0" / "action").write_text("pageout\n")
    assert memory_monitor(tmp_path) is None  # configured, not running
    (tmp_path / "0" / "state").write_text("on\n")
    assert memory_monitor(tmp_path) == "DAMON on: kdamond 0 (paddr, sampling every 500 ms, pageout)"
