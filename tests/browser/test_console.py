"""The console as a user drives it in Chromium, against the system ``make up`` starts.

Every wait is Playwright's ``expect`` (or :func:`until`) with a deadline,
never a fixed sleep: what the page shows must arrive by itself, over its
Server-Sent Events, without a reload.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
import redis
from playwright.sync_api import Browser, BrowserContext, Page, expect

from services.running import ROOT, RunningSystem
from tests.browser.conftest import DEADLINE

T = TypeVar("T")


# ----------------------------------------------------------------------------- helpers


def until(check: Callable[[], T | None], what: str, deadline: float = DEADLINE) -> T:
    """``check()``'s first truthy value, tried every 0.1 s until ``deadline`` seconds pass."""
    end = time.monotonic() + deadline
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"not within {deadline} s: {what}")
        time.sleep(0.1)


def http(
    method: str, url: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    """One request: status, headers, JSON body (None when there is none)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            raw, status, got = resp.read(), resp.status, dict(resp.headers)
    except urllib.error.HTTPError as exc:
        with exc:
            raw, status, got = exc.read(), exc.code, dict(exc.headers)
    return status, got, json.loads(raw) if raw else None


def token(system: RunningSystem, user: str) -> str:
    status, _, doc = http("POST", f"{system.gateway}/auth/token",
                          {"username": user, "password": system.secret(f"{user}.password")})  # fmt: skip
    assert status == 200, doc
    return str(doc["access_token"])


def log_in(context: BrowserContext, system: RunningSystem, user: str) -> Page:
    page = context.new_page()
    page.goto(f"{system.gateway}/console/")
    page.get_by_label("User name").fill(user)
    page.get_by_label("Password").fill(system.secret(f"{user}.password"))
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("navigation", name="Views")).to_be_visible()
    expect(page.locator("#live")).to_have_text("live")
    return page


def confirm(page: Page, button_name: str) -> None:
    """Answer the console's confirmation dialog with its confirming button."""
    dialog = page.get_by_role("dialog")
    expect(dialog).to_be_visible()
    dialog.get_by_role("button", name=button_name).click()
    expect(dialog).to_be_hidden()


def instance_row(page: Page, instance: str) -> Any:
    return page.locator("#services-body tr", has=page.get_by_text(instance, exact=True))


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    yield context
    context.close()


@pytest.fixture
def admin(context: BrowserContext, system: RunningSystem) -> Page:
    return log_in(context, system, "admin")


# ----------------------------------------------------------------------------- scenarios


def test_the_admin_logs_in_and_sees_the_seeded_services(admin: Page) -> None:
    for name in ("auth", "billing", "console", "customers", "inventory"):
        expect(admin.locator("#services-body h2", has_text=name).first).to_be_visible()
    for instance in ("inventory-1", "inventory-2", "customers", "billing"):
        expect(instance_row(admin, instance)).to_contain_text("UP")
    expect(instance_row(admin, "inventory-1")).to_contain_text("Take out of service")
    expect(admin.locator("#user")).to_have_text("admin (admin)")


def test_the_views_are_reached_by_keyboard(admin: Page) -> None:
    admin.get_by_role("link", name="Gateway").focus()
    admin.keyboard.press("Enter")
    expect(admin.get_by_role("heading", name="Gateway", exact=True)).to_be_visible()
    expect(admin.locator("#gateway-body")).to_contain_text("req/s")
    admin.get_by_role("link", name="Config").focus()
    admin.keyboard.press("Enter")
    expect(admin.get_by_role("heading", name="Config", exact=True)).to_be_visible()
    # A dialog is cancelled with Escape and the focus goes back to its button.
    admin.get_by_role("link", name="Services").focus()
    admin.keyboard.press("Enter")
    button = instance_row(admin, "inventory-2").get_by_role("button", name="Take out of service")
    button.focus()
    admin.keyboard.press("Enter")
    expect(admin.get_by_role("dialog")).to_be_visible()
    admin.keyboard.press("Escape")
    expect(admin.get_by_role("dialog")).to_be_hidden()
    expect(instance_row(admin, "inventory-2")).to_contain_text("UP")


def test_a_new_instance_appears_and_a_killed_one_goes_without_a_reload(
    admin: Page, system: RunningSystem, tmp_path: Any
) -> None:
    operator = {"Authorization": f"Bearer {system.secret('registry.token')}"}
    status, _, _ = http("PUT", f"{system.registry}/v1/services/probe/instances/probe-1",
                        {"host": "127.0.0.1", "port": 9, "ttl": 30,
                         "metadata": {"version": "0.0.1"}}, operator)  # fmt: skip
    assert status in (200, 201)
    expect(instance_row(admin, "probe-1")).to_contain_text("version=0.0.1")

    # A real process: a second customers instance, killed with SIGKILL (no deregistration):
    # it goes when its TTL (2 s) passes without a heartbeat.
    env = {"REDIS_URL": system.redis_url, "CUSTOMERS_REGISTRY_TOKEN": system.secret("registry.token"),
           "PYTHONUNBUFFERED": "1", "PATH": "/usr/bin:/bin"}  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-m", "services.customers", "--port", "0", "--instance-id", "customers-2",
         "--ttl", "2", "--registry-url", system.registry, "--data-dir", str(tmp_path / "c2")],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        expect(instance_row(admin, "customers-2")).to_contain_text("UP")
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        expect(instance_row(admin, "customers-2")).to_have_count(0)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    http("DELETE", f"{system.registry}/v1/services/probe/instances/probe-1", headers=operator)
    expect(instance_row(admin, "probe-1")).to_have_count(0)


