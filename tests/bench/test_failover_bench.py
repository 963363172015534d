"""kill -9 of the Redis primary under load, behind Sentinel, with real processes (bench failover)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson


def test_a_primary_failover_under_load_fails_no_get_and_loses_no_event(tmp_path: Path) -> None:
    out = tmp_path / "failover.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "failover", "--quick", "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    print(proc.stdout)
    r = orjson.loads(out.read_bytes())
    assert r["promoted_port"] != r["killed_port"]
    # The gateway routes on its last snapshot: no idempotent GET fails.
    assert r["gateway_gets"]["ok"] > 0
    assert r["gateway_gets"]["failed"] == 0
    # Registry, config and events come back by themselves, with nothing lost or handled twice.
    assert r["registry_calls"]["ok"] > 0
    assert r["config_writes"]["ok"] > 0
    assert r["registry_down_s"] < 15
    assert r["config_down_s"] < 15
    assert 0 < r["events"]["consumption_back_s"] < 15
    assert r["events"]["produced"] == r["events"]["handled"] > 0
    assert r["events"]["lost"] == 0
    assert r["events"]["handled_twice"] == 0
