"""core.runner.free_port: ports for processes to bind, out of the way of outgoing connections
and of each other."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from core.runner import LOWEST_PORT, _outgoing_range, free_port

ROOT = Path(__file__).resolve().parents[2]


def test_a_free_port_is_below_the_range_of_outgoing_connections_and_binds() -> None:
    low, _ = _outgoing_range()
    port = free_port()
    assert LOWEST_PORT <= port < low
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()


def test_no_port_is_handed_out_twice_by_one_process() -> None:
    given = [free_port() for _ in range(300)]
    assert len(set(given)) == 300


_PICKER = """
import sys
from core.runner import free_port
sys.stdin.readline()  # every picker starts at once
print(" ".join(str(free_port()) for _ in range(int(sys.argv[1]))))
"""


def test_processes_choosing_at_once_never_get_the_same_port() -> None:
    # Four processes, 250 ports each, from about 22,000: by chance alone
    # (each only checking that a port binds) about 20 pairs would collide.
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _PICKER, "250"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for _ in range(4)
    ]
    given: list[int] = []
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        given.extend(int(p) for p in out.split())
    assert len(given) == 1000
    assert len(set(given)) == 1000
