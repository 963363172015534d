"""``python -m core.config.watch``: follow an app's config and print each version applied.

A small tool around :class:`core.config.client.ConfigClient`, for people
(what does billing see now?) and for tests and benchmarks, which run many
clients in separate processes. It prints one JSON object a line on stdout::

    {"event": "start", "client": 0, "version": "...", "source": "server", "time": ...}
    {"event": "ready", "clients": 1}
    {"event": "applied", "client": 0, "version": "...", "changed": ["http.timeout"], "time": ...}

``time`` is the wall-clock time (seconds) when the client had applied the
version. It runs until SIGTERM or SIGINT and exits 0; a client that can't
start (``--fail-fast``) exits 3.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from core import log
from core.config.client import ConfigClient
from core.config.merge import thaw
from core.errors import SettingsError, StartupError
from core.redis import connect
from core.runner import STARTUP_FAILURE, install_uvloop
from core.settings import LogLevel, Secret, load, option


@dataclasses.dataclass(frozen=True)
class Settings:
    """The watcher's settings (prefix ``CONFIG_WATCH_``)."""

    url: str = dataclasses.field(
        default="http://127.0.0.1:8888", metadata=option("config service base URL")
    )
    app: str = dataclasses.field(default="application", metadata=option("app name"))
    profile: str = dataclasses.field(default="default", metadata=option("profile"))
    redis_url: str = dataclasses.field(
        default="",
        metadata=option("Redis URL for change events ('' to poll)", env="REDIS_URL"),
    )
    clients: int = dataclasses.field(default=1, metadata=option("clients to run in this process"))
    print_config: bool = dataclasses.field(
        default=False, metadata=option("print the whole config with each version")
    )
    cache_dir: str = dataclasses.field(
        default="", metadata=option("directory for the last-known copy ('' for none)")
    )
    fail_fast: bool = dataclasses.field(
        default=False, metadata=option("exit 3 when the config service can't be reached")
    )
    retries: int = dataclasses.field(
        default=5, metadata=option("times the first fetch is retried before falling back")
    )
    resync_interval: float = dataclasses.field(
        default=30.0, metadata=option("seconds between full re-fetches (or polls without Redis)")
    )
    log_level: LogLevel = dataclasses.field(default="warning", metadata=option("log level"))
    token: Secret = dataclasses.field(
        default=Secret(""),
        metadata=option("the config service's token: needed for a config with encrypted values"),
    )

    def validate(self) -> None:
        if not 1 <= self.clients <= 1000:
            raise SettingsError(f"--clients: expected 1-1000, got {self.clients}")
        if self.retries < 0:
            raise SettingsError(f"--retries: expected >= 0, got {self.retries}")
        if self.resync_interval <= 0:
            raise SettingsError(f"--resync-interval: expected > 0, got {self.resync_interval}")


def _emit(doc: Mapping[str, Any]) -> None:
    sys.stdout.buffer.write(orjson.dumps(doc) + b"\n")
    sys.stdout.flush()


async def watch(settings: Settings) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    redis = connect(settings.redis_url) if settings.redis_url else None
    clients: list[ConfigClient] = []
    async with aiohttp.ClientSession() as session:
        try:
            for index in range(settings.clients):
                client = ConfigClient(
                    settings.url,
                    settings.app,
                    settings.profile,
                    redis=redis,
                    cache_dir=Path(settings.cache_dir) if settings.cache_dir else None,
                    fail_fast=settings.fail_fast,
                    resync_interval=settings.resync_interval,
                    retries=settings.retries,
                    session=session,
                    token=settings.token or None,
                )
                client.on_change(_printer(index, client, settings.print_config))
                await client.start()
                clients.append(client)
                line: dict[str, Any] = {
                    "event": "start",
                    "client": index,
                    "version": client.version,
                    "source": client.source,
                    "time": time.time(),
                }
                if settings.print_config:
                    line["config"] = thaw(client.config)
                _emit(line)
            _emit({"event": "ready", "clients": len(clients)})
            await stop.wait()
            return 0
        except StartupError as exc:
            print(f"config_watch: {exc}", file=sys.stderr)
            return STARTUP_FAILURE
        finally:
            for client in clients:
                await client.stop()
            if redis is not None:
                await redis.aclose()


def _printer(index: int, client: ConfigClient, with_config: bool) -> Any:
    def printed(config: Mapping[str, Any], changed: set[str]) -> None:
        line: dict[str, Any] = {
            "event": "applied",
            "client": index,
            "version": client.version,
            "source": client.source,
            "changed": sorted(changed),
            "time": time.time(),
        }
        if with_config:
            line["config"] = thaw(config)
        _emit(line)

    return printed


