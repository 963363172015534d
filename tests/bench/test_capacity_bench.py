"""The capacity benchmark runs end to end in its quick mode (so that it cannot rot)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson


def test_quick_capacity_benchmark_reports_redis_cpu_per_operation(tmp_path: Path) -> None:
    out = tmp_path / "capacity.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "capacity", "--quick", "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = orjson.loads(out.read_bytes())
    rows = {row["operation"]: row for row in results["rows"]}
    for name in ("heartbeat", "register", "rate-limit decision", "config read (3 documents)"):
        assert rows[name]["redis_cpu_us"] > 0, name
        assert rows[name]["per_redis_core_per_s"] > 0, name
    # Every published event was read back by the consumer phase.
    assert (
        rows["consume event (read 100, ack)"]["units"]
        == rows["publish event (batches of 100)"]["units"]
    )
    assert "Redis CPU per operation" in proc.stdout
