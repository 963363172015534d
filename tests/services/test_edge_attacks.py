"""Path tricks against the demo system (issue 10), with real processes and the demo's policies.

The launcher runs the gateway with config/gateway.toml's routes (products
written by admins only, ``/{service}/...`` open to any login) and, here,
services that do not verify tokens themselves (``--services-verify-tokens
false``): the gateway's decision is the only one. A user without the admin
role tries to create a product through paths that the route table and the
upstream could read differently; none may create one.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp

from tests.core.proxy.conftest import parse_responses
from tests.services.test_launcher import start_launcher, up

PRODUCT = json.dumps({"name": "Contraband", "price": 1.0, "quantity": 1}).encode()


async def raw_post(port: int, target: bytes, token: str) -> tuple[int, dict[str, str], bytes]:
    """``POST target`` with the product, sent as bytes so that nothing rewrites the target."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            b"POST " + target + b" HTTP/1.1\r\nHost: localhost\r\n"
            b"Authorization: Bearer " + token.encode() + b"\r\n"
            b"Content-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n" % len(PRODUCT) + PRODUCT
        )
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    [answer] = parse_responses(raw)
    return answer


async def test_a_user_without_the_admin_role_creates_no_product_through_path_tricks(
    tmp_path: Path,
) -> None:
    async with start_launcher(
        tmp_path, "--inventory-instances", "1", "--services-verify-tokens", "false"
    ) as launcher:
        await up(launcher)
        gateway = f"http://127.0.0.1:{launcher.ports['gateway']}"
        password = (launcher.run_dir / "alice.password").read_text().strip()
        async with aiohttp.ClientSession() as http:
            body = {"username": "alice", "password": password}
            async with http.post(f"{gateway}/auth/token", json=body) as r:
                assert r.status == 200
                token = (await r.json())["access_token"]

            async def products() -> list[str]:
                async with http.get(f"{gateway}/inventory/products") as r:
                    assert r.status == 200
                    return [p["name"] for p in (await r.json())["products"]]

            before = await products()
            port = launcher.ports["gateway"]
            # The attack of issue 10: the fragment made the route table miss
            # the admin-only route; the upstream dropped it and created the product.
            status, headers, raw = await raw_post(port, b"/inventory/products#", token)
            assert status == 400
            problem = json.loads(raw)
            assert problem["instance"] == "/inventory/products#"
            for target in (
                b"/inventory/products#x",
                b"/inventory/x/..%2fproducts",
                b"/inventory/x/%2e%2E/products",
                b"/inventory/x/../products",
                b"/inventory/products/..;/products",
                b"/inventory%2Fproducts",
            ):
                status, _, _ = await raw_post(port, target, token)
                assert status == 400, target
            # Encodings that mean the same path take the same (admin-only) route.
            for target in (b"//inventory//products", b"/%69nventory/pr%6Fducts"):
                status, headers, _ = await raw_post(port, target, token)
                assert status == 403, target
                assert headers["www-authenticate"].startswith(
                    'Bearer realm="essaim", error="insufficient_scope"'
                )
            assert await products() == before
