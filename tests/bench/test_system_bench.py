from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.bench.talk import assert_talked

ROOT = Path(__file__).resolve().parents[2]


def test_quick_system_bench_prints_a_table_and_writes_results(tmp_path: Path) -> None:
    output = tmp_path / "system.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench", "system", "--quick", "--output", str(output)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "per s" in run.stdout
    report = json.loads(output.read_text())
    assert_talked(run, "system", report)
    assert (report["benchmark"], report["quick"]) == ("system", True)
    rows = [(r["scenario"], r["mode"]) for r in report["results"]]
    assert rows == [
        ("events", "max rate"),
        ("events", "paced 200/s"),
        ("bills", "1 connections"),
        ("bills", "16 connections"),
        ("events", "bills' outbox"),
        ("saga", "16 connections"),
        ("saga", "paced 50/s"),
    ]
    for result in report["results"]:
        assert result["errors"] == 0
        assert result["count"] > 0
        assert result["per_s"] > 0
        assert 0 < result["p50_ms"] <= result["p99_ms"] <= result["max_ms"]
