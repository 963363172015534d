"""Heads as bytes: request header scan, response block filter, problem responses, ids."""

from __future__ import annotations

import re

import orjson

from core.errors import ServiceUnavailable
from core.proxy.wire import (
    RequestIds,
    chunk,
    connection_tokens,
    header_pattern,
    problem_response,
    scan_request,
    scan_response,
)


def test_scan_request_keeps_end_to_end_headers_and_reads_the_special_ones() -> None:
    headers = [
        (b"Host", b"shop.example"),
        (b"User-Agent", b"curl/8"),
        (b"X-Forwarded-For", b"10.0.0.1"),
        (b"x-forwarded-for", b"10.0.0.2"),
        (b"X-Request-ID", b"abc"),
        (b"Content-Length", b"12"),
        (b"Connection", b"keep-alive"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Via", b"1.0 a"),
        (b"X-Forwarded-Proto", b"https"),
        (b"Expect", b"100-continue"),
    ]
    lines, host, length, chunked, xff, rid, expect, connection, via, _ = scan_request(headers)
    assert lines == [b"User-Agent: curl/8\r\n"]
    assert (host, length, chunked) == (b"shop.example", b"12", False)
    assert xff == b"10.0.0.1, 10.0.0.2"
    assert (rid, expect, connection, via) == (b"abc", b"100-continue", b"keep-alive", b"1.0 a")


def test_scan_request_drops_named_headers_and_sees_chunked() -> None:
    headers = [(b"X-Secret", b"s"), (b"X-Kept", b"k"), (b"Transfer-Encoding", b"gzip, Chunked")]
    lines, *_rest = scan_request(headers, frozenset({b"x-secret"}))
    assert lines == [b"X-Kept: k\r\n"]
    assert scan_request(headers)[3] is True


def test_connection_tokens_are_the_listed_header_names() -> None:
    assert connection_tokens(b"keep-alive") == frozenset()
    assert connection_tokens(b"Close, X-Foo ,x-bar,,Upgrade") == {b"x-foo", b"x-bar"}


BLOCK = (
    b"\r\nServer: nginx\r\nContent-Length: 1024\r\nConnection: keep-alive, X-Hop\r\n"
    b"X-Hop: 1\r\nKeep-Alive: timeout=5\r\nX-Request-ID: up\r\nVia: 1.0 a\r\n"
    b'Transfer-Encoding: chunked\r\nETag: "e"\r\n'
)


def test_scan_response_filters_the_raw_block() -> None:
    kept, length, chunked, upgrade, via = scan_response(BLOCK)
    assert kept == b'\r\nServer: nginx\r\nContent-Length: 1024\r\nETag: "e"\r\n'
    assert length == b"1024"
    assert chunked is True
    assert upgrade == b""
    assert via == b"1.0 a"


def test_scan_response_drops_a_routes_headers_in_any_case() -> None:
    kept, *_ = scan_response(
        b"\r\nServer: x\r\nSERVER-TIMING: 1\r\nX-A: a\r\n",
        header_pattern(frozenset({b"server", b"server-timing"})),
    )
    assert kept == b"\r\nX-A: a\r\n"


def test_scan_response_reads_the_upgrade_protocol() -> None:
    kept, _, _, upgrade, _ = scan_response(b"\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\n")
    assert kept == b"\r\n"
    assert upgrade == b"WebSocket"


def test_problem_response_is_rfc9457_with_request_id_and_headers() -> None:
    raw = problem_response(
        ServiceUnavailable("no instance", headers={"Retry-After": "3"}),
        instance="/billing/x",
        request_id=b"rid-1",
        date=b"Wed, 25 Nov 2026 19:44:23 GMT",
        close=True,
    )
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"\r\ncontent-type: application/problem+json" in head
    assert b"\r\nRetry-After: 3" in head
    assert b"\r\nconnection: close" in head
    assert int(re.search(rb"content-length: (\d+)", head).group(1)) == len(body)
    assert orjson.loads(body) == {
        "type": "about:blank",
        "title": "Service Unavailable",
        "status": 503,
        "detail": "no instance",
        "instance": "/billing/x",
        "request_id": "rid-1",
    }
    head_only = problem_response(
        ServiceUnavailable(), instance="/", request_id=b"r", date=b"d", close=False, head_only=True
    )
    assert head_only.endswith(b"\r\n\r\n")


def test_request_ids_keep_a_usable_one_and_make_unique_ones() -> None:
    ids = RequestIds()
    assert ids.keep_or_new(b"abc-123") == b"abc-123"
    made = {ids.keep_or_new(bad) for bad in (None, b"", b"has space", b"x" * 201, "é".encode())}
    assert len(made) == 5
    assert all(re.fullmatch(rb"[0-9a-f]{12}-[0-9a-f]+", m) for m in made)
    assert RequestIds().new()[:12] != ids.new()[:12]


def test_chunk_frames_data() -> None:
    assert chunk(b"hello") == b"5\r\nhello\r\n"
    assert chunk(b"x" * 26) == b"1a\r\n" + b"x" * 26 + b"\r\n"
