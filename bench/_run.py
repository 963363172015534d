"""What every benchmark shares: progress as it goes, the machine's load, verdicts.

A benchmark makes one :class:`Run` at its start and:

- calls :meth:`Run.step` as each part begins: one line on stderr with the
  part (the case, the round), the step number, the time spent and about how
  long is left, so that a run of minutes is never silent;
- puts :meth:`Run.machine` in its report: the load average before and after
  (``os.getloadavg``: 1, 5 and 15 minutes) and ``noisy``, true when the
  1-minute load average was above :data:`NOISY_LOAD` before or after the
  run (figures from a busy machine are inflated, and unevenly: a busy
  machine costs nginx more than a Python process, see bench/README.md);
  :meth:`Run.load_line` is the same for the printed table;
- asks :meth:`Run.verdict` for "met" or "MISSED" against a target, which
  says "not judged (--quick)" instead for a ``--quick`` run: a smoke run of a
  second supports no verdict.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

__all__ = ["NOISY_LOAD", "Run"]

#: Above this 1-minute load average (before or after), a run is marked noisy.
#: It is the "otherwise idle" of the project's performance figures: on the
#: 2-core machines they come from, an idle machine sits at 0.0 to 0.2.
NOISY_LOAD = 0.3


def _clock(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


class Run:
    """One run of the benchmark ``name``; ``steps`` parts planned to take ``planned`` seconds."""

    def __init__(
        self,
        name: str,
        *,
        quick: bool,
        steps: int = 0,
        planned: float = 0.0,
        stream: TextIO | None = None,
    ) -> None:
        self.name = name
        self.quick = quick
        self.steps = steps
        self.planned = planned
        self.stream = stream
        self.done = 0
        self.started = time.monotonic()
        self.load_before = os.getloadavg()
        self.say(
            f"started{' (--quick: a smoke run, no verdicts)' if quick else ''};"
            f" load average {self._load(self.load_before)}"
        )

    def say(self, text: str) -> None:
        print(f"bench {self.name}: {text}", file=self.stream or sys.stderr, flush=True)

    def step(self, what: str, *, steps: int | None = None) -> None:
        """Part ``what`` begins (``steps`` revises the number of parts)."""
        if steps is not None:
            self.steps = steps
        self.done += 1
        elapsed = time.monotonic() - self.started
        count = f"[{self.done}/{self.steps}] " if self.steps else ""
        left = ""
        if self.steps and self.done > 1:
            per_step = elapsed / (self.done - 1)
            left = f", about {_clock(per_step * (self.steps - self.done + 1))} left"
        elif self.planned:
            left = f", about {_clock(self.planned - elapsed)} left"
        self.say(f"{count}{what} ({_clock(elapsed)} elapsed{left})")

    def verdict(self, ok: bool) -> str:
        if self.quick:
            return "not judged (--quick)"
        return "met" if ok else "MISSED"

    def machine(self) -> dict[str, Any]:
        """The load before and after, and whether that makes the run noisy."""
        after = os.getloadavg()
        self.load_after = after
        self.say(
            f"done in {_clock(time.monotonic() - self.started)}; load average {self._load(after)}"
        )
        return {
            "load_before": [round(x, 2) for x in self.load_before],
            "load_after": [round(x, 2) for x in after],
            "noisy": max(self.load_before[0], after[0]) > NOISY_LOAD,
            "noisy_rule": f"1-minute load average above {NOISY_LOAD} before or after the run",
        }

    @staticmethod
    def load_line(machine: dict[str, Any]) -> str:
        """The line of the printed report about the machine's load."""
        before = ", ".join(f"{x:.2f}" for x in machine["load_before"])
        after = ", ".join(f"{x:.2f}" for x in machine["load_after"])
        verdict = (
            f"NOISY ({machine['noisy_rule']}): the machine was busy, the figures are inflated"
            if machine["noisy"]
            else "quiet"
        )
        return f"load average (1, 5, 15 min): before {before}; after {after}: {verdict}"

    @staticmethod
    def _load(load: tuple[float, float, float]) -> str:
        return ", ".join(f"{x:.2f}" for x in load)
