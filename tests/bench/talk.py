"""What every benchmark's run must show, whatever it measures (see ``bench/_run.py``)."""

from __future__ import annotations

import re
import subprocess
from typing import Any

from bench._run import NOISY_LOAD

__all__ = ["assert_talked"]

VERDICTS = re.compile(r"\b(met|MISSED)\b")


def assert_talked(
    done: subprocess.CompletedProcess[str], name: str, report: dict[str, Any]
) -> None:
    """Progress went to stderr as it ran; a ``--quick`` run judged no target; the load is recorded."""
    progress = [line for line in done.stderr.splitlines() if line.startswith(f"bench {name}: ")]
    assert progress[0].startswith(f"bench {name}: started (--quick"), done.stderr
    steps = [
        line for line in progress if re.search(r"\[\d+/\d+\] .+ elapsed, about \S+ left", line)
    ]
    assert len(steps) >= 2, done.stderr
    assert progress[-1].startswith(f"bench {name}: done in"), done.stderr
    assert not any(line.startswith(f"bench {name}: ") for line in done.stdout.splitlines())
    # --quick: a smoke run supports no verdict against a target.
    assert VERDICTS.findall(done.stdout) == [], done.stdout
    load = report["load"]
    assert len(load["load_before"]) == len(load["load_after"]) == 3
    assert load["noisy"] == (max(load["load_before"][0], load["load_after"][0]) > NOISY_LOAD)
    verdict = "NOISY" if load["noisy"] else "quiet"
    assert re.search(rf"^load average \(1, 5, 15 min\): before .*: {verdict}", done.stdout, re.M)
