"""The demo data the launcher creates through the gateway: a few customers and products.

It logs in as the demo admin first: through the gateway, reading customers
needs a token and creating products the admin role.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

CUSTOMERS = (
    {"name": "Ada Lovelace", "email": "ada@example.com"},
    {"name": "Alan Turing", "email": "alan@example.com"},
    {"name": "Grace Hopper", "email": "grace@example.com"},
)
PRODUCTS = (
    {"name": "Keyboard", "price": 49.9, "quantity": 20},
    {"name": "Mouse", "price": 19.9, "quantity": 50},
    {"name": "Monitor", "price": 199, "quantity": 7},
)


async def _call(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    deadline: float,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> Any:
    """One call, tried again while the service isn't routable yet (502/503/504)."""
    while True:
        try:
            async with session.request(
                method, url, json=body, headers=headers, timeout=aiohttp.ClientTimeout(total=5)
            ) as response:
                if response.status < 300:
                    return await response.json()
                if response.status not in (502, 503, 504) or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{method} {url}: {response.status} {(await response.text())[:300]}"
                    )
        except (aiohttp.ClientError, TimeoutError) as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{method} {url}: {exc}") from None
        await asyncio.sleep(0.1)


async def login(
    session: aiohttp.ClientSession, auth: str, username: str, password: str, timeout: float
) -> str:
    """An access token from the auth service at ``auth`` (``RuntimeError`` when refused)."""
    body = {"username": username, "password": password}
    answer = await _call(session, "POST", auth + "/token", time.monotonic() + timeout, body)
    return str(answer["access_token"])


async def seed(
    session: aiohttp.ClientSession, gateway: str, timeout: float, token: str | None = None
) -> str:
    """Create :data:`CUSTOMERS` and :data:`PRODUCTS` where there are none; what was made.

    ``token`` (an admin's) is sent with every request.
    """
    deadline = time.monotonic() + timeout
    headers = {"Authorization": f"Bearer {token}"} if token else None
    made = []
    for path, key, items in (
        ("/customers/customers", "customers", CUSTOMERS),
        ("/inventory/products", "products", PRODUCTS),
    ):
        existing = await _call(session, "GET", gateway + path, deadline, headers=headers)
        if existing[key]:
            continue
        for item in items:
            await _call(session, "POST", gateway + path, deadline, item, headers)
        made.append(f"{len(items)} {key}")
    return " and ".join(made)
