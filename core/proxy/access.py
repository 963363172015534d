"""The gateway's access log: one line per request, written in batches off the request path.

A ``logging`` call per request (a record, a formatter, a locked write)
would cost the gateway more than a quarter of what proxying a small request
costs. :class:`AccessLog` formats a line with bytes formatting (or orjson
for JSON), keeps it in a buffer, and writes the buffer to stderr in one
``write`` when it passes 64 KiB or when the data plane's sweep comes by
(every 50 ms), and at stop.

Modes (``--access-log``): ``off`` (the default), ``on`` (every request), or
``N`` for a sample: one request in N, plus every answer of 400 or more.

Fields, the same in both formats (JSON: one object a line, with the
``ts``, ``level`` and ``logger`` of every Essaim log line): ``request_id``,
``trace_id``, ``span_id``, ``client``, ``method``, ``path`` (never the query:
it may hold secrets), ``route``, ``service``, ``instance`` (the upstream
endpoint, empty when none was tried), ``status`` (what the client got),
``upstream_status`` (what the upstream answered; null when the gateway
answered itself), ``retries``, ``duration_ms``, ``bytes_in`` (the request's
``Content-Length``; null when chunked), ``bytes_out`` (what the client was
sent), and ``error`` (why, when the gateway answered with a problem).
"""

from __future__ import annotations

import os
import time
from time import perf_counter
from typing import Any

import orjson

__all__ = ["AccessLog", "parse_mode"]

_FLUSH_AT = 64 * 1024

_dumps = orjson.dumps

# One access-log line in JSON: what changes with every request, then the
# members that requests of one route, endpoint and outcome share (the tail,
# kept). Strings a client or the config chose are escaped by orjson; the rest
# are trusted bytes (time stamps, hex ids, an IP address, a method token) or
# numbers. Each %s or %d costs the formatter about 40 ns, which is why the
# tail is made once and the duration is two integers (microseconds).
_JSON_LINE = (
    b'{"ts":"%s","level":"info","logger":"essaim.access","msg":"%s %s %d",'
    b'"request_id":"%s","trace_id":"%s","span_id":"%s","client":"%s","method":"%s",'
    b'"path":"%s","duration_ms":%d.%03d,"bytes_in":%s,"bytes_out":%d,%s}\n'
)
_JSON_TAIL = b'%s,"status":%d,"upstream_status":%s,"retries":%d%s'


def parse_mode(text: str) -> int:
    """``off`` -> 0, ``on`` -> 1, ``N`` -> N (one in N, and every error); ``ValueError`` else."""
    if text == "off":
        return 0
    if text == "on":
        return 1
    if text.isdigit() and 1 <= int(text) <= 1_000_000:
        return int(text)
    raise ValueError(f"expected off, on, or a sample size N (1 in N), got {text!r}")


