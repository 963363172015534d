"""Bad tokens over HTTP: 401 with a full challenge at the gateway and at a service (issue 10).

The token headers and claims are those of
:mod:`tests.core.security.test_token_fuzz`; here each goes, as a real
request on loopback, to a proxy whose route needs a login and to a service
app with the middlewares the scaffold installs, with a bounded number of
examples.
"""

from __future__ import annotations

import asyncio
import http.client
import logging
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web
from hypothesis import given, settings

from core.errors import problem_middleware
from core.security.access import Policy, access_middleware
from tests.core.proxy.conftest import GatewayFactory, Upstreams
from tests.core.security.test_token_fuzz import claims, headers, sign, verifier, well_formed


def http_get(port: int, path: str, token: str) -> tuple[int, str]:
    """A blocking GET (from the fuzzing thread) with the token; (status, WWW-Authenticate)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}", "Host": "h"})
        resp = conn.getresponse()
        resp.read()
        return resp.status, resp.headers.get("WWW-Authenticate", "")
    finally:
        conn.close()


def fuzz_over_http(ports: list[int], records: Callable[[], int]) -> None:
    """Send malformed tokens to each port: 401, a full challenge, one log line at most each."""

    @settings(max_examples=40, deadline=None, database=None)
    @given(headers(), claims())
    def one(header: Any, body: Any) -> None:
        if well_formed(header, body):
            return  # may well be valid: not what this test is about
        for port in ports:
            before = records()
            status, challenge = http_get(port, "/x", sign(header, body))
            assert status == 401
            assert challenge.startswith('Bearer realm="essaim", error="invalid_token"')
            assert records() - before <= 1

    one()


async def test_bad_tokens_are_401_at_the_gateway_and_at_a_service_with_one_log_line_at_most(
    upstreams: Upstreams,
    gateway: GatewayFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def ok(request: web.Request) -> web.Response:
        return web.json_response({})

    # A service as the scaffold builds one: problem details, then the access check.
    service = web.Application(
        middlewares=[
            problem_middleware,
            access_middleware(verifier(), lambda request: Policy.parse("authenticated")),
        ]
    )
    service.router.add_get("/x", ok)
    up = await upstreams.app(service)
    gw = await gateway([{"id": "m", "prefix": "/", "urls": [up.url], "auth": "authenticated"}])
    gw.router.verifier = verifier()
    gw.install([{"id": "m", "prefix": "/", "urls": [up.url], "auth": "authenticated"}])
    caplog.set_level(logging.INFO)
    await asyncio.to_thread(fuzz_over_http, [gw.port, up.port], lambda: len(caplog.records))
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
