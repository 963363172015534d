"""The registry benchmark runs end to end in its quick mode (so that it cannot rot)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

from tests.bench.talk import assert_talked


def test_quick_registry_benchmark_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "registry.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "registry", "--quick", "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, proc.stderr
    assert "graceful deregistration" in proc.stdout
    results = orjson.loads(out.read_bytes())
    assert_talked(proc, "registry", results)
    assert results["deregistration"]["trials"] == 50
    assert results["deregistration"]["p99_ms"] > 0
    assert results["expiry"]["instances"] == 5
    # A crashed instance is seen down after its TTL, not before.
    assert results["expiry"]["after_ttl_p50_ms"] >= 0
    assert results["relist"]["instances"] == 1000
    assert results["heartbeats"]["http_per_s"] > 0
