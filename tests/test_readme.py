"""Every block of README.md is played, checked, or visibly set aside with a reason that holds.

- ```console blocks are played, every one, in order, against the system the
  launcher started (``tests/services/test_launcher.py``, which reads them with
  the same :func:`tests.console.console_blocks`);
- ```text blocks show what the launcher prints: the same test checks that
  the launcher printed each of their lines;
- ```toml blocks are route tables: each must be one the gateway accepts;
- ```sh blocks hold commands that can't be played inside the suite; each
  command is in :data:`NOT_PLAYED` with its reason, and the reason is checked.

A block of any other kind, or a command without a reason, fails the test.
"""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

from core.routes.table import RouteTable
from tests.console import console_blocks, fenced_blocks
from tests.services import test_launcher

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

#: Commands not played, with why: ``(reason, make target, what the target must run)``.
NOT_PLAYED = {
    "make up": (
        "runs until Ctrl-C; it runs `python -m services`, which tests/services/test_launcher.py"
        " starts as `make up` does and plays every console block against",
        "up",
        "-m services",
    ),
    "make test": ("runs this test suite itself", "test", "-m pytest"),
}


def commands(block: str) -> list[str]:
    """The commands of an ``sh`` block: its lines without comments and blank lines."""
    return [cmd for line in block.splitlines() if (cmd := line.split("#")[0].strip())]


def test_every_block_is_played_checked_or_set_aside_with_a_reason() -> None:
    blocks = fenced_blocks(README)
    kinds = {lang for lang, _ in blocks}
    assert kinds <= {"console", "text", "toml", "sh"}, kinds
    # The launcher's test plays the console blocks of the whole file, not a section.
    assert test_launcher.readme_examples() == console_blocks(README)
    assert sum(1 for lang, _ in blocks if lang == "console") >= 15
    for lang, body in blocks:
        if lang == "toml":
            assert len(RouteTable.parse(tomllib.loads(body))) >= 1
        if lang == "sh":
            unclassified = [cmd for cmd in commands(body) if cmd not in NOT_PLAYED]
            assert unclassified == [], "a README command neither played nor set aside"


def test_the_commands_set_aside_run_what_their_reason_says() -> None:
    shown = {cmd for lang, body in fenced_blocks(README) if lang == "sh" for cmd in commands(body)}
    assert shown == set(NOT_PLAYED)  # no stale reason either
    for _reason, target, runs in NOT_PLAYED.values():
        dry = subprocess.run(
            ["make", "-n", "-s", target], cwd=ROOT, capture_output=True, text=True, check=True
        )
        assert runs in dry.stdout.strip().splitlines()[-1], (target, dry.stdout)
