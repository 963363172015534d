"""``python -m bench resilience [--quick] [--output PATH]``: faults under steady load, and how long until full service.

The launcher (``python -m services``) starts the demo system on a private run
directory, as ``bench system`` does (its private Redis with its append-only
file, configsvc, the registry, auth, the gateway, customers, two inventory
instances, billing). Each case then puts steady load through the gateway's
traffic port (open loop, :mod:`bench._traffic`): idempotent ``GET``\\ s cycling
over inventory (public), customers, a bill of billing's and auth's public
keys (with a user's token where the route needs one) and, where the case
says, ``POST /billing/bills``. It breaks something and records:

- **sent** and **failed** requests, by kind (``refused``, ``reset``,
  ``5xx``, ``timeout``, ``other``: :mod:`bench._traffic`);
- **fault**: how long the fault itself lasted: from the kill to the new
  process answering ``/health`` (what the launcher waits for before saying
  "restarted"), or to Redis answering ``PING``;
- **outage**: from the first failed request to the moment after which every
  request succeeded (0 when none failed);
- **full service**: from the fault to the first moment after which requests
  succeed again *and* every instance is routed: the restarted instance
  answers requests again (its ``X-Instance-ID``), or, after Redis restarted
  empty, every instance is registered again and every gateway worker routes
  on them (its registry connected, all 5 instances, none kept only by the
  grace period).

The cases, in order:

1. kill -9 of ``inventory-1`` (of two), under ``GET``\\ s;
2. kill -9 of ``billing``, its only instance, under ``GET``\\ s;
3. kill -9 of ``inventory-2`` under ``GET``\\ s and a stream of bills; then
   every accepted bill must end ``confirmed`` or ``rejected`` (none lost);
4. Redis killed (kill -9) for 10 s and restarted empty: the launcher is
   paused (SIGSTOP) meanwhile, so that it does not start Redis again at once,
   and Redis's append-only file is deleted; it is the only process paused,
   and nothing on a request's path goes through it;
5. a rolling restart of every process but Redis (configsvc, the registry,
   auth, the gateway, customers, each inventory instance, billing), with
   ``python -m services restart NAME`` one after another, under ``GET``\\ s
   and bills (``--quick``: inventory and the gateway);
6. a tax rate changed through configsvc's API (``PUT /v1/documents/billing``),
   applied by billing, then Redis killed and restarted empty (at once, by the
   launcher): the rate in force (configsvc's merged config and a new bill's
   ``tax_rate``) must be the one set.

Targets (``met``/``MISSED``; ``--quick`` judges none): 0 failed idempotent
requests wherever another instance exists (cases 1, 3, and, for Redis, 4
and 6: every component serves on its last-known state), 0 failed requests
to the services not killed (case 2), 0 failed requests during a requested
restart (case 5), 0 lost bills, no outage longer than the fault plus 1 s
(full service within the fault + 1 s), no config change lost (case 6).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from bench._run import Run
from bench._traffic import KINDS, Outcome, Target, Traffic, first_served, outage, tally
from bench.system import ROOT, System, login
from core.runner import install_uvloop
from core.security.resp import RespClient, RespError

RESULTS = ROOT / "bench" / "results" / "resilience.json"
#: How long a run takes with the defaults (python -m bench --help).
DURATION = "about 1.5 min"
#: The services whose instances register (the gateway routes to them).
#: Every service the launcher registers (the gateway's view is complete when it routes them all).
SERVICES = ("auth", "customers", "inventory", "billing", "console")
#: What ``python -m services restart`` restarts, in this order, in case 5: every
#: process but Redis, in the launcher's order (``inventory``: each instance in turn).
RESTARTS = (
    "configsvc", "registry", "auth", "gateway", "customers", "inventory", "billing", "console",
)  # fmt: skip
#: The same with ``--quick``: a service of two instances and the gateway.
QUICK_RESTARTS = ("inventory", "gateway")
#: Full service may come this long after the fault ended (the issue's "about 1 s").
SLACK = 1.0


class Launched(System):
    """:class:`bench.system.System` with what the fault cases need: pids, URLs, pausing."""

    def urls(self) -> dict[str, str]:
        return dict(json.loads((self.run_dir / "system.json").read_text())["urls"])

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.ports['admin']}"

    @contextlib.contextmanager
    def launcher_paused(self) -> Any:
        """The launcher stopped (SIGSTOP) for the block, continued (SIGCONT) whatever happens."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self.process.pid, signal.SIGCONT)

    def wipe_redis(self) -> None:
        """Delete the private Redis's data (its append-only file): it starts again empty."""
        for entry in (self.run_dir / "redis").iterdir():
            if entry.is_dir():
                shutil.rmtree(entry)
            elif entry.name != "redis.conf":
                entry.unlink()


