"""The registry's write API over HTTP, for a process that holds a service token.

:class:`RegistryClient` has the write methods of
:class:`core.registry.store.RegistryStore` (``register``, ``heartbeat``,
``update``, ``deregister``), so :class:`core.registry.discovery.Registration`
keeps an instance registered through either. Going through the registry's
HTTP API rather than Redis is what lets the registry check the token's scope
(:mod:`core.registry.credentials`) and the target (:mod:`core.registry.targets`)
of every write.

Errors: :class:`RegistryUnavailable` (a ``ConnectionError``) when the
registry can't be reached, times out or answers 5xx: the caller retries;
:class:`RegistrationRefused` when it refuses the write (401, 403, 422...):
retrying the same request will not help, the problem's ``detail`` says why.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from core.errors import EssaimError
from core.registry.model import Instance
from core.settings import Secret

__all__ = ["RegistrationRefused", "RegistryClient", "RegistryUnavailable"]


class RegistryUnavailable(EssaimError, ConnectionError):
    """The registry could not answer (connection refused, timeout, 5xx)."""


class RegistrationRefused(EssaimError):
    """The registry refused a write: ``status`` and the problem's ``detail``."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail


class RegistryClient:
    """Writes to the registry at ``url`` with ``token`` (a service's or the operator's)."""

    def __init__(self, url: str, token: Secret, *, timeout: float = 2.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    def _path(self, service: str, instance_id: str) -> str:
        return f"{self.url}/v1/services/{service}/instances/{instance_id}"

    async def _call(
        self, method: str, url: str, body: dict[str, Any] | None = None
    ) -> tuple[int, Any]:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        headers = {"Authorization": f"Bearer {self.token.reveal()}"} if self.token else {}
        try:
            async with self._session.request(method, url, json=body, headers=headers) as resp:
                doc = await resp.json(content_type=None) if resp.status != 204 else None
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise RegistryUnavailable(
                f"the registry at {self.url} did not answer: {exc or type(exc).__name__}"
            ) from None
        if status >= 500:
            detail = doc.get("detail", "") if isinstance(doc, dict) else ""
            raise RegistryUnavailable(f"the registry answered {status}: {detail}")
        if status >= 400 and status != 404:
            detail = doc.get("detail", "") if isinstance(doc, dict) else ""
            raise RegistrationRefused(status, str(detail))
        return status, doc

    async def register(self, instance: Instance) -> tuple[int, bool]:
        """Register or replace ``instance``: (the registry's revision, whether it was new)."""
        body = {
            "host": instance.host,
            "port": instance.port,
            "scheme": instance.scheme,
            "status": instance.status,
            "metadata": dict(instance.metadata),
            "ttl": instance.ttl,
        }
        status, doc = await self._call("PUT", self._path(instance.service, instance.id), body)
        if status == 404:
            raise RegistrationRefused(404, "the registry has no registration API at this URL")
        return int(doc["rev"]), status == 201

    async def heartbeat(self, service: str, instance_id: str) -> bool:
        """Renew the TTL; False when the registry no longer holds the instance."""
        status, _ = await self._call("PUT", self._path(service, instance_id) + "/heartbeat")
        return status == 204

    async def update(self, service: str, instance_id: str, changes: dict[str, Any]) -> Any:
        """Change ``status`` and/or ``metadata``; None when the instance is unknown."""
        status, doc = await self._call("PATCH", self._path(service, instance_id), changes)
        return None if status == 404 else doc

    async def deregister(self, service: str, instance_id: str) -> bool:
        """Remove the instance; False when it was not registered."""
        status, _ = await self._call("DELETE", self._path(service, instance_id))
        return status == 204

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
