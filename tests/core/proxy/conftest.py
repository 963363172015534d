"""Fixtures for the data plane: a proxy on a loopback port, real upstream servers, raw clients.

- ``upstreams``: starts upstream servers on free loopback ports, either an
  aiohttp application or a raw asyncio streams handler, and stops them.
- ``gateway``: starts a :class:`~core.proxy.server.ProxyServer` in the
  test's event loop with a route table (a list of route dicts), optional
  discovery watcher and limits; drains it at teardown.
- :func:`raw_exchange`: sends bytes on a new connection and reads until the
  server closes or the expected number of responses arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest_asyncio
from aiohttp import web

from core.proxy.router import Router
from core.proxy.server import Limits, ProxyServer
from core.registry.discovery import Watcher
from core.routes.table import RouteTable, Timeouts
from core.upstream.retry import RetryPolicy
from core.upstream.upstream import UpstreamPolicy

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclasses.dataclass
class Server:
    host: str
    port: int
    close: Callable[[], Awaitable[None]]
    connections: list[Any] = dataclasses.field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


class Upstreams:
    def __init__(self) -> None:
        self.servers: list[Server] = []

    async def app(self, app: web.Application, port: int = 0) -> Server:
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        bound = runner.addresses[0][1]
        server = Server("127.0.0.1", int(bound), runner.cleanup)
        self.servers.append(server)
        return server

    async def raw(self, handler: Handler, port: int = 0) -> Server:
        """A server that runs ``handler(reader, writer)`` per connection."""
        tasks: set[asyncio.Task[None]] = set()
        writers: list[asyncio.StreamWriter] = []

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.append(writer)
            server.connections.append(writer)
            task = asyncio.current_task()
            assert task is not None
            tasks.add(task)
            try:
                await handler(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                tasks.discard(task)
                writer.close()

        srv = await asyncio.start_server(on_connect, "127.0.0.1", port)

        async def close() -> None:
            srv.close()
            for w in writers:
                w.close()
            if tasks:
                # Handlers end when their connection closes; cancel only the stubborn.
                _, pending = await asyncio.wait(set(tasks), timeout=1.0)
                for t in pending:
                    t.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
            with contextlib.suppress(Exception):
                await srv.wait_closed()

        server = Server("127.0.0.1", srv.sockets[0].getsockname()[1], close)
        self.servers.append(server)
        return server

    async def close(self) -> None:
        for server in reversed(self.servers):
            with contextlib.suppress(Exception):
                await server.close()


@pytest_asyncio.fixture
async def upstreams() -> AsyncIterator[Upstreams]:
    made = Upstreams()
    try:
        yield made
    finally:
        await made.close()


@dataclasses.dataclass
class Gateway:
    proxy: ProxyServer
    router: Router
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def install(self, routes: list[dict[str, Any]], version: str = "test") -> None:
        self.router.install(RouteTable.parse({"routes": routes}, version), source="test", at=0.0)


GatewayFactory = Callable[..., Awaitable[Gateway]]


@pytest_asyncio.fixture
async def gateway() -> AsyncIterator[GatewayFactory]:
    made: list[tuple[Gateway, asyncio.Server]] = []

    async def make(
        routes: list[dict[str, Any]] | None = None,
        *,
        watcher: Watcher | None = None,
        limits: Limits | None = None,
        policy: UpstreamPolicy | None = None,
        retry: RetryPolicy | None = None,
        timeouts: Timeouts | None = None,
        tick: float = 0.02,
    ) -> Gateway:
        router = Router(
            watcher,
            policy=policy or UpstreamPolicy(),
            retry=retry or RetryPolicy(),
            timeouts=timeouts or Timeouts(),
        )
        if watcher is not None:
            watcher.on_change(router.registry_changed)
        proxy = ProxyServer(router, limits or Limits(), tick=tick)
        await proxy.start()
        loop = asyncio.get_running_loop()
        server = await loop.create_server(proxy, "127.0.0.1", 0)
        gw = Gateway(proxy, router, server.sockets[0].getsockname()[1])
        if routes is not None:
            gw.install(routes)
        made.append((gw, server))
        return gw

    try:
        yield make
    finally:
        for gw, server in made:
            server.close()
            await gw.proxy.drain(0.5)


async def raw_exchange(
    port: int,
    data: bytes | list[bytes],
    *,
    until_close: bool = True,
    timeout: float = 5.0,
    pause: Callable[[], Awaitable[None]] | None = None,
) -> bytes:
    """Send ``data`` (pieces sent one by one, ``pause`` awaited between) and read the answer.

    Reads until the server closes the connection (or ``timeout``).
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        pieces = [data] if isinstance(data, bytes) else data
        for i, piece in enumerate(pieces):
            writer.write(piece)
            await writer.drain()
            if pause is not None and i < len(pieces) - 1:
                await pause()
        chunks = []
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(timeout):
                while True:
                    chunk = await reader.read(65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
        return b"".join(chunks)
    finally:
        writer.close()


def parse_responses(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Split raw HTTP/1.1 responses (Content-Length or chunked bodies) into (status, headers, body)."""
    out = []
    while raw:
        head, sep, rest = raw.partition(b"\r\n\r\n")
        if not sep:
            break
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            key = name.strip().lower()
            headers[key] = (headers[key] + ", " if key in headers else "") + value.strip()
        if "content-length" in headers:
            n = int(headers["content-length"])
            body, raw = rest[:n], rest[n:]
        elif headers.get("transfer-encoding") == "chunked":
            body_parts = []
            while True:
                size_line, _, rest = rest.partition(b"\r\n")
                size = int(size_line, 16)
                if size == 0:
                    _, _, rest = rest.partition(b"\r\n")
                    break
                body_parts.append(rest[:size])
                rest = rest[size + 2 :]
            body, raw = b"".join(body_parts), rest
        elif status in (101, 204, 304) or 100 <= status < 200:
            body, raw = b"", rest
        else:
            body, raw = rest, b""
        out.append((status, headers, body))
    return out
