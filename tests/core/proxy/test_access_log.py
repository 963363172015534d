"""The gateway's access log (core/proxy/access.py): one line per request, batched, sampled."""

from __future__ import annotations

import datetime
import os
import re
import time
from collections.abc import Iterator

import aiohttp
import orjson
import pytest
from aiohttp import web

from core.proxy.access import AccessLog, parse_mode
from core.testing import wait_until
from tests.core.proxy.conftest import GatewayFactory, Upstreams


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read, write = os.pipe()
    os.set_blocking(read, False)
    yield read, write
    os.close(read)
    os.close(write)


def _drain(fd: int) -> bytes:
    try:
        return os.read(fd, 1 << 20)
    except BlockingIOError:
        return b""


def _app() -> web.Application:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="x" * 100)

    async def boom(request: web.Request) -> web.Response:
        return web.Response(status=500, text="no")

    app = web.Application()
    app.router.add_get("/api/ok", ok)
    app.router.add_get("/api/boom", boom)
    return app


def test_modes_parse() -> None:
    assert (parse_mode("off"), parse_mode("on"), parse_mode("100")) == (0, 1, 100)
    for bad in ("", "yes", "0", "-1", "1.5"):
        with pytest.raises(ValueError, match="expected off, on, or a sample size"):
            parse_mode(bad)


async def test_each_request_is_one_json_line_with_its_ids_and_no_query(
    upstreams: Upstreams, gateway: GatewayFactory, pipe: tuple[int, int]
) -> None:
    up = await upstreams.app(_app())
    gw = await gateway([{"id": "api", "prefix": "/api", "urls": [up.url]}])
    gw.proxy.access = AccessLog(1, json=True, fd=pipe[1])
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    async with aiohttp.ClientSession() as session:
        async with session.get(
            gw.url + "/api/ok?token=secret", headers={
                "X-Request-ID": "req-1", "traceparent": f"00-{trace}-00f067aa0ba902b7-01",
                "Authorization": "Bearer secret-too",
            },
        ) as resp:  # fmt: skip
            body = await resp.read()
        async with session.get(gw.url + "/nowhere") as resp:
            assert resp.status == 404
    out = b""

    def lines() -> list[dict[str, object]]:
        nonlocal out
        out += _drain(pipe[0])  # written by the data plane's sweep, not per request
        return [orjson.loads(line) for line in out.splitlines()]

    await wait_until(lambda: len(lines()) == 2, timeout=5, message="two access lines")
    first, second = lines()
    assert first["logger"] == "essaim.access"
    assert (first["method"], first["path"], first["route"], first["service"]) == (
        "GET", "/api/ok", "api", "route:api",
    )  # fmt: skip
    assert (first["status"], first["upstream_status"], first["retries"]) == (200, 200, 0)
    assert (first["request_id"], first["trace_id"]) == ("req-1", trace)
    assert re.fullmatch(r"[0-9a-f]{16}", str(first["span_id"]))
    assert first["instance"] == f"127.0.0.1:{up.port}"
    assert first["client"] == "127.0.0.1"
    assert first["bytes_out"] > len(body)  # type: ignore[operator]
    assert first["bytes_in"] is None
    assert isinstance(first["duration_ms"], float)
    assert (second["status"], second["route"], second["upstream_status"]) == (
        404,
        "unmatched",
        None,
    )
    assert second["error"] == "no route matches this path"
    assert b"secret" not in out


async def test_a_sample_keeps_one_in_n_and_every_error(
    upstreams: Upstreams, gateway: GatewayFactory, pipe: tuple[int, int]
) -> None:
    up = await upstreams.app(_app())
    gw = await gateway(
        [{"id": "api", "prefix": "/api", "urls": [up.url], "retry": {"attempts": 1}}]
    )
    gw.proxy.access = AccessLog(10, fd=pipe[1])
    async with aiohttp.ClientSession() as session:
        for _ in range(30):
            async with session.get(gw.url + "/api/ok") as resp:
                await resp.read()
        for _ in range(3):
            async with session.get(gw.url + "/api/boom") as resp:
                assert resp.status == 500
    gw.proxy.access.flush()
    text = _drain(pipe[0]).decode()
    lines = text.splitlines()
    assert sum('"GET /api/ok" 200' in line for line in lines) == 3
    assert sum('"GET /api/boom" 500' in line for line in lines) == 3
    assert all(" INFO    essaim.access: 127.0.0.1 " in line for line in lines)
    assert all("upstream_status=500" in line for line in lines if "/api/boom" in line)