class Bench:
    """One run: the system, the settings, the http session of the probes."""

    def __init__(self, system: Launched, args: argparse.Namespace, run: Run) -> None:
        self.system = system
        self.args = args
        self.run = run
        self.http: aiohttp.ClientSession
        self.product = 0
        self.bill = 0

    # -- probes ------------------------------------------------------------------------

    async def _status(self, url: str, headers: dict[str, str] | None = None) -> int:
        try:
            async with self.http.get(
                url, headers=headers, timeout=aiohttp.ClientTimeout(total=0.5)
            ) as response:
                await response.read()
                return response.status
        except (aiohttp.ClientError, TimeoutError):
            return 0

    async def wait_restarted(self, name: str, old_pid: int, timeout: float = 30.0) -> float:
        """When ``name``'s new process (another pid) first answered its ``/health`` with 200."""
        health = self.system.urls()[name] + "/health"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                if self.system.pid(name) != old_pid and await self._status(health) == 200:
                    return time.monotonic()
            await asyncio.sleep(0.02)
        raise RuntimeError(f"{name} did not come back within {timeout:.0f}s")

    async def wait_redis(self, timeout: float = 30.0) -> float:
        """When Redis first answered ``PING`` (after ``AUTH``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            client = RespClient(self.system.redis_url, connect_timeout=0.2)
            try:
                async with asyncio.timeout(0.5):
                    if await client.call("PING") == "PONG":
                        return time.monotonic()
            except (OSError, TimeoutError, RespError):
                pass
            finally:
                await client.close()
            await asyncio.sleep(0.02)
        raise RuntimeError(f"Redis did not come back within {timeout:.0f}s")

    async def listing(self) -> dict[str, dict[str, str]]:
        """``service -> {instance id: pid}`` as the registry lists them ({} while it can't)."""
        found: dict[str, dict[str, str]] = {}
        for service in SERVICES:
            try:
                async with self.http.get(
                    f"{self.system.registry}/v1/services/{service}",
                    timeout=aiohttp.ClientTimeout(total=0.5),
                ) as response:
                    if response.status != 200:
                        return {}
                    instances = (await response.json())["instances"]
            except (aiohttp.ClientError, TimeoutError, ValueError):
                return {}
            found[service] = {i["id"]: i["metadata"].get("pid", "") for i in instances}
        return found

    async def instance_id(self, service: str, pid: int, timeout: float = 30.0) -> str:
        """The id under which the process ``pid`` is registered as an instance of ``service``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for iid, registered in (await self.listing()).get(service, {}).items():
                if registered == str(pid):
                    return iid
            await asyncio.sleep(0.02)
        raise RuntimeError(f"no instance of {service} registered with pid {pid}")

    async def registered(self, expected: dict[str, set[str]]) -> bool:
        """Every instance of ``expected`` is listed in the registry."""
        listed = await self.listing()
        return bool(listed) and all(ids <= set(listed[s]) for s, ids in expected.items())

    async def gateway_routes_all(self, count: int) -> bool:
        """Every gateway worker's registry is connected and holds ``count`` instances, none by grace."""
        try:
            async with self.http.get(
                f"{self.system.admin}/health", timeout=aiohttp.ClientTimeout(total=0.5)
            ) as response:
                health = await response.json()
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return False
        views = [w["registry"] for w in health.get("workers", [])] or [health["registry"]]
        return all(
            v["connected"] and v["instances"] == count and v["preserved"] == 0 for v in views
        )

    async def wait_complete(
        self, expected: dict[str, set[str]], since: float, timeout: float
    ) -> dict[str, float]:
        """When, after ``since``, every instance of ``expected`` was registered (``registered``),
        then also routed by every gateway worker without grace (``routed``); a missing key: not
        within ``timeout``."""
        count = sum(len(ids) for ids in expected.values())
        found: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = time.monotonic()
            if now >= since and "registered" not in found and await self.registered(expected):
                found["registered"] = now
            if "registered" in found and await self.gateway_routes_all(count):
                found["routed"] = now
                return found
            await asyncio.sleep(0.05)
        return found

    # -- load --------------------------------------------------------------------------

    async def headers(self) -> dict[str, str]:
        """A fresh user token (valid 5 minutes, longer than any case)."""
        return await login(self.system)

    def targets(self) -> list[Target]:
        return [
            Target("inventory", f"/inventory/products/{self.product}"),
            Target("customers", "/customers/customers/1", auth=True),
            Target("inventory", "/inventory/products"),
            Target("billing", f"/billing/bills/{self.bill}", auth=True),
            Target("auth", "/auth/.well-known/jwks.json"),
        ]

    def traffic(self, headers: dict[str, str], *, bills: bool = False) -> Traffic:
        return Traffic(
            self.system.gateway, headers, self.targets(), get_rate=self.args.rate,
            bill_rate=self.args.bill_rate if bills else 0.0, product=self.product,
            timeout=self.args.timeout,
        )  # fmt: skip

    async def settle(
        self, traffic: Traffic, fault: float, done: Callable[[], float | None]
    ) -> None:
        """Keep the load on until ``done()`` (a time) is ``settle`` seconds old, or ``observe`` ran out."""
        deadline = fault + self.args.observe
        while time.monotonic() < deadline:
            at = done()
            window = outage(traffic.outcomes, fault)
            ok_at = fault if window is None else window[1]
            if at is not None and time.monotonic() > max(at, ok_at) + self.args.settle:
                return
            await asyncio.sleep(0.1)

    # -- the setting up ----------------------------------------------------------------

    async def prepare(self) -> None:
        """A customer, a product with stock for every bill, and one bill to read."""
        admin = await login(self.system)
        async with self.http.post(
            f"{self.system.gateway}/customers/customers",
            json={"name": "Bench", "email": "bench@example.com"}, headers=admin,
        ) as response:  # fmt: skip
            assert response.status == 201, await response.text()
        async with self.http.post(
            f"{self.system.gateway}/inventory/products",
            json={"name": "for bills", "price": 9.99, "quantity": 10**9}, headers=admin,
        ) as response:  # fmt: skip
            assert response.status == 201, await response.text()
            self.product = int((await response.json())["id"])
        bill = await self.make_bill(admin)
        self.bill = int(bill["id"])

    async def make_bill(self, headers: dict[str, str]) -> dict[str, Any]:
        async with self.http.post(
            f"{self.system.gateway}/billing/bills", headers=headers,
            json={"customer_id": 1, "lines": [{"product_id": self.product, "quantity": 1}]},
        ) as response:  # fmt: skip
            assert response.status == 202, await response.text()
            return dict(await response.json())

    # -- the cases ---------------------------------------------------------------------

    async def kill(self, title: str, name: str, *, bills: bool = False) -> dict[str, Any]:
        """kill -9 of the process ``name`` (an instance of the service ``name`` names)."""
        self.run.step(title)
        service = name.split("-")[0]
        headers = await self.headers()
        since = time.time()
        async with self.traffic(headers, bills=bills) as traffic:
            await asyncio.sleep(self.args.warm)
            old = self.system.pid(name)
            fault = time.monotonic()
            os.kill(old, signal.SIGKILL)
            back = await self.wait_restarted(name, old)
            instance = await self.instance_id(service, self.system.pid(name))
            await self.settle(
                traffic, fault, lambda: first_served(traffic.outcomes, instance, fault)
            )
        served = first_served(traffic.outcomes, instance, fault)
        figures = self.figures(title, traffic.outcomes, fault, back, served)
        figures["killed"] = name
        if bills:
            figures["bills"] = await self.bill_ends(traffic.outcomes, since)
        return figures

    async def redis_down(self, title: str, down: float) -> dict[str, Any]:
        self.run.step(title)
        headers = await self.headers()
        async with self.traffic(headers) as traffic:
            await asyncio.sleep(self.args.warm)
            figures = await self.redis_fault(title, traffic, down)
        figures["down_s"] = down
        return figures

    async def redis_fault(self, title: str, traffic: Traffic, down: float) -> dict[str, Any]:
        """Redis restarted empty under ``traffic``, followed until full service; the figures."""
        expected = {service: set(ids) for service, ids in (await self.listing()).items()}
        assert expected, "the registry does not answer"
        fault, back = await self.restart_redis_empty(down)
        found: dict[str, float] = {}

        async def watch() -> None:
            found.update(await self.wait_complete(expected, back, self.args.observe))

        watcher = asyncio.ensure_future(watch())
        await self.settle(traffic, fault, lambda: found.get("routed"))
        await watcher
        figures = self.figures(title, traffic.outcomes, fault, back, found.get("routed"))
        for name, at in found.items():
            figures[f"{name}_after_back_s"] = round(at - back, 3)
        return figures

    async def restart_redis_empty(self, down: float) -> tuple[float, float]:
        """Kill Redis, delete its data, keep it down ``down`` s (0: the launcher's own restart)."""
        pid = self.system.pid("redis")
        with self.system.launcher_paused():
            fault = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            await asyncio.sleep(0.05)  # its files are closed once it is gone
            self.system.wipe_redis()
            await asyncio.sleep(max(0.0, fault + down - time.monotonic()))
        return fault, await self.wait_redis()

    async def rolling_restart(self, title: str, names: Sequence[str]) -> dict[str, Any]:
        self.run.step(title)
        headers = await self.headers()
        since = time.time()
        commands = []
        async with self.traffic(headers, bills=True) as traffic:
            await asyncio.sleep(self.args.warm)
            began = time.monotonic()
            for name in names:
                started = time.monotonic()
                done = await asyncio.to_thread(
                    subprocess.run,
                    [sys.executable, "-m", "services", "restart", name,
                     "--run-dir", str(self.system.run_dir)],
                    capture_output=True, text=True, timeout=120, cwd=ROOT, check=False,
                )  # fmt: skip
                commands.append({
                    "name": name, "exit": done.returncode,
                    "seconds": round(time.monotonic() - started, 2),
                    "output": (done.stdout + done.stderr).strip()[-2000:],
                })  # fmt: skip
                if done.returncode != 0:
                    last = commands[-1]["output"].splitlines()[-1:]
                    self.run.say(f"restart {name} exited with {done.returncode}: {''.join(last)}")
            ended = time.monotonic()
            await asyncio.sleep(self.args.settle)
        figures = self.figures(title, traffic.outcomes, began, ended, ended)
        figures["restarts"] = commands
        figures["bills"] = await self.bill_ends(traffic.outcomes, since)
        return figures

    async def config_survives(self, title: str) -> dict[str, Any]:
        self.run.step(title)
        headers = await self.headers()
        token = (self.system.run_dir / "configsvc.token").read_text().strip()
        document = f"{self.system.configsvc}/v1/documents/billing"
        async with self.http.get(document) as response:
            doc = await response.json()
        before = doc["billing"]["tax_rate"]
        wanted = round(before + 0.05, 2)
        doc["billing"]["tax_rate"] = wanted
        async with self.http.put(
            document, json=doc, headers={"Authorization": f"Bearer {token}"}
        ) as response:
            assert response.status == 200, await response.text()
            written = await response.json()
        applied_in = await self.billing_applies()
        async with self.traffic(headers) as traffic:
            await asyncio.sleep(self.args.warm)
            figures = await self.redis_fault(title, traffic, 0.0)
        served = await self.merged_tax_rate()
        bill = await self.make_bill(headers)
        figures["config"] = {
            "before": before, "set": wanted, "version_set": written["version"],
            "billing_applied_s": applied_in,
            "after_configsvc": served, "after_bill": bill["tax_rate"],
            "survived": served == wanted and bill["tax_rate"] == wanted,
        }  # fmt: skip
        return figures

    async def merged_tax_rate(self) -> Any:
        async with self.http.get(f"{self.system.configsvc}/v1/config/billing/default") as response:
            return (await response.json())["config"]["billing"]["tax_rate"]

    async def billing_applies(self, timeout: float = 10.0) -> float:
        """Seconds until billing's config is configsvc's merged version."""
        began = time.monotonic()
        url = f"{self.system.configsvc}/v1/config/billing/default"
        while time.monotonic() < began + timeout:
            async with self.http.get(url) as response:
                version = (await response.json())["version"]
            async with self.http.get(self.system.urls()["billing"] + "/health") as response:
                if (await response.json())["config"]["version"] == version:
                    return round(time.monotonic() - began, 3)
            await asyncio.sleep(0.02)
        raise RuntimeError(f"billing did not apply the new config within {timeout:.0f}s")

    # -- figures -----------------------------------------------------------------------

    def figures(
        self,
        title: str,
        outcomes: Sequence[Outcome],
        fault: float,
        back: float,
        complete: float | None,
    ) -> dict[str, Any]:
        """A case's figures: requests by service, the fault, the outage, the full service."""
        window = outage(outcomes, fault)
        ok_at = fault if window is None else window[1]
        full = None if complete is None else max(ok_at, complete) - fault
        by_service = {}
        for what in sorted({o.what for o in outcomes}):
            by_service[what] = tally([o for o in outcomes if o.what == what])
        return {
            "case": title,
            **tally(outcomes),
            "by_service": by_service,
            "fault_s": round(back - fault, 3),
            "outage_s": 0.0 if window is None else round(window[1] - window[0], 3),
            "full_service_s": None if full is None or full == float("inf") else round(full, 3),
        }

    async def bill_ends(self, outcomes: Sequence[Outcome], since: float) -> dict[str, Any]:
        """How the bills of a case ended: every accepted one confirmed or rejected, none lost.

        ``made`` counts the bills billing stored since ``since``; those whose
        ``POST`` got no 202 (an error, a timeout) were made without the client
        knowing (``unacknowledged``).
        """
        accepted = {str(o.bill) for o in outcomes if o.bill is not None}
        deadline = time.monotonic() + self.args.bill_wait
        while True:
            states = await asyncio.to_thread(saga_states, self.system.billing_db, since)
            pending = [i for i in accepted if states.get(i, "pending") == "pending"]
            if not pending or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        ended = [states.get(i) for i in accepted]
        return {
            "accepted": len(accepted),
            "confirmed": ended.count("confirmed"),
            "rejected": ended.count("rejected"),
            "lost": len(accepted) - ended.count("confirmed") - ended.count("rejected"),
            "made": len(states),
            "unacknowledged": len(set(states) - accepted),
        }


def saga_states(db: Path, since: float) -> dict[str, str]:
    """``bill id -> saga state`` of the bills whose saga started since ``since`` (wall clock)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT id, state FROM essaim_sagas WHERE saga = 'bill' AND created_at >= ?", (since,)
        ).fetchall()
    finally:
        conn.close()
    return {str(i): str(s) for i, s in rows}


async def bench(system: Launched, args: argparse.Namespace, run: Run) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as http:
        b = Bench(system, args, run)
        b.http = http
        await b.prepare()
        cases = [
            await b.kill("1. kill -9 inventory-1 (of 2), GETs", "inventory-1"),
            await b.kill("2. kill -9 billing (its only instance), GETs", "billing"),
            await b.kill("3. kill -9 inventory-2 under bills", "inventory-2", bills=True),
            await b.redis_down(f"4. Redis killed {args.redis_down:g} s, restarted empty",
                               args.redis_down),
            await b.rolling_restart(
                "5. rolling restart of every service" if args.restarts == RESTARTS
                else f"5. rolling restart of {', '.join(args.restarts)}", args.restarts),
            await b.config_survives("6. tax rate set over the API, then Redis restarted empty"),
        ]  # fmt: skip
    for number, case in enumerate(cases, 1):
        case["number"] = number
        case["targets"] = targets(case, run)
    return cases


def targets(case: dict[str, Any], run: Run) -> list[dict[str, Any]]:
    """The case's targets, each with its figure and verdict."""
    found = []

    def target(what: str, figure: Any, ok: bool) -> None:
        found.append({"target": what, "figure": figure, "ok": ok, "verdict": run.verdict(ok)})

    number = case["number"]
    if number == 2:
        others = sum(t["failed"] for s, t in case["by_service"].items() if s != "billing")
        target("0 failed requests to the services not killed", others, others == 0)
    else:
        label = (
            "during a requested restart"
            if number == 5
            else "(another instance or last-known state serves)"
        )
        target(f"0 failed requests {label}", case["failed"], case["failed"] == 0)
    if number != 5:
        full, fault = case["full_service_s"], case["fault_s"]
        target(
            f"full service within the fault + {SLACK:g} s ({fault:.2f} + {SLACK:g} s)",
            full, full is not None and full <= fault + SLACK,
        )  # fmt: skip
    if "restarts" in case:
        failed = [r["name"] for r in case["restarts"] if r["exit"] != 0]
        target("every restart command succeeded", ", ".join(failed) or "all", not failed)
    if "bills" in case:
        target("0 bills lost", case["bills"]["lost"], case["bills"]["lost"] == 0)
    if "config" in case:
        config = case["config"]
        target("the config change survives", config["after_bill"], config["survived"])
    return found


def table(report: dict[str, Any]) -> str:
    kinds = "/".join(KINDS)
    lines = [
        f"faults under load through the gateway ({report['rate']:g} GET/s,"
        f" {report['bill_rate']:g} bills/s where bills are sent); failed by kind: {kinds}",
        f"{'case':<58}{'sent':>6}{'failed':>8} {'by kind':<14}{'fault s':>8}{'outage s':>9}"
        f"{'full service s':>15}",
    ]
    for case in report["cases"]:
        full = case["full_service_s"]
        lines.append(
            f"{case['case']:<58}{case['sent']:>6}{case['failed']:>8}"
            f" {'/'.join(str(case['by_kind'][k]) for k in KINDS):<14}{case['fault_s']:>8.2f}"
            f"{case['outage_s']:>9.2f}{'-' if full is None else f'{full:.2f}':>15}"
        )
    for case in report["cases"]:
        extra = []
        if "bills" in case:
            b = case["bills"]
            extra.append(
                f"bills: {b['accepted']} accepted, {b['confirmed']} confirmed, {b['rejected']}"
                f" rejected, {b['lost']} lost; {b['unacknowledged']} made without a 202"
            )
        if "config" in case:
            c = case["config"]
            extra.append(
                f"tax rate: {c['before']} in the file, {c['set']} set over the API (version"
                f" {c['version_set']}), after the empty Redis restart {c['after_configsvc']} in"
                f" configsvc and {c['after_bill']} on a new bill"
            )
        if "restarts" in case:
            extra.append("restarts: " + ", ".join(
                f"{r['name']} {r['seconds']:.1f} s" + ("" if r["exit"] == 0 else f" (exit {r['exit']})")
                for r in case["restarts"]
            ))  # fmt: skip
        if "registered_after_back_s" in case:
            routed = case.get("routed_after_back_s")
            extra.append(
                f"after Redis was back: every instance registered in"
                f" {case['registered_after_back_s']:.2f} s, routed without grace by every gateway"
                f" worker in {'-' if routed is None else f'{routed:.2f}'} s"
            )
        failed = {s: t["failed"] for s, t in case["by_service"].items() if t["failed"]}
        if failed:
            extra.append("failed by service: " + ", ".join(f"{s} {n}" for s, n in failed.items()))
        lines.append(f"case {case['number']}: " + ("; ".join(extra) or "-"))
        for t in case["targets"]:
            lines.append(f"  {t['target']}: {t['figure']}: {t['verdict']}")
    lines.append(Run.load_line(report["load"]))
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench resilience",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run of well under a minute; judges nothing"
    )
    parser.add_argument("--rate", type=float, help="GETs a second [quick 40, 100]")
    parser.add_argument("--bill-rate", type=float, help="bills a second where sent [quick 10, 20]")
    parser.add_argument("--redis-down", type=float, help="seconds Redis stays down [quick 2, 10]")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the JSON")
    args = parser.parse_args(argv)
    quick = args.quick
    args.rate = args.rate or (40.0 if quick else 100.0)
    args.bill_rate = args.bill_rate or (10.0 if quick else 20.0)
    args.redis_down = args.redis_down if args.redis_down is not None else (2.0 if quick else 10.0)
    args.warm = 0.5 if quick else 2.0  # load before each fault
    args.settle = 0.5 if quick else 3.0  # load after full service
    args.observe = 30.0  # at most, after each fault
    args.timeout = 5.0  # each request's
    args.bill_wait = 40.0  # for bills to end (billing's reservation timeout is 30 s)
    args.restarts = QUICK_RESTARTS if quick else RESTARTS
    workdir = Path(tempfile.mkdtemp(prefix="essaim-bench-resilience-"))
    system = Launched(workdir)
    install_uvloop()
    run = Run("resilience", quick=quick, steps=7)
    try:
        run.step("start the system with its launcher")
        system.start()
        cases = asyncio.run(bench(system, args, run))
    finally:
        system.stop()
    report = {
        "benchmark": "resilience",
        "load": run.machine(),
        "quick": quick,
        "rate": args.rate,
        "bill_rate": args.bill_rate,
        "cases": cases,
    }
    print(table(report))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {args.output}")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0
