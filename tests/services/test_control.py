"""``python -m services status | restart | scale`` against one system the launcher started.

Every test of this module shares one launched system (real processes, its
private Redis, ``--log-format json``), in order: each leaves it as it found it (every service with
its instances ready). Load goes through the gateway as a client's would:
some clients keep their connection, others open one per request, so that a
refused connection would show. A request fails when it gets no answer or a
status other than 200.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import re
import signal
import stat
from collections.abc import AsyncIterator
from typing import Any
from unittest.mock import ANY

import aiohttp
import pytest
import pytest_asyncio

from core.testing import wait_until
from tests.services.test_launcher import ROOT, Launcher, start_launcher, up

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def system(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Launcher]:
    base = tmp_path_factory.mktemp("control")
    # The code the system runs, as in a checkout: the repository's, file by file, so that
    # a test can deploy a new build of one service (``python -m`` finds it here first).
    code = base / "essaim" / "services"
    code.mkdir(parents=True)
    for entry in (ROOT / "services").iterdir():
        if entry.name != "__pycache__":
            (code / entry.name).symlink_to(entry)
    async with start_launcher(base, "--log-format", "json") as launcher:
        await up(launcher)
        yield launcher


async def command(launcher: Launcher, *args: str) -> tuple[int, str, str]:
    """``.venv/bin/python -m services ARGS`` where the user typed ``make up``."""
    process = await asyncio.create_subprocess_exec(
        str(launcher.home / ".venv" / "bin" / "python"), "-m", "services", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=launcher.home,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def status(launcher: Launcher) -> dict[str, dict[str, Any]]:
    code, out, err = await command(launcher, "status", "--json")
    assert (code, err) == (0, ""), err
    return {p["name"]: p for p in json.loads(out)["processes"]}


async def registered(launcher: Launcher, service: str) -> list[str]:
    url = f"http://127.0.0.1:{launcher.ports['registry']}/v1/services/{service}"
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        return sorted(i["id"] for i in (await r.json())["instances"])


async def routed(launcher: Launcher, service: str) -> list[str]:
    """The instances the gateway routes ``service``'s requests to (every worker, every route)."""
    url = f"http://127.0.0.1:{launcher.ports['admin']}/upstreams?per_worker=1"
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        workers = (await r.json())["workers"]
    tables = [t for w in workers for t in w["upstreams"] if t["name"].split("@")[0] == service]
    assert tables, f"the gateway routes nothing to {service}"
    keys = [sorted(ep["key"] for ep in table["endpoints"]) for table in tables]
    assert all(k == keys[0] for k in keys), keys  # every worker's and route's table agrees
    return keys[0]


@dataclasses.dataclass
class Load:
    answered: int = 0
    failed: list[str] = dataclasses.field(default_factory=list)
    instances: set[str] = dataclasses.field(default_factory=set)
    connections: int = 0


@contextlib.asynccontextmanager
async def load(
    launcher: Launcher,
    path: str,
    clients: int = 4,
    *,
    method: str = "GET",
    body: Any = None,
    headers: dict[str, str] | None = None,
    ok: int = 200,
) -> AsyncIterator[Load]:
    """``method path`` through the gateway (or a whole URL) from ``clients`` loops until the end.

    Half the clients keep their connection alive, half open a new one for
    each request. Each has at most one request in flight; a request fails
    unless answered ``ok``.
    """
    record = Load()
    stop = asyncio.Event()
    url = path if "://" in path else f"http://127.0.0.1:{launcher.ports['gateway']}{path}"

    async def client(fresh: bool) -> None:
        connector = aiohttp.TCPConnector(force_close=fresh)
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            while not stop.is_set():
                try:
                    async with http.request(method, url, json=body, headers=headers) as r:
                        await r.read()
                        if r.status == ok:
                            record.answered += 1
                            record.instances.add(r.headers.get("X-Instance-ID", ""))
                        else:
                            record.failed.append(f"{r.status} {(await r.text())[:200]}")
                except (aiohttp.ClientError, TimeoutError) as exc:
                    record.failed.append(f"{type(exc).__name__}: {exc}")
                record.connections += fresh
                await asyncio.sleep(0.005)  # pacing: a steady load, not a flood

    tasks = [asyncio.ensure_future(client(fresh=i % 2 == 1)) for i in range(clients)]
    try:
        await wait_until(lambda: record.answered >= 20, 30, message="the load under way")
        yield record
        answered = record.answered
        await wait_until(lambda: record.answered >= answered + 20, 30, message="load after")
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def test_status_lists_every_process_and_the_control_socket_is_the_owners_only(
    system: Launcher,
) -> None:
    sock = system.run_dir / "control.sock"
    assert stat.S_ISSOCK(sock.stat().st_mode)
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    pids = await up(system)  # the banner's
    processes = await status(system)
    assert list(processes) == list(pids)
    for name, process in processes.items():
        assert process["pid"] == pids[name]
        assert process["state"] == "ready"
        assert process["restarts"] == 0
        assert process["uptime"] > 0
    assert processes["gateway"]["port"] == system.ports["gateway"]
    assert processes["registry"]["port"] == system.ports["registry"]
    assert processes["inventory-2"]["instance"] == "inventory-2"
    assert processes["redis"]["instance"] is None
    # --log-format json reached every component: each line of their logs is one JSON object.
    for name in processes:
        if name != "redis":
            lines = (system.run_dir / "logs" / f"{name}.log").read_text().splitlines()
            assert lines, name
            assert all(json.loads(line)["level"] for line in lines), name
    # The table: a header, then a line per process in the same order.
    code, out, err = await command(system, "status")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "PID", "PORT", "INSTANCE", "STATE", "RESTARTS", "UPTIME"]
    rows = [line.split() for line in lines[1:]]
    assert [row[0] for row in rows] == list(pids)
    assert next(row for row in rows if row[0] == "inventory-2")[:6] == [
        "inventory-2", str(pids["inventory-2"]), str(processes["inventory-2"]["port"]),
        "inventory-2", "ready", "0",
    ]  # fmt: skip