_ROOT = str(Path(__file__).resolve().parents[2])


@dataclasses.dataclass
class _Seen:
    version: str | None = None
    time: float = 0.0
    history: list[tuple[str | None, float]] = dataclasses.field(default_factory=list)


class WatcherProcesses:
    """Runs ``python -m core.config.watch`` processes and collects what their clients apply.

    For tests and benchmarks: :meth:`start` spawns ``processes`` processes of
    ``clients`` clients each and waits until every one is ready;
    :meth:`wait_applied` waits until every client has applied a version and
    returns the wall-clock time at which each did; :meth:`stop` sends SIGTERM
    and returns the exit codes.
    """

    def __init__(
        self,
        url: str,
        app: str,
        *,
        redis_url: str = "",
        processes: int = 1,
        clients: int = 1,
        args: Sequence[str] = (),
    ) -> None:
        self.argv = [
            sys.executable, "-m", "core.config.watch", "--url", url, "--app", app,
            "--redis-url", redis_url, "--clients", str(clients), *args,
        ]  # fmt: skip
        self.processes = processes
        self.clients = clients
        self.procs: list[asyncio.subprocess.Process] = []
        self.seen: dict[tuple[int, int], _Seen] = {}
        self.ready: set[int] = set()
        self.output: list[list[str]] = []
        self._changed = asyncio.Condition()
        self._readers: list[asyncio.Task[None]] = []

    async def start(self, timeout: float = 30.0) -> None:
        for index in range(self.processes):
            proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                cwd=_ROOT,
            )
            self.procs.append(proc)
            self.output.append([])
            self._readers.append(asyncio.create_task(self._read(index, proc)))
        try:
            await self._wait(lambda: len(self.ready) == self.processes, timeout)
        except TimeoutError:
            raise TimeoutError(
                f"{self.processes - len(self.ready)} watcher process(es) not ready in {timeout}s: "
                + " | ".join(" ".join(lines[-3:]) for lines in self.output)
            ) from None

    async def _read(self, index: int, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode(errors="replace").strip()
            self.output[index].append(line)
            try:
                event = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # a log line
            if event.get("event") == "ready":
                self.ready.add(index)
            elif event.get("event") in ("start", "applied"):
                seen = self.seen.setdefault((index, int(event["client"])), _Seen())
                seen.version, seen.time = event["version"], float(event["time"])
                seen.history.append((seen.version, seen.time))
            async with self._changed:
                self._changed.notify_all()

    async def _wait(self, predicate: Callable[[], bool], timeout: float) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(predicate), timeout)

    def versions(self) -> dict[tuple[int, int], str | None]:
        """The version each client (process index, client index) applied last."""
        return {key: seen.version for key, seen in self.seen.items()}

    async def wait_applied(self, version: str, timeout: float) -> list[float]:
        """Wait until every client applied ``version``; the time at which each did."""
        total = self.processes * self.clients

        def done() -> bool:
            return len(self.seen) == total and all(s.version == version for s in self.seen.values())

        try:
            await self._wait(done, timeout)
        except TimeoutError:
            behind = sum(1 for s in self.seen.values() if s.version != version)
            raise TimeoutError(
                f"{behind + total - len(self.seen)} of {total} clients had not applied "
                f"{version} within {timeout}s"
            ) from None
        return [next(t for v, t in reversed(s.history) if v == version) for s in self.seen.values()]

    async def stop(self, timeout: float = 10.0) -> list[int]:
        """SIGTERM every process (SIGKILL after ``timeout``); their exit codes."""
        for proc in self.procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        codes = []
        for proc in self.procs:
            try:
                codes.append(await asyncio.wait_for(proc.wait(), timeout))
            except TimeoutError:
                proc.kill()
                codes.append(await proc.wait())
        for task in self._readers:
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        return codes


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = load(
            Settings,
            prefix="CONFIG_WATCH_",
            argv=argv,
            prog="python -m core.config.watch",
            description="Follow an app's config and print each version applied (JSON lines).",
        )
    except SettingsError as exc:
        print(f"config_watch: {exc}", file=sys.stderr)
        return 2
    log.configure("text", settings.log_level)
    install_uvloop()
    return asyncio.run(watch(settings))


if __name__ == "__main__":
    sys.exit(main())
