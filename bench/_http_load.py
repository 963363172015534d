"""A small HTTP/1.1 load generator and a minimal upstream, for benchmarks on loopback.

``python -m bench._http_load load --url URL --connections N --duration S [--rate R]``
prints one JSON object: ``requests``, ``errors``, ``duration``, ``rps``,
``p50_ms``, ``p99_ms``, ``p999_ms``, ``max_ms`` and, with ``--rate``, how
far the sends fell behind the schedule.

- Without ``--rate`` it is a closed loop like wrk: N keep-alive connections,
  each sending its next request as soon as the last answer is complete. It is
  the fallback when wrk is not installed; being Python, it saturates sooner
  than wrk, so its figures are reported as coming from it.
- With ``--rate R`` it is an open loop at a constant rate: request i is due
  at ``i / R`` seconds and goes out on the first idle connection at the next
  timer tick (1 to 2 ms: shorter timers would spin the loop and take a core
  from the process under test); with no idle connection it waits for one. Latency
  runs from the moment the request is written to the end of the answer;
  ``late_p99_ms`` is how late sends were against the schedule (wrk2 would add
  that lateness to the latency; here it is reported beside it).

``python -m bench._http_load serve PORT [PORT...]`` is the upstream used when
nginx is not installed: one asyncio process answering every request head with
a 1 KiB body, keep-alive, on each port. It supports requests without a body
only (the benchmarks send GETs).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import cast
from urllib.parse import urlsplit

import orjson

TICK = 0.001
"""Seconds between the constant-rate sender's wake-ups (at most)."""

BODY = b"x" * 1024
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
    b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY
)


# ----------------------------------------------------------------------------- the upstream


