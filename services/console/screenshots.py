"""``python -m services.console.screenshots`` (``make screenshots``): the console's views as PNGs.

Starts the whole system on free ports (:class:`services.running.RunningSystem`),
gives it something to show (traffic through the gateway while the gateway
view is taken, a changed config document, a dead letter, an instance taken
out of service from the console), logs in as the demo admin in headless
Chromium (Playwright, ``--chromium``; no browser is downloaded) and saves
each view in ``--out`` (``docs/images/``), which docs/console.md shows:

- ``console-login.png``: the login form;
- ``console-services.png``, ``console-gateway.png``, ``console-config.png``,
  ``console-events.png``, ``console-audit.png``: the views, on a laptop's
  screen (1280 x 800), light;
- ``console-phone-dark.png``: the services view on a phone (390 x 844), dark.

Playwright is a development dependency (``make venv`` installs it).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from services.running import ROOT, RunningSystem

__all__ = ["main"]


def _http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            raw = exc.read()
    return json.loads(raw) if raw else None


class Traffic:
    """Requests through the gateway from a thread, a few dozen a second, until stopped."""

    def __init__(self, system: RunningSystem, bearer: str) -> None:
        self.system = system
        self.bearer = bearer
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        gateway = self.system.gateway
        auth = {"Authorization": f"Bearer {self.bearer}"}
        n = 0
        while not self.stopping.is_set():
            n += 1
            _http("GET", f"{gateway}/inventory/products/{1 + n % 3}")
            _http("GET", f"{gateway}/customers/customers/{1 + n % 3}", headers=auth)
            if n % 10 == 0:
                _http("GET", f"{gateway}/customers/customers/999", headers=auth)  # a 404
            self.stopping.wait(0.05)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(10)


def _prepare(system: RunningSystem) -> str:
    """Something to show: a config change, a dead letter; alice's token, for the traffic."""
    import redis

    alice = _http("POST", f"{system.gateway}/auth/token",
                  {"username": "alice", "password": system.secret("alice.password")})  # fmt: skip
    _http("PUT", f"{system.configsvc}/v1/documents/billing",
          {"billing": {"currency": "EUR", "tax_rate": 0.25}},
          {"Authorization": f"Bearer {system.secret('configsvc.token')}"})  # fmt: skip
    client = redis.Redis.from_url(system.redis_url, decode_responses=True)
    try:
        # Not a valid envelope (no source): inventory dead-letters it at once.
        client.xadd("essaim:events:{bill.created}",
                    {"specversion": "1.0", "id": "screenshot-1", "type": "bill.created",
                     "time": "2026-12-06T10:00:00.000Z", "data": '{"bill_id": 7}'})  # fmt: skip
    finally:
        client.close()
    return str(alice["access_token"])


def shoot(system: RunningSystem, out: Path, chromium: str) -> list[Path]:
    """Log in, act a little, and save each view; the files written."""
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=30_000)
    bearer = _prepare(system)
    written: list[Path] = []
    out.mkdir(parents=True, exist_ok=True)

    def save(page: Any, name: str, *, full: bool = True) -> None:
        path = out / f"console-{name}.png"
        expect(page.locator("#toast.show")).to_have_count(0)  # no passing message in the picture
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(path), full_page=full, animations="disabled")
        written.append(path)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        laptop = browser.new_context(viewport={"width": 1280, "height": 800}, color_scheme="light")
        page = laptop.new_page()
        page.goto(f"{system.gateway}/console/")
        expect(page.get_by_role("heading", name="Log in")).to_be_visible()
        page.get_by_label("User name").fill("admin")
        save(page, "login", full=False)
        page.get_by_label("Password").fill(system.secret("admin.password"))
        page.get_by_role("button", name="Log in").click()
        expect(page.locator("#live")).to_have_text("live")

        row = page.locator("#services-body tr", has=page.get_by_text("inventory-2", exact=True))
        row.get_by_role("button", name="Take out of service").click()
        page.get_by_role("dialog").get_by_role("button", name="Take out of service").click()
        expect(row).to_contain_text("OUT_OF_SERVICE")
        page.mouse.move(0, 0)
        save(page, "services")

        with Traffic(system, bearer):
            page.get_by_role("link", name="Gateway").click()
            customers = page.locator("#gateway-body tr", has_text="customers").first
            expect(customers).to_contain_text("%")
            expect(customers).not_to_contain_text("— %")
            # The rates' window full of traffic (10 s), for the picture.
            expect(page.locator("#gateway-body .summary")).to_contain_text("last 10 s")
            save(page, "gateway")

        page.get_by_role("link", name="Config").click()
        page.get_by_role("button", name="billing", exact=True).click()
        page.get_by_role("button", name="Show the diff").click()
        expect(page.locator("pre.diff")).to_be_visible()
        save(page, "config")

        page.get_by_role("link", name="Events").click()
        expect(page.locator("#events-body")).to_contain_text("missing attribute 'source'")
        save(page, "events")

        page.get_by_role("link", name="Audit").click()
        expect(page.locator("#audit-body tbody tr")).not_to_have_count(0)
        save(page, "audit")
        laptop.close()

        phone = browser.new_context(viewport={"width": 390, "height": 844}, color_scheme="dark",
                                    is_mobile=True, has_touch=True)  # fmt: skip
        page = phone.new_page()
        page.goto(f"{system.gateway}/console/")
        page.get_by_label("User name").fill("admin")
        page.get_by_label("Password").fill(system.secret("admin.password"))
        page.get_by_role("button", name="Log in").click()
        expect(page.locator("#live")).to_have_text("live")
        expect(page.locator("#services-body")).to_contain_text("inventory-2")
        save(page, "phone-dark", full=False)
        phone.close()
        browser.close()
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.console.screenshots",
        description="Start the system, log in to the console and save its views as PNGs.",
    )
    parser.add_argument("--out", default=str(ROOT / "docs" / "images"),
                        help="where to write the PNGs [docs/images]")  # fmt: skip
    parser.add_argument("--chromium", default="/usr/bin/chromium",
                        help="the Chromium to drive [/usr/bin/chromium]")  # fmt: skip
    args = parser.parse_args(argv)
    if not Path(args.chromium).exists():
        print(f"screenshots: no Chromium at {args.chromium}: install Debian's package "
              "(apt-get install chromium) or give --chromium", file=sys.stderr)  # fmt: skip
        return 2
    try:
        import playwright  # noqa: F401
    except ImportError:
        print("screenshots: Playwright is missing: make venv installs it", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp, RunningSystem(Path(tmp) / "run") as system:
        for path in shoot(system, Path(args.out), args.chromium):
            print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
