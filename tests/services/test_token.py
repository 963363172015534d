"""``python -m services token USER`` when there is no system to ask: one line, its own status.

The cases with a running system (a token, a wrong password, the rate limit)
are in ``test_launcher.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from core.testing import free_port
from services.rundir import RunDir


def token(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESSAIM_")}
    return subprocess.run(
        [sys.executable, "-m", "services", "token", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def one_line(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert (result.returncode, result.stdout, result.stderr.count("\n")) == (code, "", 1)
    return result.stderr


def test_without_a_run_directory_it_says_where_it_looked(tmp_path: Path) -> None:
    assert "no run directory run/" in one_line(token(tmp_path, "alice"), 2)
    elsewhere = tmp_path / "elsewhere"
    assert f"no run directory {elsewhere}/" in one_line(
        token(tmp_path, "alice", "--run-dir", str(elsewhere)), 2
    )
    assert "give the user" in one_line(token(tmp_path), 2)


def test_a_system_that_is_gone_or_does_not_answer_is_down(tmp_path: Path) -> None:
    files = RunDir(tmp_path / "run")
    files.path.mkdir()
    files.write_secret("alice.password", "secret")
    assert "is not running" in one_line(token(tmp_path, "alice"), 3)  # never started
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    files.write_system(dead.pid, {"gateway": "http://127.0.0.1:1"}, ["alice"])
    assert "is not running" in one_line(token(tmp_path, "alice"), 3)  # its launcher died
    # A launcher that runs (this test's process) but a gateway that does not answer.
    gateway = f"http://127.0.0.1:{free_port()}"
    files.write_system(os.getpid(), {"gateway": gateway}, ["alice"])
    assert f"the gateway at {gateway} does not answer" in one_line(token(tmp_path, "alice"), 3)
