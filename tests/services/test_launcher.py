"""``python -m services`` end to end: the launcher's processes play every README example.

The launcher runs as ``make up`` runs it, from a directory that looks like a
checkout (``config/``, ``examples/`` and ``.venv/`` linked to the repository's), with the
default run directory ``run/`` and its private Redis; only the documented
ports are replaced by free ones. Every ```console block of README.md is split
into ``$ command`` and its expected output (:mod:`tests.console`); the
commands run one after the other in one bash session in that directory, as a
user types them in one terminal (``TOKEN=$(...)`` is there for the commands
after it), and each output must match once times, event ids, request ids, trace ids and
revisions are masked. A read that shows an effect of an event (the stock
after a bill, an instance registered) is read again until it matches or 20 s pass; a command marked
"take turns" is compared line by line in any order (the round robin's start
is random); one marked "# Server-Sent Events" is read for one second and
compared up to the lines shown. What ``python -m services status``,
``restart`` and ``scale`` print is compared with its numbers (pids, ports,
uptimes) and spacing masked, and ``restart`` and ``scale`` are typed once
(they change the system). Every line of README.md's ```text blocks
(what the launcher prints) must be a line the launcher printed, once numbers,
passwords and spacing are masked.
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
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from redis.exceptions import AuthenticationError

from core.redis import connect
from core.testing import RedisServer, free_port, wait_until
from services.launcher import BANNER_END
from tests.console import Shell, console_blocks, fenced_blocks

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
MASKS = (
    (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"), "<time>"),
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "<uuid>"),
    (re.compile(r'"rev":\d+'), '"rev":<rev>'),
    (re.compile(r'"request_id":"[^"]*"'), '"request_id":<id>'),
    (
        re.compile(r'"traceparent":"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}"'),
        '"traceparent":<trace>',
    ),
    (re.compile(r"^(id: )\d+$"), r"\1<rev>"),
)
#: What varies between two runs of the launcher's output: numbers, passwords, spacing, the binary.
OUTPUT_MASKS = (
    (re.compile(r"password \S+$"), "password <password>"),
    (re.compile(r"\d+(\.\d+)?"), "N"),
    (re.compile(r"valkey-server|redis-server"), "<redis-server>"),
    (re.compile(r"\s+"), " "),
)


def readme_examples() -> list[tuple[str, list[str]]]:
    """``(command, expected output lines)`` of every console block of README.md, in order."""
    return console_blocks(README)


def normalise(lines: list[str]) -> list[str]:
    out = []
    for line in lines:
        for pattern, mask in MASKS:
            line = pattern.sub(mask, line)
        out.append(line.rstrip())
    return out


#: The launcher's control commands: their output's pids, ports, uptimes and spacing vary.
CONTROL = re.compile(r"-m services (status|restart|scale)\b")
CONTROL_MASKS = ((re.compile(r"\b\d+(h\d+m|m\d+s|s)\b"), "<uptime>"), *OUTPUT_MASKS)


def control_shape(lines: list[str]) -> list[str]:
    out = []
    for line in lines:
        for pattern, mask in CONTROL_MASKS:
            line = pattern.sub(mask, line)
        out.append(line.strip())
    return out


def output_shape(line: str) -> str:
    for pattern, mask in OUTPUT_MASKS:
        line = pattern.sub(mask, line)
    return line.strip()


@dataclass
class Launcher:
    process: asyncio.subprocess.Process
    home: Path
    ports: dict[str, int]
    lines: list[str] = field(default_factory=list)

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    def printed(self, pattern: str) -> bool:
        return any(re.search(pattern, line) for line in self.lines)

    def index(self, pattern: str) -> int:
        return next(i for i, line in enumerate(self.lines) if re.search(pattern, line))


def checkout(home: Path) -> Path:
    """``home`` made to look like the repository: ``.venv``, ``config`` and ``examples``."""
    home.mkdir(parents=True, exist_ok=True)
    (home / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    for name in ("config", "examples"):
        (home / name).symlink_to(ROOT / name, target_is_directory=True)
    return home


def launcher_env(**extra: str) -> dict[str, str]:
    """The environment of a user who set none of the launcher's variables (nor ``REDIS_URL``).

    ``ESSAIM_NATIVE*`` stays: which build of the hot path runs is the test run's choice.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ESSAIM_", "REDIS_URL")) or k.startswith("ESSAIM_NATIVE")
    }
    return {**env, **extra}


