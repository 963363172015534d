"""Node.js packages for tests that run clients nobody here wrote: installed once, pinned, cached.

:func:`node_modules` installs a pinned package from the npm registry with
``npm`` into ``$XDG_CACHE_HOME/essaim-tests/npm/<name>@<version>`` (default
``~/.cache``) the first time, and answers the ``node_modules`` folder to
put in ``NODE_PATH``. When Node.js or npm is missing, or the registry can't
be reached, the test is skipped with a reason that says so (never silently).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

#: The Eureka client of Node.js (Netflix OSS's, community-kept), pinned.
EUREKA_JS = "eureka-js-client@4.5.0"


def node() -> str:
    """The ``node`` executable; skips the test when there is none."""
    found = shutil.which("node")
    if found is None:
        pytest.skip("Node.js is not installed (no 'node' on PATH): the Node.js client is not run")
    return found


def node_modules(spec: str) -> Path:
    """The ``node_modules`` folder holding ``spec`` (``name@version``), installed if needed."""
    node()
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip(f"npm is not installed (no 'npm' on PATH): can't install {spec}")
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    folder = cache / "essaim-tests" / "npm" / spec.replace("/", "+")
    marker = folder / ".installed"
    if not marker.exists():
        folder.mkdir(parents=True, exist_ok=True)
        try:
            done = subprocess.run(
                [npm, "install", "--no-audit", "--no-fund", "--prefix", str(folder), spec],
                capture_output=True,
                text=True,
                timeout=240,
            )
        except subprocess.TimeoutExpired:
            pytest.skip(f"npm could not install {spec} from the npm registry within 240 s")
        if done.returncode != 0:
            why = (done.stderr.strip().splitlines() or ["no output"])[-1]
            pytest.skip(f"npm could not install {spec} from the npm registry: {why}")
        marker.touch()
    return folder / "node_modules"
