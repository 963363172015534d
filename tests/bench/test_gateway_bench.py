from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import orjson

from bench.gateway import routes_toml
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
            "gateway-1000",
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
        # The export's CPU is in the runs: each ended once the collector had its spans.
        assert result["ratios"]["otel_vs_none_cpu"] is not None
        assert cases["gateway-otel"]["spans"] > 0
        assert "span export on (a span per request, OTLP/HTTP) / off" in done.stdout
        # The workers' CPU is counted (the parent's alone would be near zero).
        assert cases["gateway-w2"]["proxy_cpu_us"] > 0.3 * cases["gateway"]["proxy_cpu_us"]
        assert result["ratios"]["scaling_rps"]["gateway"] is not None
        fixed = result["fixed_rate"]
        assert fixed["rate"] == round(cases["gateway"]["rps"] / 2)
        assert fixed["gateway"]["requests"] > 0
        assert "added_p99_ms" in fixed
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