class AccessLog:
    """Access-log lines in a buffer, written to ``fd`` in batches (see the module doc)."""

    __slots__ = (
        "_minute",
        "_ms",
        "_offset",
        "_parts",
        "_second",
        "_size",
        "_stamp",
        "_tails",
        "every",
        "fd",
        "json",
        "seen",
        "written",
    )

    def __init__(self, every: int, *, json: bool = False, fd: int = 2) -> None:
        self.every = every
        self.json = json
        self.fd = fd
        self.seen = 0
        self.written = 0
        self._parts: list[bytes] = []
        self._size = 0
        self._second = -1
        self._minute = b""
        self._ms = -1
        self._stamp = b""
        # The shared tails of JSON lines, by route, service, endpoint, status, error, attempts.
        self._tails: dict[tuple[str, str, Any, int, str | None, int], bytes] = {}
        # The wall clock less perf_counter's (the exchanges'), set again at each flush.
        self._offset = time.time() - perf_counter()

    def record(self, ex: Any, route: str, service: str, duration: float) -> None:
        """Log the finished exchange ``ex`` (sampled as the mode says).

        ``ex.t0 + duration`` is when it finished, on ``perf_counter``'s clock.
        """
        self.seen += 1
        status = ex.status
        if self.every > 1 and status < 400 and self.seen % self.every:
            return
        # The time stamp, from the exchange's clock and an offset to the wall
        # clock set at each flush, is made once a millisecond.
        ms = int((ex.t0 + duration + self._offset) * 1000)
        if ms != self._ms:
            self._restamp(ms)
        head = ex.head
        error = ex.answered_problem
        bytes_in = head.length if head is not None else None
        us = int(duration * 1_000_000)
        if self.json:
            key = (route, service, ex.endpoint, status, error, ex.attempts)
            tail = self._tails.get(key)
            if tail is None:
                tail = self._tail_json(key)
            path = _dumps(ex.path)[1:-1]
            method = ex.method
            rid = ex.request_id
            line = _JSON_LINE % (
                self._stamp, method, path, status,
                # The gateway's own ids are hex and a dash: nothing to escape.
                rid if head is not None and head.client_id is None
                else _dumps(rid.decode("latin-1"))[1:-1],
                ex.trace_id, ex.span_id, ex.client.peer, method, path, us // 1000, us % 1000,
                b"null" if bytes_in is None else b"%d" % bytes_in, ex.bytes_out, tail,
            )  # fmt: skip
        else:
            endpoint = ex.endpoint
            attempts = ex.attempts
            instance = f"{endpoint.host}:{endpoint.port}" if endpoint is not None else ""
            upstream_status = None if error is not None or status == 499 else status
            line = b'%s INFO    essaim.access: %s "%s %s" %d %dB %d.%01dms route=%s service=%s instance=%s upstream_status=%s retries=%d in=%s [request %s trace %s]%s\n' % (
                self._stamp[11:19], ex.client.peer, ex.method,
                ex.path.encode("latin-1", "replace"), status, ex.bytes_out, us // 1000,
                us % 1000 // 100, route.encode(), service.encode(), instance.encode(),
                b"-" if upstream_status is None else b"%d" % upstream_status,
                attempts - 1 if attempts > 1 else 0,
                b"-" if bytes_in is None else b"%d" % bytes_in, ex.request_id, ex.trace_id,
                b"" if error is None else b" error=" + orjson.dumps(error),
            )  # fmt: skip
        self._parts.append(line)
        self._size += len(line)
        if self._size >= _FLUSH_AT:
            self.flush()

    def _restamp(self, ms: int) -> None:
        """The time stamp of lines written in the millisecond ``ms`` (since the epoch)."""
        self._ms = ms
        second = ms // 1000
        if second != self._second:
            self._second = second
            self._minute = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)).encode()
        self._stamp = self._minute + b".%03dZ" % (ms % 1000)

    def _tail_json(self, key: tuple[str, str, Any, int, str | None, int]) -> bytes:
        """The members after ``bytes_out`` that requests with this ``key`` share, kept."""
        route, service, endpoint, status, error, attempts = key
        instance = f"{endpoint.host}:{endpoint.port}" if endpoint is not None else ""
        tail = _JSON_TAIL % (
            b'"route":%s,"service":%s,"instance":%s'
            % (_dumps(route), _dumps(service), _dumps(instance)),
            status,
            b"null" if error is not None or status == 499 else b"%d" % status,
            attempts - 1 if attempts > 1 else 0,
            b"" if error is None else b',"error":' + _dumps(error),
        )
        if len(self._tails) >= 4096:
            self._tails.clear()
        self._tails[key] = tail
        return tail

    def flush(self) -> None:
        """Write what is buffered, in one write (the sweep and stop call this)."""
        self._offset = time.time() - perf_counter()
        if not self._parts:
            return
        data = b"".join(self._parts)
        self._parts.clear()
        self._size = 0
        self.written += len(data)
        view = memoryview(data)
        while view:
            try:
                done = os.write(self.fd, view)
            except OSError:
                return  # stderr is gone or full: the lines are dropped, never waited for
            view = view[done:]
