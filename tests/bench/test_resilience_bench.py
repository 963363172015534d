"""``python -m bench resilience --quick``: faults under load with the launcher's system, real processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench._traffic import KINDS
from tests.bench.talk import assert_talked

ROOT = Path(__file__).resolve().parents[2]


def test_quick_resilience_bench_reports_every_case_and_the_config_change_survives(
    tmp_path: Path,
) -> None:
    output = tmp_path / "resilience.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "resilience", "--quick", "--output", str(output)],
        cwd=ROOT, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(output.read_text())
    assert_talked(done, "resilience", report)
    assert (report["benchmark"], report["quick"]) == ("resilience", True)
    cases = report["cases"]
    assert [c["number"] for c in cases] == [1, 2, 3, 4, 5, 6]
    for case in cases:
        assert case["sent"] > 0, case
        assert case["failed"] == sum(case["by_kind"].values()), case
        assert set(case["by_kind"]) == set(KINDS)
        assert case["fault_s"] > 0, case
        assert case["targets"], case
        assert all(t["verdict"] == "not judged (--quick)" for t in case["targets"])
        assert case["case"] in done.stdout
    # A kill -9 is followed until the restarted instance answers again.
    assert cases[0]["killed"] == "inventory-1"
    assert cases[0]["full_service_s"] is not None
    # python -m services restart did its job (inventory, then the gateway).
    assert [r["name"] for r in cases[4]["restarts"]] == ["inventory", "gateway"]
    assert all(r["exit"] == 0 for r in cases[4]["restarts"]), cases[4]["restarts"]
    # Every bill accepted under the faults ended confirmed or rejected.
    for case in (cases[2], cases[4]):
        assert case["bills"]["accepted"] > 0, case
        assert case["bills"]["lost"] == 0, case
    # The tax rate set over configsvc's API is still in force after Redis restarted empty.
    config = cases[5]["config"]
    assert config["set"] != config["before"]
    assert config["after_configsvc"] == config["after_bill"] == config["set"], config
    assert config["survived"] is True
