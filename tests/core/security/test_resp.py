from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from core.redis import connect
from core.security.resp import RespClient, RespError, Script, encode, parse
from core.testing import RedisServer


def test_encode_and_parse() -> None:
    assert encode(("SET", "k", b"v", 3, 0.5)) == (
        b"*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n$1\r\n3\r\n$3\r\n0.5\r\n"
    )
    reply = b"*4\r\n:1\r\n$3\r\nabc\r\n$-1\r\n*1\r\n+OK\r\n-ERR no\r\n"
    value, pos = parse(reply, 0)
    assert value == [1, b"abc", None, ["OK"]]
    error, end = parse(reply, pos)
    assert isinstance(error, RespError)
    assert str(error) == "ERR no"
    assert end == len(reply)


async def test_concurrent_calls_share_one_connection_in_order(redis_url: str) -> None:
    client = RespClient(redis_url)
    try:
        replies = await asyncio.gather(*(client.call("INCR", "n") for _ in range(200)))
        assert replies == list(range(1, 201))
        assert client.connections == 1
        with pytest.raises(RespError, match="wrong number of arguments"):
            await client.call("GET")
        assert await client.call("GET", "n") == b"200"  # still in step after an error
    finally:
        await client.close()


async def test_a_caller_that_gives_up_does_not_shift_the_replies(redis_url: str) -> None:
    client = RespClient(redis_url)
    try:
        await client.call("SET", "a", "1")
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0):  # gives up as soon as the command is sent
                await client.call("BLPOP", "nothing", "0.1")
        assert await client.call("GET", "a") == b"1"
        assert await client.call("PING") == "PONG"
    finally:
        await client.close()


async def test_database_and_password_from_the_url(
    redis_factory: Callable[..., RedisServer],
) -> None:
    server = redis_factory()
    admin = connect(server.url)
    await admin.config_set("requirepass", "s3cret")
    await admin.aclose()
    url = f"redis://:s3cret@127.0.0.1:{server.port}/3"
    client = RespClient(url)
    try:
        await client.call("SET", "where", "db3")
        check = connect(url)
        assert await check.get("where") == "db3"
        await check.aclose()
    finally:
        await client.close()
    refused = RespClient(f"redis://:wrong@127.0.0.1:{server.port}/0")
    with pytest.raises(ConnectionError, match="refused the connection setup"):
        await refused.call("PING")
    anonymous = RespClient(f"redis://127.0.0.1:{server.port}/0")
    try:
        with pytest.raises(RespError, match="NOAUTH"):
            await anonymous.call("PING")
    finally:
        await anonymous.close()
    with pytest.raises(ValueError, match="redis://"):
        RespClient("rediss://127.0.0.1:6380/0")


async def test_script_survives_a_server_restart(redis_factory: Callable[..., RedisServer]) -> None:
    server = redis_factory()
    client = RespClient(server.url, connect_timeout=0.5)
    script = Script("return tonumber(ARGV[1]) + 1")
    try:
        assert await client.run_script(script, [], [41]) == 42
        server.kill()
        with pytest.raises(ConnectionError):
            await client.run_script(script, [], [1])
        server.start()  # empty: the script is gone
        assert await client.run_script(script, [], [1]) == 2
        assert client.connections == 2
    finally:
        await client.close()
