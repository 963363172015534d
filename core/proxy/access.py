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
from typing import Any

import orjson

__all__ = ["AccessLog", "parse_mode"]

_FLUSH_AT = 64 * 1024

_dumps = orjson.dumps

# One access-log line in JSON. The %s fields that hold JSON strings get them
# encoded (quoted and escaped) by orjson; the others are trusted bytes
# (timestamps, hex ids, an IP address, a method token) or numbers.
_JSON_LINE = (
    b'{"ts":"%s","level":"info","logger":"essaim.access","msg":"%s %s %d",'
    b'"request_id":%s,"trace_id":"%s","span_id":"%s","client":"%s","method":"%s",'
    b'"path":%s,%s,"status":%d,"upstream_status":%s,'
    b'"retries":%d,"duration_ms":%.3f,"bytes_in":%s,"bytes_out":%d%s}\n'
)


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
        "_parts",
        "_second",
        "_size",
        "_stamp",
        "_where",
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
        # The route, service and instance members of JSON lines, by (route, service, endpoint).
        self._where: dict[tuple[str, str, Any], bytes] = {}

    def record(self, ex: Any, route: str, service: str, duration: float) -> None:
        """Log the finished exchange ``ex`` (sampled as the mode says)."""
        self.seen += 1
        status = ex.status
        if self.every > 1 and status < 400 and self.seen % self.every:
            return
        # The time stamp is made once a millisecond (many requests share one).
        ms = int(time.time() * 1000)
        if ms != self._ms:
            self._ms = ms
            second = ms // 1000
            if second != self._second:
                self._second = second
                self._minute = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)).encode()
            self._stamp = self._minute + b".%03dZ" % (ms % 1000)
        stamp = self._stamp
        endpoint = ex.endpoint
        error = ex.answered_problem
        upstream_status = None if error is not None or status == 499 else status
        head = ex.head
        bytes_in = head.length if head is not None else None
        retries = ex.attempts - 1 if ex.attempts > 1 else 0
        if self.json:
            # One bytes template, not a dict for orjson. What a client or the
            # config chose (path, a client's request id, route, service,
            # instance, error) is escaped by orjson; the rest is trusted bytes
            # (time stamps, hex ids, an IP address, a method token) or numbers.
            where = self._where.get((route, service, endpoint))
            if where is None:
                where = self._where_json(route, service, endpoint)
            path = _dumps(ex.path)
            method = ex.method_name.encode()
            rid = ex.request_id
            line = _JSON_LINE % (
                stamp, method, path[1:-1], status,
                # The gateway's own ids are hex and a dash: nothing to escape.
                b'"' + rid + b'"' if head is not None and head.client_id is None
                else _dumps(rid.decode("latin-1")),
                ex.trace_id, ex.span_id, ex.client.peer, method, path, where, status,
                b"null" if upstream_status is None else b"%d" % upstream_status, retries,
                duration * 1000, b"null" if bytes_in is None else b"%d" % bytes_in,
                ex.bytes_out, b"" if error is None else b',"error":' + _dumps(error),
            )  # fmt: skip
        else:
            instance = f"{endpoint.host}:{endpoint.port}" if endpoint is not None else ""
            line = b'%s INFO    essaim.access: %s "%s %s" %d %dB %.1fms route=%s service=%s instance=%s upstream_status=%s retries=%d in=%s [request %s trace %s]%s\n' % (
                stamp[11:19], ex.client.peer, ex.method_name.encode(),
                ex.path.encode("latin-1", "replace"), status, ex.bytes_out, duration * 1000,
                route.encode(), service.encode(), instance.encode(),
                b"-" if upstream_status is None else b"%d" % upstream_status, retries,
                b"-" if bytes_in is None else b"%d" % bytes_in, ex.request_id, ex.trace_id,
                b"" if error is None else b" error=" + orjson.dumps(error),
            )  # fmt: skip
        self._parts.append(line)
        self._size += len(line)
        if self._size >= _FLUSH_AT:
            self.flush()

    def _where_json(self, route: str, service: str, endpoint: Any) -> bytes:
        """The ``route``, ``service`` and ``instance`` members, kept per route and endpoint."""
        instance = f"{endpoint.host}:{endpoint.port}" if endpoint is not None else ""
        where = b'"route":%s,"service":%s,"instance":%s' % (
            _dumps(route),
            _dumps(service),
            _dumps(instance),
        )
        if len(self._where) >= 4096:
            self._where.clear()
        self._where[(route, service, endpoint)] = where
        return where

    def flush(self) -> None:
        """Write what is buffered, in one write (the sweep and stop call this)."""
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
