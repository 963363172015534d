"""``python -m bench config --quick``: runs end to end and reports what it measured."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.bench.talk import assert_talked

ROOT = Path(__file__).resolve().parents[2]


def test_quick_config_bench_prints_a_table_and_writes_results(tmp_path: Path) -> None:
    output = tmp_path / "config.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench", "config", "--quick", "--output", str(output)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "p99 ms" in run.stdout
    assert "target p99 < 100 ms" in run.stdout
    report = json.loads(output.read_text())
    assert_talked(run, "config", report)
    assert "target p99 < 100 ms: not judged (--quick)" in run.stdout
    assert report["benchmark"] == "config"
    assert report["quick"] is True
    assert report["clients"] == 20
    assert report["samples"] == report["clients"] * report["changes"]
    assert 0 < report["p50_ms"] <= report["p99_ms"] <= report["max_ms"]
