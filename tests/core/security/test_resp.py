from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from core.redis import connect
from core.security.resp import RespClient, RespError, Script, encode, parse
from core.testing import RedisServer, free_port, redis_binary, wait_until


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
        RespClient("unix:///tmp/redis.sock")


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


def _certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate it signed for 127.0.0.1: ``(ca, cert, key)`` files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "essaim test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


async def test_rediss_urls_speak_tls_verified_against_the_given_ca(tmp_path: Path) -> None:
    ca, cert, key = _certificates(tmp_path)
    port = free_port()
    log_file = (tmp_path / "server.log").open("wb")
    server = subprocess.Popen(
        [redis_binary(), "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca),
         "--tls-auth-clients", "no", "--requirepass", "s3cret", "--save", "", "--dir",
         str(tmp_path)],
        stdout=log_file, stderr=subprocess.STDOUT,
    )  # fmt: skip
    log_file.close()  # the server has its own copy of the descriptor
    try:
        server.wait(0.5)
    except subprocess.TimeoutExpired:
        pass  # running
    else:
        log = (tmp_path / "server.log").read_text(errors="replace")
        if "TLS" in log or "tls" in log:
            pytest.skip(f"{redis_binary()} was built without TLS support: {log.strip()[-200:]}")
    url = f"rediss://:s3cret@127.0.0.1:{port}/0?ssl_ca_certs={ca}"
    client = RespClient(url, connect_timeout=1.0)
    try:
        assert await wait_until(lambda: client.call("PING"), 10, message="TLS Redis up") == "PONG"
        # redis-py, for every other component, takes the same URL.
        other = connect(url)
        try:
            assert await other.ping() is True
        finally:
            await other.aclose()
        # A server certificate no trusted CA signed is refused.
        untrusted = RespClient(f"rediss://:s3cret@127.0.0.1:{port}/0", connect_timeout=1.0)
        with pytest.raises((OSError, ConnectionError)):
            await untrusted.call("PING")
        await untrusted.close()
    finally:
        await client.close()
        server.terminate()
        server.wait(10)
