"""``python -m bench security --quick``: runs end to end and reports what it measured."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.bench.talk import assert_talked

ROOT = Path(__file__).resolve().parents[2]


def test_quick_security_bench_prints_a_table_and_writes_results(tmp_path: Path) -> None:
    output = tmp_path / "security.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench", "security", "--quick", "--output", str(output)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "verify, cached token" in run.stdout
    report = json.loads(output.read_text())
    assert_talked(run, "security", report)
    assert report["quick"] is True
    for figure in ("verify_cached_us", "authorize_cached_us", "verify_full_us"):
        assert report[figure] > 0
