"""bench/openloop.c, the constant-rate generator of ``python -m bench gateway``, against a real server."""

from __future__ import annotations

import asyncio

import orjson
from aiohttp import web

from bench import _openloop


async def _run(url_port: int, *args: str) -> dict[str, object]:
    path, why = _openloop.binary()
    assert path is not None, why
    proc = await asyncio.create_subprocess_exec(
        path, "127.0.0.1", str(url_port), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    return dict(orjson.loads(out))


async def _server(handler, aiohttp_server):  # type: ignore[no-untyped-def]
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return await aiohttp_server(app)


async def test_it_sends_at_its_rate_a_new_path_each_time_and_times_the_answers(
    aiohttp_server,  # type: ignore[no-untyped-def]
) -> None:
    seen: list[str] = []
    headers: list[str | None] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append(request.path_qs)
        headers.append(request.headers.get("X-Bench"))
        return web.Response(body=b"x" * 1024)

    server = await _server(answer, aiohttp_server)
    result = await _run(server.port, "/item", "400", "1", "4", "--header", "X-Bench: yes")
    # 400 a second for a second: the schedule's 400 sends, each answered.
    assert 390 <= result["requests"] <= 400
    assert result["errors"] == 0
    assert result["target_rps"] == 400
    assert 0 < result["p50_ms"] <= result["p99_ms"]
    assert result["late_p99_ms"] >= 0
    assert result["generator"] == "openloop"
    assert len(seen) == result["requests"]
    assert seen[:3] == ["/item/1?n=1", "/item/2?n=2", "/item/3?n=3"]
    assert len(set(seen)) == len(seen)
    assert set(headers) == {"yes"}


async def test_same_repeats_one_request(aiohttp_server) -> None:  # type: ignore[no-untyped-def]
    seen: set[str] = set()

    async def answer(request: web.Request) -> web.Response:
        seen.add(request.path_qs)
        return web.Response(text="ok")

    server = await _server(answer, aiohttp_server)
    result = await _run(server.port, "/one", "200", "0.5", "2", "--same")
    assert result["errors"] == 0
    assert result["requests"] > 50
    assert seen == {"/one"}


async def test_answers_that_are_not_2xx_or_3xx_are_errors(aiohttp_server) -> None:  # type: ignore[no-untyped-def]
    async def answer(request: web.Request) -> web.Response:
        return web.Response(status=503, text="busy")

    server = await _server(answer, aiohttp_server)
    result = await _run(server.port, "/x", "200", "0.5", "2")
    assert result["requests"] > 50
    assert result["errors"] == result["requests"]


async def test_requests_never_answered_are_errors() -> None:
    """A server that reads a request and closes: every write it took counts as an error."""

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        result = await _run(port, "/x", "100", "0.5", "3")
    finally:
        server.close()
    assert result["requests"] == 0
    assert result["errors"] == 3  # one write per connection, then each was lost


async def test_no_server_is_exit_status_1() -> None:
    path, _ = _openloop.binary()
    assert path is not None
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    proc = await asyncio.create_subprocess_exec(
        path, "127.0.0.1", str(port), "/", "10", "1", "1", stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    assert proc.returncode == 1
    assert b"cannot connect" in err
