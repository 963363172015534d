from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.bench.talk import assert_talked

ROOT = Path(__file__).resolve().parents[2]


def test_quick_events_bench_prints_a_table_and_writes_results(tmp_path: Path) -> None:
    output = tmp_path / "events.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench", "events", "--quick", "--output", str(output)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "events/s" in run.stdout
    report = json.loads(output.read_text())
    assert_talked(run, "events", report)
    assert report["benchmark"] == "events"
    assert report["quick"] is True
    rows = {(r["scenario"], r["mode"]) for r in report["results"]}
    assert rows == {
        ("publish", "max rate"),
        ("publish", "paced 500/s"),
        ("outbox", "max rate"),
        ("outbox", "paced 500/s"),
    }
    for result in report["results"]:
        assert result["events_per_s"] > 0
        assert 0 < result["p50_ms"] <= result["p99_ms"] <= result["max_ms"]
