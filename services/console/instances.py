"""The registry's services and instances, live: the console's ``services`` section.

:class:`Instances` follows the registry's change stream (``GET /v1/events``,
Server-Sent Events): each change re-reads the service it names, so a new,
changed, expired or removed instance reaches the browsers within
milliseconds. Each (re)connection and each ``resync`` re-reads everything.
Heartbeats publish nothing (by design, see docs/architecture.md), so while
someone looks the whole list is also re-read every ``interval`` seconds,
which keeps each instance's last heartbeat current.

Writes (an instance's status) go through :class:`core.registry.client.RegistryClient`
with the console's registry token, the operator's: the console's own
admin check (:mod:`services.console.service`) decides who may ask.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson

from core import log
from core.registry.client import RegistryClient
from core.tasks import TaskSet
from services.console.hub import Hub
from services.console.sse import SSEvent, follow

logger = log.get("console")

__all__ = ["Instances"]


class Instances:
    """The registry as the console shows it; :meth:`start` follows it, :meth:`stop` stops."""

    section = "services"

    def __init__(
        self,
        hub: Hub,
        session: aiohttp.ClientSession,
        url: str,
        writer: RegistryClient,
        *,
        interval: float = 2.0,
    ) -> None:
        self.hub = hub
        self.session = session
        self.url = url.rstrip("/")
        self.writer = writer
        self.interval = interval
        self.services: dict[str, list[dict[str, Any]]] = {}
        self.rev = 0
        self.connected = False
        self.error: str | None = "not read yet"
        self.tasks = TaskSet("console:registry")
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        self.tasks.spawn(
            follow(self.session, f"{self.url}/v1/events", self._on_event,
                   on_connect=self._on_connect, on_disconnect=self._on_disconnect),
            "watch",
        )  # fmt: skip
        self.tasks.spawn(self._poll(), "poll")

    async def stop(self) -> None:
        await self.tasks.stop()

    # -- reading ----------------------------------------------------------------------

    async def _get(self, path: str) -> Any:
        timeout = aiohttp.ClientTimeout(total=2.0)
        async with self.session.get(self.url + path, timeout=timeout) as resp:
            if resp.status != 200:
                raise aiohttp.ClientResponseError(
                    resp.request_info, (), status=resp.status, message=f"{path}: {resp.status}"
                )
            return orjson.loads(await resp.read())

    async def _read_service(self, name: str) -> list[dict[str, Any]]:
        doc = await self._get(f"/v1/services/{name}?all=1")
        self.rev = max(self.rev, int(doc.get("rev", 0)))
        return sorted(doc.get("instances", []), key=lambda i: i["id"])

    async def refresh(self, only: str | None = None) -> None:
        """Re-read one service (``only``) or all of them, then publish the section."""
        async with self._lock:
            try:
                if only is not None:
                    self.services[only] = await self._read_service(only)
                else:
                    listing = await self._get("/v1/services")
                    names = sorted(listing.get("services", {}))
                    read = await asyncio.gather(*(self._read_service(n) for n in names))
                    self.services = dict(zip(names, read, strict=True))
                    self.rev = int(listing.get("rev", self.rev))
                self.error = None
            except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
                self.error = (
                    f"the registry at {self.url} did not answer: {exc or type(exc).__name__}"
                )
            await self.publish()

    async def publish(self) -> None:
        await self.hub.set("services", self.describe())

    def describe(self) -> dict[str, Any]:
        return {
            "registry": self.url,
            "reachable": self.error is None,
            "watching": self.connected,
            "error": self.error,
            "rev": self.rev,
            "services": [
                {
                    "name": name,
                    "up": sum(1 for i in instances if i.get("status") == "UP"),
                    "instances": [_instance(i) for i in instances],
                }
                for name, instances in sorted(self.services.items())
            ],
        }

    async def set_status(self, service: str, instance_id: str, status: str) -> Any:
        """Ask the registry to change the instance's status; its answer, None when unknown.

        Raises :class:`~core.registry.client.RegistryUnavailable` or
        :class:`~core.registry.client.RegistrationRefused` as the client does.
        """
        doc = await self.writer.update(service, instance_id, {"status": status})
        await self.refresh(only=service)
        return doc

    def find(self, service: str, instance_id: str) -> dict[str, Any] | None:
        """The instance as last read, or None."""
        return next((i for i in self.services.get(service, []) if i["id"] == instance_id), None)

    # -- following --------------------------------------------------------------------

    async def _on_connect(self) -> None:
        self.connected = True
        await self.refresh()

    def _on_disconnect(self, reason: str) -> None:
        if self.connected:
            logger.warning("registry watch closed: %s", reason)
        self.connected = False

    async def _on_event(self, event: SSEvent) -> None:
        if event.event == "change":
            try:
                service = orjson.loads(event.data)["service"]
            except (ValueError, KeyError, TypeError):
                await self.refresh()
                return
            await self.refresh(only=str(service))
        elif event.event == "resync":
            await self.refresh()

    async def _poll(self) -> None:
        while True:
            await self.hub.active()
            await self.refresh()
            await asyncio.sleep(self.interval)


def _instance(raw: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": raw["id"],
        "status": raw.get("status", "UP"),
        "address": f"{raw.get('scheme', 'http')}://{raw.get('host')}:{raw.get('port')}",
        "metadata": raw.get("metadata", {}),
        "registered_at": raw.get("registered_at"),
        "last_heartbeat": raw.get("last_heartbeat"),
        "ttl": raw.get("ttl"),
    }
