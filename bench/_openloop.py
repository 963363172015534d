"""The C constant-rate generator (``bench/openloop.c``), built on first use.

The Python open-loop generator (:mod:`bench._http_load` ``--rate``) wakes on
1 ms timers and sends what fell due in bursts, and its own CPU (about half a
core at 15,000 requests/s) competes with the process under test on a small
machine: its sends ran late by 2 to 6 ms at p99, which is more than the
latency it was there to measure. ``openloop`` paces from a 50 µs timer in a
few percent of a core. It is compiled with the machine's C compiler into
the temporary directory, once per version of its source; without a
compiler, :func:`binary` says why and the benchmarks fall back to Python.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

__all__ = ["SOURCE", "binary"]

SOURCE = Path(__file__).resolve().parent / "openloop.c"


def binary() -> tuple[str | None, str]:
    """The path of the built generator and how it was got, or None and why not."""
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        return None, "no C compiler (cc, gcc or clang) to build bench/openloop.c"
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    target = Path(tempfile.gettempdir()) / f"essaim-openloop-{digest}"
    if target.exists():
        return str(target), f"bench/openloop.c built with {Path(cc).name}"
    partial = target.with_suffix(".part")
    try:
        done = subprocess.run(
            [cc, "-O2", "-o", str(partial), str(SOURCE)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"building bench/openloop.c failed: {exc}"
    if done.returncode != 0:
        return None, f"building bench/openloop.c failed: {done.stderr.strip()[:300]}"
    partial.replace(target)
    return str(target), f"bench/openloop.c built with {Path(cc).name}"
