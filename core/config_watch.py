"""``python -m core.config_watch``: follow an app's config and print each version applied.

A small tool around :class:`core.config_client.ConfigClient`, for people
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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from core import log
from core.config_client import ConfigClient
from core.errors import SettingsError, StartupError
from core.merge import thaw
from core.redis import connect
from core.runner import STARTUP_FAILURE, install_uvloop
from core.settings import LogLevel, load, option


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
    resync_interval: float = dataclasses.field(
        default=30.0, metadata=option("seconds between full re-fetches (or polls without Redis)")
    )
    log_level: LogLevel = dataclasses.field(default="warning", metadata=option("log level"))

    def validate(self) -> None:
        if not 1 <= self.clients <= 1000:
            raise SettingsError(f"--clients: expected 1-1000, got {self.clients}")
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
                    session=session,
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


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = load(
            Settings,
            prefix="CONFIG_WATCH_",
            argv=argv,
            prog="python -m core.config_watch",
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
