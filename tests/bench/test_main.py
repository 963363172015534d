"""``python -m bench``: the list of benchmarks, each one's --help, and a quick run that talks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.__main__ import available
from tests.bench.talk import assert_talked

ROOT = Path(__file__).resolve().parents[2]


def bench(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def test_help_lists_every_benchmark_with_its_default_duration() -> None:
    done = bench("--help")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    table = lines[next(i for i, line in enumerate(lines) if line.startswith("benchmark ")) + 1 :]
    rows = {line.split()[0]: line for line in table if line.strip()}
    assert set(rows) == set(available())
    for name, row in rows.items():
        assert " about " in row, row  # "about 30 s", "about 5 min"
        assert not row.split(None, 1)[1].startswith("?"), name


@pytest.mark.parametrize("name", available())
def test_each_benchmark_prints_its_help_and_does_not_start(name: str) -> None:
    done = bench(name, "--help", timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: python -m bench {name}")
    assert "--quick" in done.stdout
    assert f"bench {name}: started" not in done.stderr


def test_quick_upstream_bench_talks_and_judges_nothing(tmp_path: Path) -> None:
    output = tmp_path / "upstream.json"
    done = bench("upstream", "--quick", "--output", str(output), timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(output.read_text())
    assert_talked(done, "upstream", report)
    assert len(report["balancers"]) == 9
    assert all(row["choose_us"] > 0 for row in report["balancers"])
