"""``core.runner``: serving a listening socket inherited from the parent (``--listen-fd``)."""

from __future__ import annotations

import os
import socket

import pytest

from core.errors import StartupError
from core.runner import inherited_socket


def test_an_inherited_listening_socket_is_served_and_anything_else_is_refused() -> None:
    parent = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    parent.bind(("127.0.0.1", 0))
    parent.listen(8)
    inherited = inherited_socket(os.dup(parent.fileno()))
    assert inherited.getsockname() == parent.getsockname()
    inherited.close()  # this copy only: the parent's still listens
    with socket.create_connection(parent.getsockname(), timeout=2):
        pass
    parent.close()

    read, write = os.pipe()
    with pytest.raises(StartupError, match=f"listen_fd {read}: not an open socket"):
        inherited_socket(read)
    os.close(read)
    os.close(write)
    bound = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    bound.bind(("127.0.0.1", 0))  # bound, not listening
    with pytest.raises(StartupError, match="not a listening TCP socket"):
        inherited_socket(bound.fileno())
    bound.close()
    with pytest.raises(StartupError, match="listen_fd 987: not an open socket"):
        inherited_socket(987)
