"""configsvc's documents as the console shows them: versions, contents, diffs, rollbacks.

:class:`Configs` follows configsvc's change stream (``GET /v1/events``,
Server-Sent Events): each change re-reads the list of documents and the
history of those whose version moved; a (re)connection or a ``resync``
re-reads every history. The ``config`` section holds each document with its
retained versions (number, time, origin, hash), newest first.

Contents are read on demand (:meth:`Configs.content`, TOML as configsvc
renders it) and two versions are compared as a unified diff of those
renders (:meth:`Configs.diff`). A rollback is configsvc's own
(``POST /v1/documents/{name}/rollback?version=N``, a new version with N's
content), sent with the console's configsvc token.
"""

from __future__ import annotations

import asyncio
import difflib
from typing import Any

import aiohttp
import orjson

from core import log
from core.errors import BadGateway, HTTPProblem
from core.settings import Secret
from core.tasks import TaskSet
from services.console.hub import Hub
from services.console.sse import SSEvent, follow

logger = log.get("console")

__all__ = ["Configs"]


class Configs:
    """configsvc as the console shows it; :meth:`start` follows it, :meth:`stop` stops."""

    def __init__(self, hub: Hub, session: aiohttp.ClientSession, url: str, token: Secret) -> None:
        self.hub = hub
        self.session = session
        self.url = url.rstrip("/")
        self.token = token
        self.rev = 0
        self.documents: dict[str, dict[str, Any]] = {}
        self.connected = False
        self.error: str | None = "not read yet"
        self.tasks = TaskSet("console:config")
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        self.tasks.spawn(
            follow(self.session, f"{self.url}/v1/events", self._on_event,
                   on_connect=self._on_connect, on_disconnect=self._on_disconnect,
                   headers=self._headers()),
            "watch",
        )  # fmt: skip

    async def stop(self) -> None:
        await self.tasks.stop()

    def _headers(self, **extra: str) -> dict[str, str]:
        headers = dict(extra)
        if self.token:
            headers["Authorization"] = f"Bearer {self.token.reveal()}"
        return headers

    async def _call(
        self, method: str, path: str, *, accept: str = "application/json"
    ) -> tuple[int, bytes]:
        """configsvc's status and body; :class:`BadGateway` when it doesn't answer."""
        timeout = aiohttp.ClientTimeout(total=5.0)
        try:
            async with self.session.request(
                method, self.url + path, headers=self._headers(Accept=accept), timeout=timeout
            ) as resp:
                return resp.status, await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise BadGateway(
                f"configsvc at {self.url} did not answer: {exc or type(exc).__name__}"
            ) from None

    async def _json(self, path: str) -> Any:
        status, body = await self._call("GET", path)
        if status != 200:
            raise _passed_on(status, body, path)
        return orjson.loads(body)

    # -- the section ------------------------------------------------------------------

    async def refresh(self, *, everything: bool = False) -> None:
        """Re-read the list, and the history of each document whose version moved."""
        async with self._lock:
            try:
                listing = await self._json("/v1/documents")
                current = {d["name"]: d for d in listing.get("documents", [])}
                stale = [
                    name for name, doc in current.items()
                    if everything or self.documents.get(name, {}).get("version") != doc["version"]
                ]  # fmt: skip
                histories = await asyncio.gather(
                    *(self._json(f"/v1/documents/{name}/history") for name in stale)
                )
                kept = {n: d for n, d in self.documents.items() if n in current}
                for name, history in zip(stale, histories, strict=True):
                    kept[name] = {**current[name], "versions": history.get("versions", [])}
                self.documents = {name: kept[name] for name in sorted(kept)}
                self.rev = int(listing.get("rev", self.rev))
                self.error = None
            except (HTTPProblem, ValueError, KeyError) as exc:
                self.error = str(exc) or type(exc).__name__
            await self.hub.set("config", self.describe())

    def describe(self) -> dict[str, Any]:
        return {
            "configsvc": self.url,
            "reachable": self.error is None,
            "watching": self.connected,
            "error": self.error,
            "rev": self.rev,
            "documents": list(self.documents.values()),
        }

    async def _on_connect(self) -> None:
        self.connected = True
        await self.refresh(everything=True)

    def _on_disconnect(self, reason: str) -> None:
        if self.connected:
            logger.warning("configsvc watch closed: %s", reason)
        self.connected = False

    async def _on_event(self, event: SSEvent) -> None:
        if event.event in ("change", "resync"):
            await self.refresh(everything=event.event == "resync")

    # -- on demand --------------------------------------------------------------------

    async def content(self, name: str, version: int) -> str:
        """Version ``version`` of document ``name`` as TOML; problems as configsvc says them."""
        path = f"/v1/documents/{name}?version={version}"
        status, body = await self._call("GET", path, accept="application/toml")
        if status != 200:
            raise _passed_on(status, body, path)
        return body.decode()

    async def diff(self, name: str, old: int, new: int) -> list[str]:
        """The unified diff from version ``old`` to ``new`` (TOML renders), without headers."""
        before, after = await asyncio.gather(self.content(name, old), self.content(name, new))
        lines = difflib.unified_diff(
            before.splitlines(), after.splitlines(), f"{name} v{old}", f"{name} v{new}",
            lineterm="", n=3,
        )  # fmt: skip
        return [line for line in lines if not line.startswith(("---", "+++"))]

    async def rollback(self, name: str, version: int) -> dict[str, Any]:
        """configsvc's answer to rolling ``name`` back to ``version``."""
        path = f"/v1/documents/{name}/rollback?version={version}"
        status, body = await self._call("POST", path)
        if status != 200:
            raise _passed_on(status, body, path)
        doc: dict[str, Any] = orjson.loads(body)
        await self.refresh()
        return doc


def _passed_on(status: int, body: bytes, path: str) -> HTTPProblem:
    """configsvc's refusal as the console's own problem (its 4xx as is, else 502)."""
    try:
        detail = str(orjson.loads(body).get("detail", ""))
    except (ValueError, AttributeError):
        detail = ""
    if 400 <= status < 500 and status not in (401, 403):
        return HTTPProblem(detail or f"configsvc answered {status} to {path}", status=status)
    return BadGateway(f"configsvc answered {status} to {path}" + (f": {detail}" if detail else ""))