async def test_bad_commands_get_one_line_and_a_non_zero_status(system: Launcher) -> None:
    cases = {
        ("restart", "nope"): (1, "no service or process named 'nope'; the services: auth,"),
        ("restart",): (2, "restart what?"),
        ("scale", "registry", "2"): (1, "registry does not scale"),
        ("scale", "gateway", "2"): (1, "gateway does not scale: it owns its port"),
        ("scale", "inventory", "0"): (1, "instances: expected 1-16, got 0"),
        ("scale", "inventory", "many"): (2, "N: expected a number of instances, got 'many'"),
        ("scale", "payments", "2"): (1, "no service named 'payments'"),
        ("status", "--run-dir", "elsewhere"): (2, "no run directory elsewhere/"),
        ("status", "--run-dir", "config"): (3, "the system of config/ is not running"),
    }
    for args, (want, message) in cases.items():
        code, out, err = await command(system, *args)
        assert (code, out, err.count("\n")) == (want, "", 1), args
        assert err.startswith(f"services {args[0]}: {message}"), (args, err)
    # The protocol answers problem objects, and a bad request changes nothing.
    reader, writer = await asyncio.open_unix_connection(str(system.run_dir / "control.sock"))
    writer.write(b'{"command": "scale", "service": "inventory", "instances": "3"}\n')
    problem = json.loads(await reader.readline())
    writer.close()
    assert problem == {
        "type": "urn:essaim:problem:control:bad-request",
        "title": "Bad Request",
        "status": 400,
        "detail": "scale: 'service' must be a name and 'instances' an integer",
    }
    reader, writer = await asyncio.open_unix_connection(str(system.run_dir / "control.sock"))
    writer.write(b"not json\n")
    assert json.loads(await reader.readline())["status"] == 400
    writer.close()
    assert await registered(system, "inventory") == ["inventory-1", "inventory-2"]


async def test_a_rolling_restart_under_load_fails_no_request_and_is_not_a_crash(
    system: Launcher,
) -> None:
    before = await status(system)
    async with load(system, "/inventory/products") as traffic:
        code, out, err = await command(system, "restart", "inventory")
    assert (code, err) == (0, ""), err
    assert traffic.failed == []
    assert traffic.answered > 100
    # Each instance was replaced by a new process, registered under a new id.
    after = await status(system)
    for name in ("inventory-1", "inventory-2"):
        assert after[name]["pid"] != before[name]["pid"]
        assert after[name]["instance"] == f"{name}.2"
        assert after[name]["state"] == "ready"
        assert after[name]["restarts"] == 0
        assert int((system.run_dir / f"{name}.pid").read_text()) == after[name]["pid"]
    assert await registered(system, "inventory") == ["inventory-1.2", "inventory-2.2"]
    assert await routed(system, "inventory") == ["inventory-1.2", "inventory-2.2"]
    assert {"inventory-1.2", "inventory-2.2"} <= traffic.instances
    # One at a time: the new one ready and routed before the old one left.
    lines = out.splitlines()
    assert lines == [
        f"inventory-1: started inventory-1.2 (pid {after['inventory-1']['pid']},"
        f" port {after['inventory-1']['port']})",
        "inventory-1: inventory-1.2 is ready, registered and routed by the gateway",
        f"inventory-1: inventory-1 (pid {before['inventory-1']['pid']}) deregistered,"
        " drained and stopped",
        f"inventory-2: started inventory-2.2 (pid {after['inventory-2']['pid']},"
        f" port {after['inventory-2']['port']})",
        "inventory-2: inventory-2.2 is ready, registered and routed by the gateway",
        f"inventory-2: inventory-2 (pid {before['inventory-2']['pid']}) deregistered,"
        " drained and stopped",
        lines[-1],
    ]
    assert re.fullmatch(r"restarted inventory \(2 processes\) in \d+\.\ds", lines[-1])
    # Not a crash: no exit reported, no delay, nothing counted.
    assert not system.printed(r"inventory-\d \(pid \d+\) (exited|stopped)")
    assert not system.printed("restarting in")