class _Endpoint:
    """Like core.upstream.upstream.Endpoint: an address, hashed by identity."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port


def test_json_lines_escape_what_clients_and_config_choose(pipe: tuple[int, int]) -> None:
    """A path, request id, route or error with quotes, backslashes, control or non-ASCII
    characters still makes one valid JSON line holding them as they were."""
    from types import SimpleNamespace

    log = AccessLog(1, json=True, fd=pipe[1])
    path = '/a"b\\c\x01\x85é'
    ex = SimpleNamespace(
        status=502, endpoint=_Endpoint('h"1', 80), answered_problem='bad "x"\n',
        head=SimpleNamespace(length=7, client_id=b'r"1\\'), attempts=3, method=b"GET", path=path,
        t0=time.perf_counter(),
        request_id=b'r"1\\', trace_id=b"0" * 32, span_id=b"1" * 16,
        client=SimpleNamespace(peer=b"::1"), bytes_out=10,
    )  # fmt: skip
    log.record(ex, 'ro"ute', "svc\\", 0.0125)
    log.flush()
    (line,) = _drain(pipe[0]).splitlines()
    doc = orjson.loads(line)
    assert doc["path"] == path
    assert doc["msg"] == f"GET {path} 502"
    assert (doc["request_id"], doc["route"], doc["service"]) == ('r"1\\', 'ro"ute', "svc\\")
    assert (doc["instance"], doc["error"]) == ('h"1:80', 'bad "x"\n')
    assert (doc["status"], doc["upstream_status"], doc["retries"], doc["bytes_in"]) == (
        502, None, 2, 7,
    )  # fmt: skip
    assert doc["duration_ms"] == 12.5
    assert doc["client"] == "::1"
    # The gateway's own request ids (hex and a dash) go in as they are.
    ex.head, ex.request_id, ex.answered_problem = (
        SimpleNamespace(length=None, client_id=None),
        b"3f9a-1a",
        None,
    )
    log.record(ex, "r", "s", 0.001)
    log.flush()
    (line,) = _drain(pipe[0]).splitlines()
    doc = orjson.loads(line)
    assert (doc["request_id"], doc["upstream_status"], doc["bytes_in"]) == ("3f9a-1a", 502, None)
    # The same route, endpoint and outcome share their members; another status has its own.
    ex.status, ex.bytes_out = 200, 4096
    log.record(ex, "r", "s", 0.000_25)
    log.flush()
    (line,) = _drain(pipe[0]).splitlines()
    doc = orjson.loads(line)
    assert (doc["status"], doc["upstream_status"], doc["route"], doc["retries"]) == (
        200,
        200,
        "r",
        2,
    )
    assert (doc["bytes_out"], doc["duration_ms"]) == (4096, 0.25)


def test_the_time_stamp_is_when_the_request_finished_on_the_wall_clock(
    pipe: tuple[int, int],
) -> None:
    """``ts`` is the exchange's end (its perf_counter start plus its duration) in UTC."""
    from types import SimpleNamespace

    log = AccessLog(1, json=True, fd=pipe[1])
    ex = SimpleNamespace(
        status=200, endpoint=None, answered_problem=None, head=None, attempts=1, method=b"GET",
        path="/", request_id=b"1-1", trace_id=b"0" * 32, span_id=b"1" * 16,
        client=SimpleNamespace(peer=b"127.0.0.1"), bytes_out=0, t0=time.perf_counter() - 2.5,
    )  # fmt: skip
    log.record(ex, "r", "s", 0.5)  # finished 2 s ago
    log.flush()
    doc = orjson.loads(_drain(pipe[0]))
    stamp = datetime.datetime.strptime(doc["ts"], "%Y-%m-%dT%H:%M:%S.%fZ")
    ago = time.time() - stamp.replace(tzinfo=datetime.UTC).timestamp()
    assert 1.9 < ago < 2.5
