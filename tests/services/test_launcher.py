"""``python -m services`` end to end: the launcher's processes play the README's walkthrough.

Each ```console block under README.md's "## Walkthrough" is split into
``$ command`` and its expected output (:mod:`tests.console`). The commands
run one after the other in one bash session, as a user types them in one
terminal (``TOKEN=$(curl ...)`` is there for the commands after it), from
the directory holding the run directory (so ``run/`` is the launcher's),
against a system started by the launcher (the documented ports replaced by
free ones); each output must match, once times, event ids, request ids and
revisions are masked. A read that shows an effect of an event (the stock
after a bill) is read again until it matches or 10 s pass; a command marked
"take turns" is compared line by line in any order (the round robin's start
is random).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sqlite3
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from core.testing import free_port, wait_until
from tests.console import Shell, console_blocks

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
MASKS = (
    (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"), "<time>"),
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "<uuid>"),
    (re.compile(r'"rev":\d+'), '"rev":<rev>'),
    (re.compile(r'"request_id":"[^"]*"'), '"request_id":<id>'),
)


def walkthrough() -> list[tuple[str, list[str]]]:
    """``(command, expected output lines)`` of the console blocks under "## Walkthrough"."""
    return console_blocks(README, "Walkthrough")


def normalise(lines: list[str]) -> list[str]:
    out = []
    for line in lines:
        for pattern, mask in MASKS:
            line = pattern.sub(mask, line)
        out.append(line.rstrip())
    return out


@dataclass
class Launcher:
    process: asyncio.subprocess.Process
    run_dir: Path
    ports: dict[str, int]
    lines: list[str] = field(default_factory=list)

    def printed(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def index(self, pattern: str) -> int:
        return next(i for i, line in enumerate(self.lines) if re.search(pattern, line))


@contextlib.asynccontextmanager
async def start_launcher(tmp_path: Path, *args: str) -> AsyncIterator[Launcher]:
    """``python -m services ARGS`` on free ports, with an embedded Redis; SIGINT at the end."""
    ports = {name: free_port() for name in ("gateway", "admin", "registry", "configsvc", "redis")}
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ESSAIM_", "REDIS_URL"))}
    env["REDIS_URL"] = f"redis://127.0.0.1:{ports['redis']}/0"  # nothing there: embedded Redis
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services",
        "--gateway-port", str(ports["gateway"]), "--gateway-admin-port", str(ports["admin"]),
        "--registry-port", str(ports["registry"]), "--configsvc-port", str(ports["configsvc"]),
        "--run-dir", str(run_dir), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env, cwd=ROOT,
    )  # fmt: skip
    running = Launcher(process, run_dir, ports)

    async def read() -> None:
        assert process.stdout is not None
        async for raw in process.stdout:
            running.lines.append(raw.decode(errors="replace").rstrip("\n"))

    reader = asyncio.ensure_future(read())
    try:
        yield running
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()
        await asyncio.wait_for(reader, 5)


@pytest.fixture
async def launcher(tmp_path: Path) -> AsyncIterator[Launcher]:
    async with start_launcher(tmp_path) as running:
        yield running


async def up(launcher: Launcher) -> dict[str, int]:
    """Wait for the system to be up; the pid of each process, by name."""

    def up_or_gone() -> bool:
        return launcher.printed("the system is up") or launcher.process.returncode is not None

    await wait_until(up_or_gone, 60, 0.05, "the system up")
    assert launcher.process.returncode is None, "\n".join(launcher.lines)
    return {
        m.group(1): int(m.group(2))
        for m in (re.match(r"essaim\s+\|\s+(\S+)\s+pid (\d+)", line) for line in launcher.lines)
        if m
    }


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in _state(pid)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return "Z"


async def test_the_launcher_runs_the_walkthrough_restarts_a_killed_process_and_stops_everything(
    launcher: Launcher,
) -> None:
    pids = await up(launcher)
    assert set(pids) == {"redis", "configsvc", "registry", "auth", "gateway", "customers",
                         "inventory-1", "inventory-2", "billing"}  # fmt: skip

    # The demo users' passwords, made for this run: printed, and in owner-only files.
    for user, roles in (("admin", "admin"), ("alice", "user")):
        path = launcher.run_dir / f"{user}.password"
        assert path.stat().st_mode & 0o777 == 0o600
        password = path.read_text().strip()
        assert launcher.printed(f"{user:<12} roles {roles:<7} password {password}")

    examples = walkthrough()
    assert len(examples) >= 15
    async with Shell(launcher.run_dir.parent) as shell:
        for command, expected in examples:
            typed = (
                command.replace("localhost:8080", f"localhost:{launcher.ports['gateway']}")
                .replace("localhost:8761", f"localhost:{launcher.ports['registry']}")
                .replace("localhost:8888", f"localhost:{launcher.ports['configsvc']}")
            )
            reads = "-X" not in command and not command.startswith("kill")
            deadline = time.monotonic() + (10 if reads else 0)
            while True:
                status, got, err = await shell.run(typed)
                want = normalise(expected)
                have = normalise(got)
                if "take turns" in command:
                    want, have = sorted(want), sorted(have)
                if have == want or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            assert status == 0, (command, err)
            assert have == want, command

    # The tax rate the walkthrough set over configsvc's API is on disk under run/.
    journal = sqlite3.connect(launcher.run_dir / "data" / "configsvc" / "configsvc.db")
    try:
        origins = journal.execute("SELECT origin FROM versions WHERE name = 'billing'").fetchall()
    finally:
        journal.close()
    assert ("api",) in origins

    # The walkthrough killed inventory-1: reported and started again.
    await wait_until(lambda: launcher.printed("inventory-1 restarted"), 30, message="restart")
    assert launcher.printed(f"inventory-1 (pid {pids['inventory-1']}) exited with signal SIGKILL")
    pids["inventory-1 (restarted)"] = int((launcher.run_dir / "inventory-1.pid").read_text())

    launcher.process.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(launcher.process.wait(), 30) == 0
    assert launcher.printed("essaim       | stopped")
    assert [name for name, pid in pids.items() if alive(pid)] == []
    # In reverse order: the services and the gateway, then the registry, configsvc, Redis.
    registry_stop = launcher.index(r"^registry\s+\|.*SIGTERM received")
    assert launcher.index(r"^billing\s+\|.*SIGTERM received") < registry_stop
    assert launcher.index(r"^gateway\s+\|.*SIGTERM received") < registry_stop
    assert registry_stop < launcher.index(r"^configsvc\s+\|.*SIGTERM received")
    assert launcher.index(r"^configsvc\s+\|.*stopped") < launcher.index(r"^redis\s+\|.*SIGTERM")


async def test_the_services_verify_tokens_too_the_demo_users_tokens_pass_and_others_do_not(
    tmp_path: Path,
) -> None:
    async with start_launcher(tmp_path, "--inventory-instances", "1") as launcher:
        await up(launcher)  # seeded: the launcher's admin token passed the services' checks
        urls = {
            m.group(1): m.group(2)
            for m in (re.match(r"essaim\s+\|\s+(\S+)\s+pid \d+\s+(\S+)", line)
                      for line in launcher.lines)
            if m
        }  # fmt: skip
        passwords = {u: (launcher.run_dir / f"{u}.password").read_text().strip()
                     for u in ("admin", "alice")}  # fmt: skip
        gateway = f"http://127.0.0.1:{launcher.ports['gateway']}"
        async with aiohttp.ClientSession() as http:

            async def bearer(user: str) -> dict[str, str]:
                body = {"username": user, "password": passwords[user]}
                async with http.post(f"{gateway}/auth/token", json=body) as r:
                    assert r.status == 200
                    return {"Authorization": f"Bearer {(await r.json())['access_token']}"}

            admin, alice = await bearer("admin"), await bearer("alice")
            product = {"name": "Webcam", "price": 59.5, "quantity": 12}
            inventory = urls["inventory-1"]  # straight to the instance, past the gateway
            async with http.post(f"{inventory}/products", json=product) as r:
                assert r.status == 401
            async with http.post(f"{inventory}/products", json=product, headers=alice) as r:
                assert r.status == 403
            async with http.post(f"{inventory}/products", json=product, headers=admin) as r:
                assert r.status == 201
            async with http.get(f"{inventory}/products/4") as r:
                assert (r.status, (await r.json())["name"]) == (200, "Webcam")
            async with http.get(f"{urls['customers']}/customers") as r:
                assert r.status == 401
            bill = {"customer_id": 1, "lines": [{"product_id": 4, "quantity": 2}]}
            async with http.post(f"{gateway}/billing/bills", json=bill, headers=alice) as r:
                # billing passes alice's token on to customers and inventory
                assert r.status == 201, await r.text()