async def test_a_rolling_restart_of_billing_under_a_stream_of_bills_fails_none(
    system: Launcher,
) -> None:
    # A POST is not retried once sent: the old billing must be out of the gateway's
    # table before it stops accepting or closes a keep-alive connection.
    code, token, err = await command(system, "token", "alice")
    assert (code, err) == (0, "")
    bill = {"customer_id": 1, "lines": [{"product_id": 1, "quantity": 1}]}
    alice = {"Authorization": f"Bearer {token.strip()}"}
    async with load(
        system, "/billing/bills", clients=2, method="POST", body=bill, headers=alice, ok=202
    ) as traffic:
        code, _, err = await command(system, "restart", "billing")
    assert (code, err) == (0, ""), err
    assert traffic.failed == []
    assert {"billing", "billing.2"} <= traffic.instances
    assert await registered(system, "billing") == ["billing.2"]


async def test_restarting_the_gateway_under_load_refuses_no_connection(system: Launcher) -> None:
    before = (await status(system))["gateway"]["pid"]
    async with load(system, "/inventory/products", clients=6) as traffic:
        code, out, err = await command(system, "restart", "gateway")
    assert (code, err) == (0, ""), err
    assert traffic.failed == []
    assert traffic.connections > 50  # new connections kept being accepted throughout
    after = (await status(system))["gateway"]
    assert after["pid"] != before
    assert after["state"] == "ready"
    assert int((system.run_dir / "gateway.pid").read_text()) == after["pid"]
    assert out.splitlines()[:2] == [
        f"gateway: started pid {after['pid']} with --takeover: it takes the listening sockets"
        f" of pid {before}",
        f"gateway: pid {before} handed its sockets over, drained and stopped;"
        f" pid {after['pid']} serves",
    ]
    assert not system.printed(r"gateway \(pid \d+\) (exited|stopped)")


async def test_restarting_configsvc_the_registry_and_auth_refuses_no_connection(
    system: Launcher,
) -> None:
    # Their clients know them by address: the launcher holds their listening sockets.
    before = await status(system)
    registry = f"http://127.0.0.1:{system.ports['registry']}/v1/services"
    configsvc = f"http://127.0.0.1:{system.ports['configsvc']}/v1/config/billing/default"
    async with (
        load(system, registry, clients=2) as to_registry,
        load(system, configsvc, clients=2) as to_configsvc,
        load(system, "/auth/.well-known/jwks.json", clients=2) as to_auth,
    ):
        code, out, err = await command(system, "restart", "configsvc", "registry", "auth")
    assert (code, err) == (0, ""), err
    assert (to_registry.failed, to_configsvc.failed, to_auth.failed) == ([], [], [])
    assert to_registry.connections > 20  # new connections, through both processes and between
    assert to_configsvc.connections > 20
    after = await status(system)
    for name in ("configsvc", "registry", "auth"):
        assert after[name]["pid"] != before[name]["pid"], name
        assert after[name]["port"] == before[name]["port"], name
        assert after[name]["state"] == "ready", name
    # auth rolled on its socket: a new instance beside the old one, then the old one left.
    assert after["auth"]["instance"] == "auth.2"
    assert await registered(system, "auth") == ["auth.2"]
    assert {"auth", "auth.2"} <= to_auth.instances
    lines = out.splitlines()
    # Each rolled on its socket: the new process ready before the old one left.
    for name in ("configsvc", "registry"):
        old, new, port = before[name]["pid"], after[name]["pid"], after[name]["port"]
        assert [line for line in lines if line.startswith(f"{name}:")] == [
            f"{name}: started pid {new} beside pid {old}, on the socket of port {port}",
            f"{name}: pid {new} is ready",
            f"{name}: {name} (pid {old}) drained and stopped",
        ]
    assert lines[-1].startswith("restarted configsvc, registry, auth (3 processes)")


