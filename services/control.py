"""The launcher's control socket: commands against a running system, and their protocol.

The launcher listens on a Unix socket in its run directory,
``{run_dir}/control.sock``, created with mode 0600 in the 0700 run
directory: only the user who started the system can connect, and nothing
listens on the network. ``python -m services status | restart | scale``
(:mod:`services.commands`) are its clients; anything else may be, in any
language: the protocol is JSON lines.

A client connects and sends one request, a JSON object on one line::

    {"command": "status"}
    {"command": "restart", "names": ["inventory", "gateway"]}
    {"command": "scale", "service": "inventory", "instances": 3}

then reads JSON objects, one a line, until the launcher closes the
connection:

- ``{"progress": "..."}``, zero or more: a step of the operation, as it
  happens (a restart takes seconds);
- one answer, last: a result, ``{"status": 200, ...}`` with the command's
  fields, or a problem with RFC 9457's members (``type``, ``title``,
  ``status``, ``detail``): 400 a malformed request, 404 an unknown name, 409
  another operation under way, 422 a value out of range or a component that
  can't do it, 503 the system starting or stopping, 500 an operation that
  failed (what still serves is in ``detail``).

One connection is one command; a client that goes away does not stop an
operation under way (a half-done rolling restart would be worse).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from core.errors import SettingsError

__all__ = [
    "SOCKET",
    "ControlServer",
    "Problem",
    "ask",
    "socket_path",
]

#: The control socket's file name in the run directory.
SOCKET = "control.sock"
#: Longest request line read, in bytes.
MAX_REQUEST = 64 * 1024
#: ``sockaddr_un.sun_path`` holds 108 bytes on Linux, the final NUL included.
SUN_PATH_MAX = 107

Progress = Callable[[str], None]
Handler = Callable[[dict[str, Any], Progress], Awaitable[dict[str, Any]]]


class Problem(Exception):
    """A refused or failed command, answered as a problem object (RFC 9457's members)."""

    def __init__(self, status: int, kind: str, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.kind = kind
        self.title = title
        self.detail = detail

    def answer(self) -> dict[str, Any]:
        return {
            "type": f"urn:essaim:problem:control:{self.kind}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }


def socket_path(path: Path) -> str:
    """``path`` as a Unix socket address: absolute when it fits, else relative to here.

    :class:`SettingsError` when neither fits ``sun_path`` (a very deep run directory).
    """
    for text in (str(path), os.path.relpath(path)):
        if len(os.fsencode(text)) <= SUN_PATH_MAX:
            return text
    raise SettingsError(
        f"run_dir: {path.parent} is too long a path for a Unix socket; choose a shorter one"
    )


class ControlServer:
    """The launcher's side: serves :data:`SOCKET` with ``handler`` (one request a connection)."""

    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = path
        self.handler = handler
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        """Listen on the socket, mode 0600 before it accepts anyone (replacing a stale one)."""
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                self.path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(socket_path(self.path))
            # Nobody can connect before listen(): no moment with a wider mode.
            os.chmod(self.path, 0o600)
            sock.listen(16)
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        self._server = await asyncio.start_unix_server(self._serve, sock=sock, limit=MAX_REQUEST)

    async def close(self) -> None:
        """Stop listening, remove the socket, cancel the commands under way."""
        if self._server is not None:
            self._server.close()
            self._server = None
        with contextlib.suppress(OSError):
            self.path.unlink()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._one(reader, writer)
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        def send(doc: dict[str, Any]) -> None:
            if not writer.is_closing():
                writer.write(json.dumps(doc).encode() + b"\n")

        try:
            try:
                async with asyncio.timeout(5.0):
                    line = await reader.readline()
            except (ValueError, asyncio.LimitOverrunError):
                raise Problem(400, "bad-request", "Bad Request", "request over 64 KiB") from None
            except TimeoutError:
                raise Problem(400, "bad-request", "Bad Request", "no request within 5 s") from None
            try:
                request = json.loads(line)
            except ValueError:
                request = None
            if not isinstance(request, dict):
                raise Problem(
                    400, "bad-request", "Bad Request", "expected a JSON object on one line"
                )
            answer = await self.handler(request, lambda text: send({"progress": text}))
            send({"status": 200, **answer})
        except Problem as problem:
            send(problem.answer())
        with contextlib.suppress(ConnectionError):
            await writer.drain()


async def ask(
    path: Path, request: dict[str, Any], progress: Progress, timeout: float | None = None
) -> dict[str, Any]:
    """Send ``request`` to the control socket at ``path``; its answer (a result or a problem).

    ``progress`` gets each progress line. ``OSError`` when nobody listens
    there; ``ConnectionError`` when the launcher closed without an answer.
    """
    reader, writer = await asyncio.open_unix_connection(socket_path(path), limit=1 << 22)
    try:
        writer.write(json.dumps(request).encode() + b"\n")
        await writer.drain()
        async with asyncio.timeout(timeout):
            while True:
                line = await reader.readline()
                if not line:
                    raise ConnectionError("the launcher closed the connection without an answer")
                doc = json.loads(line)
                if isinstance(doc, dict) and set(doc) == {"progress"}:
                    progress(str(doc["progress"]))
                    continue
                if not isinstance(doc, dict):
                    raise ConnectionError(f"unexpected answer {line[:200]!r}")
                return doc
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
