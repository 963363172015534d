"""The console in a real browser: Debian's chromium, driven by Playwright, against a real system.

``make test-browser`` runs these (not ``make test``). The whole demo system
is started once for the session by the launcher, on free ports
(:class:`services.running.RunningSystem`); each test gets a new
browser context (its own cookies) on one headless Chromium, launched from
``CHROMIUM`` (default ``/usr/bin/chromium``: Playwright downloads no browser
here). Without Chromium or Playwright the session stops at once, saying
which is missing and how to get it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.running import RunningSystem

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
#: Seconds a condition may take before a test fails: a loaded 2-core machine is slow.
DEADLINE = 20.0


def _chromium() -> str:
    found = shutil.which(CHROMIUM)
    if found is None:
        pytest.exit(
            f"tests/browser: no Chromium at {CHROMIUM}: install Debian's package "
            "(apt-get install chromium) or set CHROMIUM=/path/to/chromium",
            returncode=2,
        )
    return found


@pytest.fixture(scope="session")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSystem]:
    with RunningSystem(tmp_path_factory.mktemp("system") / "run") as running:
        yield running


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        pytest.exit(
            "tests/browser: Playwright is missing: make venv installs it (the dev extras)",
            returncode=2,
        )
    expect.set_options(timeout=DEADLINE * 1000)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=_chromium(), headless=True)
        yield browser
        browser.close()


@pytest.fixture
def artifacts(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """Where a failing test leaves its page's screenshot."""
    return tmp_path
