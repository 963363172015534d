"""Where the gateway's static route table comes from, and how it is kept current.

- :class:`RouteFile`: a local TOML file (``--routes``), checked every
  ``interval`` seconds (modification time, size, inode) and parsed again
  when it changed.
- :class:`ConfigRoutes`: the ``routes`` and ``defaults`` keys of the
  gateway's config document in the config service (``--config-url``),
  through :class:`core.config.client.ConfigClient`, which keeps the last
  known config on disk and serves it while the service is away.

Both validate a new table whole (:meth:`core.routes.table.RouteTable.parse`)
before it replaces the one in force. A rejected table leaves the previous
one in force; the reason is logged and shown on the admin ``/routes`` page.
At start, an invalid table is a :class:`~core.errors.StartupError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Mapping
from typing import Any, Protocol

from core import log
from core.config.client import ConfigClient
from core.config.merge import thaw
from core.errors import StartupError
from core.routes.table import RouteError, RouteTable

logger = log.get("gateway.routes")

__all__ = ["ConfigRoutes", "RouteFile", "read_route_file", "table_from_config"]


def read_route_file(path: str) -> RouteTable:
    """The table in the TOML file at ``path``; :class:`StartupError` if it is unreadable or invalid.

    The gateway calls it before it binds a port, connects to Redis or starts
    a worker, so that a bad file is refused at once (exit code 3) rather
    than after the registry's start-up wait.
    """
    try:
        return RouteTable.load_file(path)
    except RouteError as exc:
        raise StartupError(f"route file {path}: {exc}") from None


def table_from_config(config: Mapping[str, Any], version: str | None) -> RouteTable:
    """The route table of a gateway config: its ``routes`` list and ``defaults`` table."""
    doc: dict[str, Any] = {"routes": thaw(config.get("routes", []))}
    if "defaults" in config:
        doc["defaults"] = thaw(config["defaults"])
    return RouteTable.parse(doc, version)


class Router(Protocol):
    """Where a source puts the tables it reads: the gateway's router, in practice.

    Declared here so that this package knows nothing of the data plane
    (:class:`core.proxy.router.Router` satisfies it).
    """

    @property
    def table(self) -> RouteTable: ...

    def install(self, table: RouteTable, *, source: str, at: float) -> None:
        """Put ``table`` in force."""

    def reject(self, reason: str, *, source: str, version: str | None, at: float) -> None:
        """Record a table that could not be used; the one in force stays."""


class RouteFile:
    """Keeps ``router``'s table in step with the TOML file at ``path``."""

    def __init__(self, path: str, router: Router, *, interval: float = 1.0) -> None:
        self.path = path
        self.router = router
        self.interval = interval
        self._seen: tuple[float, int, int] | None = None
        self._task: asyncio.Task[None] | None = None

    def _stat(self) -> tuple[float, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime, st.st_size, st.st_ino)

    def load(self) -> None:
        """Read and install the file now; :class:`StartupError` if it is unreadable or invalid."""
        self._seen = self._stat()
        table = read_route_file(self.path)
        self.router.install(table, source=f"file:{self.path}", at=time.time())

    def check(self) -> bool:
        """Reload if the file changed since last seen; whether a new table went in force."""
        seen = self._stat()
        if seen is None or seen == self._seen:
            return False
        self._seen = seen
        try:
            table = RouteTable.load_file(self.path)
        except RouteError as exc:
            self.router.reject(str(exc), source=f"file:{self.path}", version=None, at=time.time())
            return False
        if table.version == self.router.table.version:
            return False
        self.router.install(table, source=f"file:{self.path}", at=time.time())
        return True

    async def start(self) -> None:
        self.load()
        self._task = asyncio.create_task(self._poll(), name="gateway:route-file")

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.check()
            except Exception:
                logger.exception("checking the route file %s failed", self.path)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


class ConfigRoutes:
    """Keeps ``router``'s table in step with the config client's ``routes`` and ``defaults``.

    The client is started by its owner; :meth:`attach` must come before
    that, so that the validator checks the first version too.
    """

    def __init__(self, client: ConfigClient, router: Router) -> None:
        self.client = client
        self.router = router

    def attach(self) -> None:
        self.client.add_validator(self._validate)
        self.client.on_change(self._changed)

    def _validate(self, config: Mapping[str, Any]) -> None:
        try:
            table_from_config(config, None)
        except RouteError as exc:
            self.router.reject(str(exc), source="config", version=None, at=time.time())
            raise

    def install_current(self) -> None:
        """Install the table of the config in force (after the client started)."""
        try:
            table = table_from_config(self.client.config, self.client.version)
        except RouteError as exc:
            # Defaults or a cached copy the validator never saw.
            raise StartupError(f"routes in the gateway config: {exc}") from None
        self.router.install(table, source=f"config:{self.client.source}", at=time.time())

    def _changed(self, config: Mapping[str, Any], changed: set[str]) -> None:
        if not any(key.split(".", 1)[0] in ("routes", "defaults") for key in changed):
            return
        table = table_from_config(config, self.client.version)
        self.router.install(table, source=f"config:{self.client.source}", at=time.time())
