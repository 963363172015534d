"""Node.js packages for tests that run clients nobody here wrote: pinned by a lock, installed once.

``tests/js/package.json`` names them (eureka-js-client 4.5.0) and
``tests/js/package-lock.json`` pins every package they pull in, with its
integrity hash. :func:`node_modules` installs that lock with ``npm ci`` from
the npm registry into ``$XDG_CACHE_HOME/essaim-tests/npm/<hash of the lock>``
(default ``~/.cache``) the first time, and answers the ``node_modules``
folder to put in ``NODE_PATH``. When Node.js or npm is missing, or the
registry can't be reached, the test is skipped with a reason that says so
(never silently).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

LOCKED = Path(__file__).resolve().parent / "js"


def node() -> str:
    """The ``node`` executable; skips the test when there is none."""
    found = shutil.which("node")
    if found is None:
        pytest.skip("Node.js is not installed (no 'node' on PATH): the Node.js client is not run")
    return found


def node_modules() -> Path:
    """The ``node_modules`` folder of ``tests/js``'s lock, installed if needed."""
    node()
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed (no 'npm' on PATH): can't install tests/js's packages")
    lock = (LOCKED / "package-lock.json").read_bytes()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    folder = cache / "essaim-tests" / "npm" / hashlib.sha256(lock).hexdigest()[:16]
    marker = folder / ".installed"
    if not marker.exists():
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copyfile(LOCKED / name, folder / name)
        try:
            done = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--prefix", str(folder)],
                capture_output=True,
                text=True,
                timeout=240,
            )
        except subprocess.TimeoutExpired:
            pytest.skip("npm could not install tests/js's packages from the npm registry in 240 s")
        if done.returncode != 0:
            why = (done.stderr.strip().splitlines() or ["no output"])[-1]
            pytest.skip(f"npm could not install tests/js's packages from the npm registry: {why}")
        marker.touch()
    return folder / "node_modules"
