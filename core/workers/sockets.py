"""Listening sockets that several processes share, and passing them between processes.

Every traffic socket is made with ``SO_REUSEPORT``: each worker slot has its
own, and the kernel spreads new connections over them (nginx's
``listen ... reuseport``). The sockets belong to the parent, which hands
each worker its slot's socket when it spawns it: a replacement worker then
accepts from the *same* socket as the worker it replaces, so a connection
waiting in that socket's queue is never lost. (Closing one of several
``SO_REUSEPORT`` listeners resets the connections in its own queue unless
``net.ipv4.tcp_migrate_req`` is set, which is why a process never closes a
socket that no other process holds while connections may be queued on it.)
"""

from __future__ import annotations

import array
import errno
import json
import socket
from typing import Any

from core.errors import StartupError

__all__ = ["ensure_free", "listen", "receive_sockets", "send_sockets"]

_MAX_FDS = 256


def _family(host: str, port: int) -> tuple[socket.AddressFamily, Any]:
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, address = infos[0]
    return family, address


def listen(host: str, port: int, *, backlog: int = 1024) -> socket.socket:
    """A TCP socket listening on ``host:port`` with ``SO_REUSEADDR`` and ``SO_REUSEPORT``.

    ``StartupError`` (one line) when the address cannot be bound.
    """
    try:
        family, address = _family(host, port)
    except OSError as exc:
        raise StartupError(f"cannot listen on {host}:{port}: {exc}") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


def ensure_free(host: str, port: int) -> None:
    """Raise ``StartupError`` when another process listens on ``host:port``.

    ``SO_REUSEPORT`` would let a second gateway started by mistake share the
    port silently (and take half the traffic); binding once without it finds
    any listener there, as a plain bind always did. Port 0 is always free.
    """
    if port == 0:
        return
    try:
        family, address = _family(host, port)
    except OSError as exc:
        raise StartupError(f"cannot listen on {host}:{port}: {exc}") from None
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
            raise StartupError(f"cannot listen on {host}:{port}: {reason}") from None


def send_sockets(conn: socket.socket, named: list[tuple[str, socket.socket]]) -> None:
    """Send ``named`` sockets (role, socket) over the Unix socket ``conn`` in one message."""
    header = json.dumps({"roles": [role for role, _ in named]}).encode()
    fds = [sock.fileno() for _, sock in named]
    conn.sendmsg(
        [len(header).to_bytes(4, "big"), header],
        [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))],
    )


def receive_sockets(conn: socket.socket) -> list[tuple[str, socket.socket]]:
    """The sockets :func:`send_sockets` sent on ``conn`` (blocking), as (role, socket)."""
    data, fds, _, _ = socket.recv_fds(conn, 65536, _MAX_FDS)
    if len(data) < 4:
        for fd in fds:
            socket.close(fd)
        raise ConnectionError("the other gateway closed the handover without sending its sockets")
    size = int.from_bytes(data[:4], "big")
    roles = json.loads(data[4 : 4 + size])["roles"]
    if len(roles) != len(fds):
        for fd in fds:
            socket.close(fd)
        raise ConnectionError(f"expected {len(roles)} sockets in the handover, got {len(fds)}")
    return [(str(role), socket.socket(fileno=fd)) for role, fd in zip(roles, fds, strict=True)]
