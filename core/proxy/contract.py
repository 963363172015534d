"""What one exchange needs from its client connection and from the server: the data plane's seams.

:class:`~core.proxy.exchange.Exchange` (and its response half) drives one
request for a :class:`~core.proxy.server.ClientConnection`, which the
:class:`~core.proxy.server.ProxyServer` creates. The server must know the
exchange, so the exchange knows the server only through these protocols:
the modules import in one direction (server -> exchange -> contract).
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from core.proxy.access import AccessLog
    from core.proxy.bff import SessionEndpoints
    from core.proxy.head import Heads
    from core.proxy.pool import Pool, UpstreamConnection
    from core.proxy.stats import Stats
    from core.proxy.wire import Clock, RequestIds, TraceIds
    from core.telemetry.spans import Recorder
    from core.upstream.upstream import Endpoint

__all__ = ["Client", "Limits", "Proxy"]


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """The data plane's limits and connection timeouts (seconds, bytes)."""

    max_head: int = 16 * 1024
    max_body: int = 10 * 1024 * 1024
    head_timeout: float = 10.0
    body_timeout: float = 30.0
    keepalive_timeout: float = 60.0
    stream_idle_timeout: float = 300.0
    replay_buffer: int = 64 * 1024
    max_pipeline: int = 16


class Proxy(Protocol):
    """The state the connections of one listener share (:class:`~core.proxy.server.ProxyServer`)."""

    limits: Limits
    pool: Pool
    stats: Stats
    ids: RequestIds
    traces: TraceIds
    access: AccessLog | None
    spans: Recorder | None
    bff: SessionEndpoints | None
    clock: Clock
    active: int
    draining: bool
    health_path: bytes
    loop: asyncio.AbstractEventLoop

    def host_line(self, ep: Endpoint) -> bytes:
        """The ``host:`` header line for requests to ``ep``."""


class Client(Protocol):
    """One client connection, as its current exchange sees it (:class:`~core.proxy.server.ClientConnection`)."""

    heads: Heads
    transport: asyncio.Transport
    peer: bytes
    deadline: float
    write_paused: bool

    @property
    def proxy(self) -> Proxy:
        """The server this connection belongs to."""

    def pause(self, reason: int, paused: bool) -> None:
        """Stop (or resume) reading from the client for ``reason``."""

    def exchange_done(self, exchange: Any, close: bool) -> None:
        """``exchange`` (an :class:`~core.proxy.exchange.Exchange`) has answered."""

    def tunnel_to(self, conn: UpstreamConnection, rest: bytes) -> None:
        """The upstream switched protocols: copy bytes both ways from now on."""