@contextlib.asynccontextmanager
async def start_launcher(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> AsyncIterator[Launcher]:
    """``.venv/bin/python -m services ARGS`` from a checkout, on free ports; SIGINT at the end."""
    home = checkout(tmp_path / "essaim")
    ports = {name: free_port() for name in ("gateway", "admin", "registry", "configsvc")}
    process = await asyncio.create_subprocess_exec(
        str(home / ".venv" / "bin" / "python"), "-m", "services",
        "--gateway-port", str(ports["gateway"]), "--gateway-admin-port", str(ports["admin"]),
        "--registry-port", str(ports["registry"]), "--configsvc-port", str(ports["configsvc"]),
        *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env=env or launcher_env(), cwd=home,
    )  # fmt: skip
    running = Launcher(process, home, ports)

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
    """Wait for the system to be up; the pid of each process, by name, as the banner lists them."""

    def up_or_gone() -> bool:
        # The banner's last line: the pid lines come after "the system is up",
        # and a loaded machine can show the first before the reader has the rest.
        return launcher.printed(re.escape(BANNER_END)) or launcher.process.returncode is not None

    await wait_until(up_or_gone, 90, 0.05, "the system up")
    assert launcher.process.returncode is None, "\n".join(launcher.lines)
    pids = {
        m.group(1): int(m.group(2))
        for m in (re.match(r"essaim\s+\|\s+(\S+)\s+pid (\d+)", line) for line in launcher.lines)
        if m
    }
    # The banner lists every process the launcher runs: one pid file each.
    files = {
        p.name.removesuffix(".pid"): int(p.read_text()) for p in launcher.run_dir.glob("*.pid")
    }
    assert pids == files
    return pids


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


def environment(pid: int) -> dict[str, str]:
    """A running process's environment, as /proc shows it."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(
        item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item
    )


async def play(shell: Shell, launcher: Launcher, command: str, expected: list[str]) -> None:
    """Type one README command (documented ports replaced) and compare what it prints."""
    typed = (
        command.replace("localhost:8080", f"localhost:{launcher.ports['gateway']}")
        .replace("localhost:8761", f"localhost:{launcher.ports['registry']}")
        .replace("localhost:8888", f"localhost:{launcher.ports['configsvc']}")
    )
    streaming = "# Server-Sent Events" in command
    if streaming:
        typed = "timeout 1 " + typed.split("#")[0]
    control = CONTROL.search(command)
    changes = control is not None and control.group(1) != "status"
    reads = "-X" not in command and not command.startswith("kill") and not streaming
    deadline = time.monotonic() + (20 if reads and not changes else 0)
    shape = control_shape if control else normalise
    want = shape(expected)
    while True:
        status, got, err = await shell.run(typed, timeout=120 if changes else 30)
        have = shape(got[: len(expected)] if streaming else got)
        if "take turns" in command:
            want, have = sorted(want), sorted(have)
        if have == want or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    if not streaming:
        assert status == 0, (command, err)
    assert have == want, command


async def test_the_launcher_plays_every_readme_example_restarts_a_killed_process_and_stops(
    launcher: Launcher,
) -> None:
    pids = await up(launcher)

    # The demo users' passwords, made for this run: printed, and in owner-only files.
    for user, roles in (("admin", "admin"), ("alice", "user")):
        path = launcher.run_dir / f"{user}.password"
        assert path.stat().st_mode & 0o777 == 0o600
        password = path.read_text().strip()
        assert launcher.printed(rf"{user}\s+roles {roles}\s+password {re.escape(password)}$")

    examples = readme_examples()
    assert len(examples) >= 30
    async with Shell(launcher.home) as shell:
        for command, expected in examples:
            await play(shell, launcher, command, expected)

    # The tax rate the walkthrough set over configsvc's API is on disk under run/.
    journal = sqlite3.connect(launcher.run_dir / "data" / "configsvc" / "configsvc.db")
    try:
        origins = journal.execute("SELECT origin FROM versions WHERE name = 'billing'").fetchall()
    finally:
        journal.close()
    assert ("api",) in origins

    # The walkthrough killed inventory-1: reported and started again.
    await wait_until(lambda: launcher.printed("inventory-1 restarted"), 30, message="restart")
    assert launcher.printed(
        rf"inventory-1 \(pid {pids['inventory-1']}\) exited with signal SIGKILL"
    )
    pids["inventory-1 (restarted)"] = int((launcher.run_dir / "inventory-1.pid").read_text())

    # What the README shows the launcher printing, it printed (numbers and spacing aside).
    printed = {output_shape(line) for line in launcher.lines}
    shown = [line for lang, body in fenced_blocks(README) if lang == "text"
             for line in body.splitlines() if line.strip() not in ("", "...")]  # fmt: skip
    assert len(shown) >= 10
    assert [line for line in shown if output_shape(line) not in printed] == []

    launcher.process.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(launcher.process.wait(), 30) == 0
    assert launcher.printed(r"^essaim\s+\| stopped$")
    assert [name for name, pid in pids.items() if alive(pid)] == []
    assert not (launcher.run_dir / "system.json").exists()
    # In reverse order: the services and the gateway, then the registry, configsvc, Redis.
    registry_stop = launcher.index(r"^registry\s+\|.*SIGTERM received")
    assert launcher.index(r"^billing\s+\|.*SIGTERM received") < registry_stop
    assert launcher.index(r"^gateway\s+\|.*SIGTERM received") < registry_stop
    assert registry_stop < launcher.index(r"^configsvc\s+\|.*SIGTERM received")
    assert launcher.index(r"^configsvc\s+\|.*stopped") < launcher.index(r"^redis\s+\|.*shutdown")


async def test_make_up_runs_on_a_private_redis_with_a_password_and_leaves_the_machines_alone(
    tmp_path: Path, redis_factory: Callable[..., RedisServer]
) -> None:
    # "The machine's Redis": already running, as on many developer machines.
    machine = redis_factory()
    admin = connect(machine.url)
    await admin.set("owner", "someone else")
    before = await admin.info("stats")
    settings = await admin.config_get("notify-keyspace-events")
    try:
        async with start_launcher(tmp_path, "--inventory-instances", "1") as launcher:
            pids = await up(launcher)
            password_file = launcher.run_dir / "redis.password"
            assert password_file.stat().st_mode & 0o777 == 0o600
            password = password_file.read_text().strip()
            port = int(
                re.search(
                    r"@127\.0\.0\.1:(\d+)/0",
                    (launcher.lines[launcher.index(r"^essaim\s+\|\s+redis\s+pid")]),
                ).group(1)
            )  # type: ignore[union-attr]
            private = f"redis://:{password}@127.0.0.1:{port}/0"
            assert launcher.printed(
                r"^essaim\s+\| Redis: a private .* password in run/redis\.password"
            )
            assert not launcher.printed(password)  # masked wherever it is shown
            # Every component it started uses the private server, with the password.
            for name, pid in pids.items():
                if name != "redis":
                    assert environment(pid)["REDIS_URL"] == private, name
            # Which requires the password, and keeps its data under run/ (append-only file).
            anonymous = connect(f"redis://127.0.0.1:{port}/0")
            with pytest.raises(AuthenticationError):
                await anonymous.get("anything")
            await anonymous.aclose()
            client = connect(private)
            assert await client.keys("essaim:*")
            assert await client.config_get("appendonly") == {"appendonly": "yes"}
            assert (await client.config_get("dir"))["dir"] == str(launcher.run_dir / "redis")
            await client.aclose()
            assert list((launcher.run_dir / "redis").glob("appendonlydir/*.aof"))
    finally:
        after = await admin.info("stats")
        # Untouched: nobody but this test connected, nothing written, no setting changed.
        assert after["total_connections_received"] == before["total_connections_received"]
        assert await admin.keys("*") == ["owner"]
        assert await admin.config_get("notify-keyspace-events") == settings
        await admin.aclose()


async def test_an_existing_redis_is_used_only_when_named_and_its_settings_are_left_alone(
    tmp_path: Path, redis_factory: Callable[..., RedisServer]
) -> None:
    existing = redis_factory()
    admin = connect(existing.url)
    settings = await admin.config_get("*")
    try:
        async with start_launcher(
            tmp_path, "--inventory-instances", "1", env=launcher_env(REDIS_URL=existing.url)
        ) as launcher:
            pids = await up(launcher)
            assert "redis" not in pids  # no private one
            assert launcher.printed(
                rf"^essaim\s+\| Redis: the one given with --redis-url or REDIS_URL, "
                rf"{re.escape(existing.url)}; nothing changes its settings"
            )
            assert await admin.keys("essaim:*")  # the system's data went there
        assert await admin.config_get("*") == settings
    finally:
        await admin.aclose()
    # A named Redis that doesn't answer is not replaced by a private one.
    gone = f"redis://127.0.0.1:{free_port()}/0"
    async with start_launcher(tmp_path / "gone", env=launcher_env(REDIS_URL=gone)) as launcher:
        assert await asyncio.wait_for(launcher.process.wait(), 30) == 3
    assert launcher.printed(
        r"cannot start: the Redis given with --redis-url or REDIS_URL .* doesn't answer"
    )
    assert not launcher.printed("the system is up")


async def run_launcher(cwd: Path, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services", "--gateway-port", "0", "--gateway-admin-port", "0",
        "--registry-port", "0", "--configsvc-port", "0", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=launcher_env(),
        cwd=cwd,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_from_the_wrong_directory_or_with_a_broken_config_it_stops_with_one_line(
    tmp_path: Path,
) -> None:
    code, out, err = await run_launcher(tmp_path)
    assert (code, out) == (2, "")
    assert err.count("\n") == 1
    assert err.startswith(f"services: config_dir: no directory {tmp_path / 'config'}")
    assert not (tmp_path / "run").exists()  # nothing started, nothing emptied

    broken = tmp_path / "broken"
    broken.mkdir()
    for file in (ROOT / "config").glob("*.toml"):
        (broken / file.name).write_bytes(file.read_bytes())
    (broken / "billing.toml").write_text('[billing]\ntax_rate = 0.2\ncurrency = "EUR\n')
    code, out, err = await run_launcher(tmp_path, "--config-dir", str(broken))
    assert (code, out) == (2, "")
    assert err.count("\n") == 1
    assert err.startswith(f"services: config_dir: {broken}/billing.toml:3")


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
        gateway = f"http://127.0.0.1:{launcher.ports['gateway']}"
        async with aiohttp.ClientSession() as http:

            async def bearer(user: str) -> dict[str, str]:
                code, token, err = await token_command(launcher.home, user)
                assert (code, err) == (0, "")
                return {"Authorization": f"Bearer {token.strip()}"}

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
                assert r.status == 202, await r.text()

            # The token command's failures: one line on stderr, nothing on stdout, its own status.
            wrong = tmp_path / "wrong.password"
            wrong.write_text("not-her-password\n")
            code, out, err = await token_command(
                launcher.home, "alice", "--password-file", str(wrong)
            )
            assert (code, out, err.count("\n")) == (1, "", 1)
            assert "refused 'alice'" in err
            code, out, err = await token_command(launcher.home, "bob")
            assert (code, out) == (2, "")
            assert "run/bob.password" in err
            assert "admin, alice" in err

            # Keep the token routes' rate limit (5 a second, bursts of 10) drained while asking.
            async def drain() -> None:
                while True:
                    async with http.post(f"{gateway}/auth/token/refresh", json={}) as r:
                        await r.read()

            draining = asyncio.ensure_future(drain())
            try:
                code, out, err = await token_command(launcher.home, "alice")
            finally:
                draining.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await draining
            assert (code, out) == (4, "")
            assert err.startswith("services token: rate-limited by the gateway: retry in")
    # Stopped: the system is down.
    code, out, err = await token_command(launcher.home, "alice")
    assert (code, out) == (3, "")
    assert "is not running" in err


async def token_command(cwd: Path, *args: str) -> tuple[int, str, str]:
    """``.venv/bin/python -m services token ARGS`` in ``cwd``: exit status, stdout, stderr."""
    process = await asyncio.create_subprocess_exec(
        str(cwd / ".venv" / "bin" / "python"), "-m", "services", "token", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=launcher_env(),
        cwd=cwd,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()
