"""core.runner.free_port: ports for processes to bind, out of the way of outgoing connections."""

from __future__ import annotations

import socket

from core.runner import LOWEST_PORT, _outgoing_range, free_port


def test_a_free_port_is_below_the_range_of_outgoing_connections_and_binds() -> None:
    low, _ = _outgoing_range()
    port = free_port()
    assert LOWEST_PORT <= port < low
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()


def test_no_port_is_handed_out_twice_by_one_process() -> None:
    given = [free_port() for _ in range(300)]
    assert len(set(given)) == 300
