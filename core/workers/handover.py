"""Handing the listening sockets to a new gateway process: a restart that refuses no connection.

The running gateway serves a Unix socket (``--control-socket PATH``, mode
0600). A new gateway started with ``--takeover`` connects there and the
exchange is, in order:

1. new → old ``TAKEOVER <pid>``; old → new its listening sockets (the traffic
   sockets and the admin socket, ``SCM_RIGHTS``) in one message;
2. the new process serves on those very sockets (its workers start and say
   they are ready); both processes accept meanwhile, from the same queues;
3. new → old ``READY``; old → new ``STOPPING``; the old process then stops
   accepting and drains its requests in flight, as on ``SIGTERM``, and
   exits. The new one takes the control socket's path for the next restart.

Since the sockets never close, no connection is refused or reset at any
moment: a connection waiting in a queue is accepted by whichever process
calls ``accept`` first (HAProxy's seamless reload, Envoy's hot restart and
systemd's socket activation rest on the same property). If the new process
fails before ``READY``, the old one notices the closed connection and goes on
serving as if nothing happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
from collections.abc import Callable

from core import log
from core.errors import StartupError
from core.workers.sockets import receive_sockets, send_sockets

logger = log.get("handover")

__all__ = ["HandoverServer", "Takeover", "take_over"]


class HandoverServer:
    """The running process's side: give the sockets away, stop when the successor is ready.

    ``sockets()`` returns the (role, socket) pairs to hand over;
    ``on_ready(pid)`` is called once a successor said ``READY`` (it should
    start a graceful stop).
    """

    def __init__(
        self,
        path: str,
        sockets: Callable[[], list[tuple[str, socket.socket]]],
        on_ready: Callable[[int], None],
    ) -> None:
        self.path = path
        self.sockets = sockets
        self.on_ready = on_ready
        self.handed_to: int | None = None
        self._sock: socket.socket | None = None
        self._inode: int | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Listen on ``path`` (replacing what is there: a predecessor's socket, or a stale one)."""
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.stat(self.path).st_mode):
                os.unlink(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            old_umask = os.umask(0o177)
            try:
                sock.bind(self.path)
            finally:
                os.umask(old_umask)
            sock.listen(4)
        except OSError as exc:
            sock.close()
            raise StartupError(f"cannot listen on control socket {self.path}: {exc}") from None
        sock.setblocking(False)
        self._sock = sock
        self._inode = os.stat(self.path).st_ino
        self._task = asyncio.create_task(self._serve(), name="handover")
        logger.info("handover: a successor can take over at %s", self.path)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            # The successor may own the path by now: remove only our own.
            with contextlib.suppress(OSError):
                if os.stat(self.path).st_ino == self._inode:
                    os.unlink(self.path)

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._sock is not None
        while self.handed_to is None:
            conn, _ = await loop.sock_accept(self._sock)
            with conn:
                try:
                    await self._one(loop, conn)
                except (OSError, ValueError, TimeoutError) as exc:
                    logger.warning("handover: a successor went away before it was ready (%s)", exc)

    async def _one(self, loop: asyncio.AbstractEventLoop, conn: socket.socket) -> None:
        line = await _read_line(loop, conn, timeout=5.0)
        verb, _, pid_text = line.partition(" ")
        if verb != "TAKEOVER":
            raise ValueError(f"unexpected {line!r}")
        pid = int(pid_text or 0)
        named = self.sockets()
        conn.setblocking(True)
        send_sockets(conn, named)
        conn.setblocking(False)
        logger.info(
            "handover: %d sockets handed to pid %d; waiting until it is ready", len(named), pid
        )
        # The successor starts its workers meanwhile; it may take a while.
        line = await _read_line(loop, conn, timeout=None)
        if line != "READY":
            raise ValueError(f"unexpected {line!r}")
        await loop.sock_sendall(conn, b"STOPPING\n")
        self.handed_to = pid
        logger.info("handover: pid %d is ready; this gateway stops accepting and drains", pid)
        self.on_ready(pid)


async def _read_line(
    loop: asyncio.AbstractEventLoop, conn: socket.socket, *, timeout: float | None
) -> str:
    buf = b""
    async with asyncio.timeout(timeout):
        while not buf.endswith(b"\n"):
            chunk = await loop.sock_recv(conn, 256)
            if not chunk:
                raise ConnectionError("closed")
            buf += chunk
            if len(buf) > 256:
                raise ValueError("line too long")
    return buf.decode("ascii", "replace").strip()


class Takeover:
    """The successor's side: the sockets received, and :meth:`ready` to let the old process go."""

    def __init__(self, conn: socket.socket, sockets: list[tuple[str, socket.socket]]) -> None:
        self.conn = conn
        self.sockets = sockets

    def take(self, role: str) -> list[socket.socket]:
        """The received sockets of ``role``, in the order sent."""
        return [sock for r, sock in self.sockets if r == role]

    def ready(self, timeout: float = 5.0) -> None:
        """Tell the old process that this one serves; it answers ``STOPPING`` and drains."""
        self.conn.settimeout(timeout)
        self.conn.sendall(b"READY\n")
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = self.conn.recv(64)
            if not chunk:
                break
            reply += chunk
        if reply.strip() != b"STOPPING":
            logger.warning("handover: the old gateway answered %r to READY", reply)
        self.close()

    def close(self) -> None:
        self.conn.close()


def take_over(path: str, timeout: float = 5.0) -> Takeover:
    """Connect to the running gateway's control socket at ``path`` and receive its sockets.

    ``StartupError`` (one line) when no gateway answers there.
    """
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(timeout)
    try:
        conn.connect(path)
        conn.sendall(f"TAKEOVER {os.getpid()}\n".encode())
        received = receive_sockets(conn)
    except (OSError, ValueError) as exc:
        conn.close()
        raise StartupError(f"cannot take over from the gateway at {path}: {exc}") from None
    return Takeover(conn, received)