class _Answer(asyncio.Protocol):
    """Answers each complete request head with :data:`RESPONSE`."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.pending = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        data = self.pending + data
        heads = data.count(b"\r\n\r\n")
        self.pending = data[data.rfind(b"\r\n\r\n") + 4 :] if heads else data
        if heads and self.transport is not None:
            self.transport.write(RESPONSE * heads)


async def serve(ports: list[int]) -> None:
    loop = asyncio.get_running_loop()
    servers = [await loop.create_server(_Answer, "127.0.0.1", port, backlog=1024) for port in ports]
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for server in servers:
        server.close()


# ----------------------------------------------------------------------------- the client


class _Client(asyncio.Protocol):
    """One keep-alive connection; reads responses with Content-Length or chunked bodies."""

    def __init__(self, request: Callable[[], bytes], done: Callable[[_Client, bool], None]) -> None:
        self.request = request
        self.done = done
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.sent_at = 0.0
        self.connected: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.connected.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.sent_at:
            self.sent_at = 0.0
            self.done(self, False)

    def send(self) -> None:
        assert self.transport is not None
        self.sent_at = time.perf_counter()
        self.transport.write(self.request())

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.sent_at:
            end = _response_end(self.buffer)
            if end is None:
                return
            status_ok = bytes(self.buffer[9:10]) in (b"2", b"3")
            del self.buffer[:end]
            self.done(self, status_ok)


def _response_end(buf: bytearray) -> int | None:
    """Where the first complete response in ``buf`` ends, or None if it is not complete."""
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    head = bytes(buf[:head_end]).lower()
    start = head_end + 4
    i = head.find(b"\r\ncontent-length:")
    if i >= 0:
        j = head.find(b"\r\n", i + 2)
        length = int(head[i + 17 : j if j >= 0 else len(head)])
        return start + length if len(buf) >= start + length else None
    if b"\r\ntransfer-encoding: chunked" in head:
        pos = start
        while True:
            line_end = buf.find(b"\r\n", pos)
            if line_end < 0:
                return None
            size = int(bytes(buf[pos:line_end]).split(b";")[0], 16)
            pos = line_end + 2 + size + 2
            if len(buf) < pos:
                return None
            if size == 0:
                return pos
    return start


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q / 100 * len(sorted_values)))]


async def load(
    url: str,
    connections: int,
    duration: float,
    rate: float | None,
    *,
    vary: bool = True,
    headers: tuple[str, ...] = (),
) -> dict[str, object]:
    """Load ``url``; with ``vary`` every request has a new path and query (``/1?n=1``, ``/2?n=2``...).

    Varied requests are what most traffic looks like: a proxy can't reuse
    anything it prepared for the previous request of the connection.
    """
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path or "/"
    extra = "".join(f"{h}\r\n" for h in headers)
    head = f"HTTP/1.1\r\nHost: {parts.netloc}\r\n{extra}\r\n".encode()
    same = f"GET {path} ".encode() + head
    counter = itertools.count(1)
    prefix = f"GET {path}/".encode()

    def request() -> bytes:
        if not vary:
            return same
        n = str(next(counter)).encode()
        return prefix + n + b"?n=" + n + b" " + head

    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    lateness: list[float] = []
    errors = 0
    idle: deque[_Client] = deque()
    backlog: deque[float] = deque()
    queued = 0
    running = True
    closed_loop = rate is None

    def done(conn: _Client, ok: bool) -> None:
        nonlocal errors
        now = time.perf_counter()
        latencies.append(now - conn.sent_at)
        conn.sent_at = 0.0
        if not ok:
            errors += 1
        if not running or conn.lost:
            return
        if closed_loop:
            conn.send()
        elif backlog:
            lateness.append(now - backlog.popleft())
            conn.send()
        else:
            idle.append(conn)

    clients = []
    for _ in range(connections):
        _, client = await loop.create_connection(
            lambda: _Client(request, done),
            host,
            port,
        )
        clients.append(client)
    start = time.perf_counter()
    end = start + duration
    if closed_loop:
        for client in clients:
            client.send()
        await asyncio.sleep(duration)
    else:
        assert rate is not None
        idle.extend(clients)
        sent = 0
        while True:
            now = time.perf_counter()
            if now >= end:
                break
            due = int((now - start) * rate)
            while sent < due:
                intended = start + sent / rate
                if idle:
                    lateness.append(now - intended)
                    idle.popleft().send()
                else:
                    backlog.append(intended)
                    queued += 1
                sent += 1
            # Never less than a tick: shorter timers round to 0 ms in libuv and
            # the loop would spin, taking a core from the process under test.
            await asyncio.sleep(max(TICK, start + (sent + 1) / rate - time.perf_counter()))
    running = False
    elapsed = time.perf_counter() - start
    for client in clients:
        if client.transport is not None:
            client.transport.close()
    latencies.sort()
    lateness.sort()
    result: dict[str, object] = {
        "requests": len(latencies),
        "errors": errors,
        "duration": round(elapsed, 3),
        "rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(_percentile(latencies, 50) * 1000, 4),
        "p99_ms": round(_percentile(latencies, 99) * 1000, 4),
        "p999_ms": round(_percentile(latencies, 99.9) * 1000, 4),
        "max_ms": round(latencies[-1] * 1000, 4) if latencies else 0.0,
    }
    if rate is not None:
        result.update(
            target_rps=rate,
            late_p99_ms=round(_percentile(lateness, 99) * 1000, 4),
            queued_for_a_connection=queued,
        )
    return result


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when installed, else asyncio's default."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._http_load")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("load", help="send load and print JSON figures")
    run.add_argument("--url", required=True)
    run.add_argument("--connections", type=int, default=32)
    run.add_argument("--duration", type=float, default=10.0)
    run.add_argument("--rate", type=float, default=None, help="requests/s (open loop)")
    run.add_argument(
        "--same-request", action="store_true", help="repeat one request instead of varying it"
    )
    run.add_argument("--header", action="append", default=[], help="'Name: value', repeatable")
    up = sub.add_parser("serve", help="answer 1 KiB on each port until SIGTERM")
    up.add_argument("ports", type=int, nargs="+")
    args = parser.parse_args(argv)
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        if args.command == "serve":
            runner.run(serve(args.ports))
            return 0
        result = runner.run(
            load(
                args.url,
                args.connections,
                args.duration,
                args.rate,
                vary=not args.same_request,
                headers=tuple(args.header),
            )
        )
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