def _served_by(system: RunningSystem, n: int) -> set[str]:
    return {
        http("GET", f"{system.gateway}/inventory/products/1")[1].get("X-Instance-ID", "?")
        for _ in range(n)
    }


def test_an_instance_out_of_service_gets_no_traffic_until_it_is_back(
    admin: Page, system: RunningSystem
) -> None:
    row = instance_row(admin, "inventory-1")
    row.get_by_role("button", name="Take out of service").click()
    confirm(admin, "Take out of service")
    expect(row).to_contain_text("OUT_OF_SERVICE")
    # The gateway drains it: every request goes to inventory-2.
    until(lambda: _served_by(system, 6) == {"inventory-2"}, "the gateway stops routing to it")
    assert _served_by(system, 10) == {"inventory-2"}

    row.get_by_role("button", name="Put back in service").click()
    confirm(admin, "Put back in service")
    expect(row.locator(".badge", has_text="UP")).to_be_visible()
    until(lambda: "inventory-1" in _served_by(system, 6), "the gateway routes to it again")

    admin.get_by_role("link", name="Audit").click()
    audit = admin.locator("#audit-body tbody tr")
    expect(audit.filter(has_text="OUT_OF_SERVICE -> UP").first).to_contain_text("admin")
    expect(audit.filter(has_text="UP -> OUT_OF_SERVICE").first).to_contain_text("instance.status")


def _tax_rate(system: RunningSystem, bearer: str) -> float:
    status, _, bill = http("POST", f"{system.gateway}/billing/bills",
                           {"customer_id": 1, "lines": [{"product_id": 2, "quantity": 1}]},
                           {"Authorization": f"Bearer {bearer}"})  # fmt: skip
    assert status == 202, bill
    return float(bill["tax_rate"])


def test_a_config_rollback_is_shown_and_applied_by_the_service(
    admin: Page, system: RunningSystem
) -> None:
    alice = token(system, "alice")
    status, _, doc = http("PUT", f"{system.configsvc}/v1/documents/billing",
                          {"billing": {"currency": "EUR", "tax_rate": 0.25}},
                          {"Authorization": f"Bearer {system.secret('configsvc.token')}"})  # fmt: skip
    assert status == 200, doc
    changed = int(doc["version"])
    until(lambda: _tax_rate(system, alice) == 0.25, "billing applies the new rate")

    admin.get_by_role("link", name="Config").click()
    admin.get_by_role("button", name="billing", exact=True).click()
    body = admin.locator("#config-body")
    expect(body.get_by_role("heading", name="billing: versions")).to_be_visible()
    expect(body).to_contain_text(f"v{changed}")
    admin.get_by_label("From", exact=True).select_option(str(changed - 1))
    admin.get_by_label("To", exact=True).select_option(str(changed))
    admin.get_by_role("button", name="Show the diff").click()
    expect(body.locator("pre.diff .add")).to_contain_text(["tax_rate = 0.25"])

    body.get_by_role("button", name=f"Roll back to v{changed - 1}").click()
    confirm(admin, f"Roll back to v{changed - 1}")
    expect(admin.locator("#toast")).to_contain_text(f"billing is at v{changed + 1}")
    current = body.locator("tbody tr", has=admin.locator(".badge", has_text="current"))
    expect(current).to_contain_text(f"v{changed + 1}")
    until(lambda: _tax_rate(system, alice) == 0.2, "billing applies the rolled back rate")