async def test_scale_up_then_down_changes_what_is_registered_and_routed_under_load(
    system: Launcher,
) -> None:
    async with load(system, "/inventory/products") as traffic:
        code, out, err = await command(system, "scale", "inventory", "3")
        assert (code, err) == (0, ""), err
        assert (
            out.splitlines()[-1] == "inventory: 3 instances (inventory-1, inventory-2, inventory-3)"
        )
        # Registered and in the gateway's table when the command returned.
        want = ["inventory-1.2", "inventory-2.2", "inventory-3"]
        assert await registered(system, "inventory") == want
        assert await routed(system, "inventory") == want
        await wait_until(lambda: "inventory-3" in traffic.instances, 10, message="routed to")
        processes = await status(system)
        assert processes["inventory-3"]["state"] == "ready"
        assert (
            int((system.run_dir / "inventory-3.pid").read_text()) == processes["inventory-3"]["pid"]
        )

        code, out, err = await command(system, "scale", "inventory", "1")
        assert (code, err) == (0, ""), err
        # The newest first.
        assert [line.split(":")[0] for line in out.splitlines()] == [
            "inventory-3", "inventory-2", "inventory",
        ]  # fmt: skip
        assert await registered(system, "inventory") == ["inventory-1.2"]
        assert await routed(system, "inventory") == ["inventory-1.2"]
        served_before = set(traffic.instances)
        traffic.instances.clear()
        await wait_until(lambda: traffic.answered > 0 and traffic.instances, 10)
    assert traffic.failed == []
    assert {"inventory-1.2", "inventory-2.2", "inventory-3"} <= served_before
    assert traffic.instances == {"inventory-1.2"}
    processes = await status(system)
    assert [n for n in processes if n.startswith("inventory")] == ["inventory-1"]
    assert not (system.run_dir / "inventory-3.pid").exists()


async def test_a_redeploy_runs_the_new_code_and_a_broken_build_leaves_the_old_one_serving(
    system: Launcher,
) -> None:
    # A new release of inventory, deployed in place of the old files.
    code = system.home / "services" / "inventory"
    code.unlink()
    code.mkdir()
    for entry in (ROOT / "services" / "inventory").glob("*.py"):
        if entry.name != "__main__.py":
            (code / entry.name).symlink_to(entry)
    main = code / "__main__.py"
    main.write_text('raise RuntimeError("a bug in this build")\n')
    before = (await status(system))["inventory-1"]
    async with load(system, "/inventory/products") as traffic:
        code_, _, err = await command(system, "restart", "inventory")
    assert (code_, err.count("\n")) == (1, 1), err
    assert re.fullmatch(
        r"services restart: inventory-1\.3 \(pid \d+\) exited with code 1 while starting"
        r" \(its output: run/logs/inventory-1\.log\);"
        rf" inventory-1\.2 \(pid {before['pid']}\) still serves\n",
        err,
    ), err
    assert traffic.failed == []  # the old one served throughout
    assert (await status(system))["inventory-1"] == {**before, "uptime": ANY}
    assert await registered(system, "inventory") == ["inventory-1.2"]

    # The fixed build: the new process runs it.
    original = (ROOT / "services" / "inventory" / "__main__.py").read_text()
    main.write_text(
        original.replace("if __name__", 'print("inventory build 2", flush=True)\n\nif __name__')
    )
    async with load(system, "/inventory/products") as traffic:
        code_, _, err = await command(system, "restart", "inventory")
    assert (code_, err) == (0, ""), err
    assert traffic.failed == []
    after = (await status(system))["inventory-1"]
    assert (after["instance"], after["state"]) == ("inventory-1.4", "ready")
    assert system.printed(r"^inventory-1\s+\| inventory build 2$")
    assert await registered(system, "inventory") == ["inventory-1.4"]


async def test_a_process_stopped_by_hand_is_started_again_at_once_a_killed_one_is_a_crash(
    system: Launcher,
) -> None:
    processes = await status(system)
    billing = processes["billing"]["pid"]
    os.kill(billing, signal.SIGTERM)  # as `kill $(cat run/billing.pid)` would
    await wait_until(lambda: system.printed("billing restarted"), 60, message="billing back")
    assert system.printed(
        rf"billing \(pid {billing}\) stopped \((signal SIGTERM|code 0)\) after \d+\.\ds, not a crash:"
        " starting it again"
    )
    after = await status(system)
    assert after["billing"]["restarts"] == 0
    assert after["billing"]["pid"] != billing

    customers = after["customers"]["pid"]
    os.kill(customers, signal.SIGKILL)
    await wait_until(lambda: system.printed("customers restarted"), 60, message="customers back")
    assert system.printed(
        rf"customers \(pid {customers}\) exited with signal SIGKILL after \d+\.\ds;"
        r" restarting in 0\.5s"
    )
    assert (await status(system))["customers"]["restarts"] == 1
