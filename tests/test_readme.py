"""Every block of README.md is played, checked, or visibly set aside with a reason that holds.

- ```console blocks are played, every one, in order, against the system the
  launcher started (``tests/services/test_launcher.py``, which reads them with
  the same :func:`tests.console.console_blocks`);
- ```text blocks show what the launcher prints: the same test checks that
  the launcher printed each of their lines;
- ```toml blocks are route tables: each must be one the gateway accepts;
- ```sh blocks hold commands that can't be played inside the suite (they run
  until Ctrl-C, or are the suite itself); each command is in
  :data:`NOT_PLAYED` with its reason and a check that the reason holds.

A block of any other kind, or a command without a reason, fails the test.
"""

from __future__ import annotations

import subprocess
import tomllib
from collections.abc import Callable
from pathlib import Path

from core.routes.table import RouteTable
from tests.console import console_blocks, fenced_blocks
from tests.services import test_launcher

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def make_runs(target: str, command: str) -> bool:
    """Whether ``make TARGET`` ends by running ``command`` (``make -n``: nothing runs)."""
    dry = subprocess.run(
        ["make", "-n", "-s", target], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return command in dry.stdout.strip().splitlines()[-1]


def script_run_by(test: str, script: str) -> bool:
    """Whether the test file ``test`` runs ``script`` itself."""
    return f'"{script}"' in (ROOT / test).read_text()


#: Commands not played, each with why, and a check that the why holds.
NOT_PLAYED: dict[str, tuple[str, Callable[[], bool]]] = {
    "make up": (
        "runs until Ctrl-C; it runs `python -m services`, which tests/services/test_launcher.py"
        " starts as `make up` does and plays every console block against",
        lambda: make_runs("up", "-m services"),
    ),
    "make test": ("runs this test suite itself", lambda: make_runs("test", "-m pytest")),
    "REGISTRY_TOKEN=$(cat run/registry.token) examples/shell/service.sh": (
        "runs in the foreground until Ctrl-C, on a fixed port (8702) that the suite must not"
        " take; tests/test_examples.py runs the same script on a free port",
        lambda: script_run_by("tests/test_examples.py", "examples/shell/service.sh"),
    ),
}


def commands(block: str) -> list[str]:
    """The commands of an ``sh`` block, without comments and blank lines (``\\`` joins lines)."""
    joined = block.replace("\\\n", " ")
    return [
        " ".join(cmd.split()) for line in joined.splitlines() if (cmd := line.split("#")[0].strip())
    ]


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


def test_the_commands_set_aside_are_there_for_the_reason_given() -> None:
    shown = {cmd for lang, body in fenced_blocks(README) if lang == "sh" for cmd in commands(body)}
    assert shown == set(NOT_PLAYED)  # no stale reason either
    for command, (reason, holds) in NOT_PLAYED.items():
        assert holds(), f"{command!r} is set aside because it {reason}: that no longer holds"


def test_every_page_of_docs_is_linked_from_the_readme() -> None:
    text = README.read_text()
    pages = sorted(p.name for p in (ROOT / "docs").glob("*.md"))
    assert pages
    assert [page for page in pages if f"](docs/{page}" not in text] == []