def test_a_dead_letter_is_replayed_then_discarded(admin: Page, system: RunningSystem) -> None:
    # Not a valid envelope (no source): inventory dead-letters it at once.
    client = redis.Redis.from_url(system.redis_url, decode_responses=True)
    try:
        client.xadd("essaim:events:{bill.created}",
                    {"specversion": "1.0", "id": "browser-test-1", "type": "bill.created",
                     "time": "2026-12-06T10:00:00.000Z", "data": '{"bill_id": 4242}'})  # fmt: skip
    finally:
        client.close()
    admin.get_by_role("link", name="Events").click()
    group = admin.locator("#events-body article", has_text="inventory")
    letter = group.locator("tbody tr", has_text="missing attribute 'source'")
    expect(letter).to_have_count(1)
    first_id = letter.locator("td").first.inner_text()

    letter.get_by_role("button", name="Replay").click()
    confirm(admin, "Replay")
    expect(admin.locator("#toast")).to_contain_text("1 dead letter replayed to inventory")
    # inventory got it again and, still malformed, dead-lettered it again: a new entry.
    expect(group.locator("tbody tr td:first-child", has_text=first_id)).to_have_count(0)
    expect(letter).to_have_count(1)

    letter.get_by_role("button", name="Discard").click()
    confirm(admin, "Discard")
    expect(letter).to_have_count(0)
    admin.get_by_role("link", name="Audit").click()
    expect(admin.locator("#audit-body tbody tr").filter(has_text="dead_letters.replay").first
           ).to_contain_text("admin")  # fmt: skip


def test_a_user_without_the_admin_role_sees_but_cannot_act(
    context: BrowserContext, system: RunningSystem
) -> None:
    page = log_in(context, system, "alice")
    expect(instance_row(page, "inventory-1")).to_contain_text("UP")
    expect(page.locator("#services-body button")).to_have_count(0)
    # Asked anyway, with the session and its CSRF token: 403 problem details.
    answer = page.evaluate("""async () => {
        const s = await (await fetch('/-/session')).json();
        const r = await fetch('api/services/inventory/instances/inventory-1/status', {
            method: 'POST', headers: {'Content-Type': 'application/json', 'X-CSRF-Token': s.csrf},
            body: JSON.stringify({status: 'OUT_OF_SERVICE'})});
        return {status: r.status, type: r.headers.get('content-type'), body: await r.json()};
    }""")
    assert answer["status"] == 403, answer
    assert answer["type"].startswith("application/problem+json")
    assert instance_row(page, "inventory-1").locator(".badge").inner_text() == "UP"


def test_logging_out_ends_the_session_and_the_api_refuses(
    admin: Page, system: RunningSystem
) -> None:
    admin.get_by_role("button", name="Log out").click()
    expect(admin.get_by_role("heading", name="Log in")).to_be_visible()
    expect(admin.locator("#login-note")).to_have_text("You are logged out.")
    answer = admin.request.get(f"{system.gateway}/console/api/state")
    assert answer.status == 401
    assert answer.headers["content-type"].startswith("application/problem+json")
    admin.reload()
    expect(admin.get_by_role("heading", name="Log in")).to_be_visible()


def test_on_a_phone_in_the_dark_nothing_overflows(browser: Browser, system: RunningSystem) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, color_scheme="dark",
                                  is_mobile=True, has_touch=True)  # fmt: skip
    try:
        page = log_in(context, system, "admin")
        expect(instance_row(page, "inventory-1")).to_contain_text("UP")
        for view in ("Services", "Gateway", "Config", "Events", "Audit"):
            page.get_by_role("link", name=view).click()
            expect(page.get_by_role("heading", name=view, exact=True)).to_be_visible()
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, f"{view}: the page is {width} px wide on a 390 px screen"
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert background == "rgb(17, 20, 24)"  # the dark scheme's
    finally:
        context.close()
