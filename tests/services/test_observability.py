"""What an operator reads for one bill: access logs and one trace id across the services.

customers, inventory and billing run as processes with JSON logs. One bill,
sent to billing with a ``traceparent`` and a secret ``Authorization``, must
leave in every service's log an access line, and in inventory's the event
consumer's line, all with the bill's trace id; no log holds the secret.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from core.testing import Component, ComponentFactory, RedisServer, wait_until

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
SECRET = "Bearer not-a-real-token-but-a-secret-all-the-same"


def _lines(component: Component) -> list[dict[str, Any]]:
    lines = []
    for raw in component.log.splitlines():
        if raw.startswith("{"):
            lines.append(orjson.loads(raw))
    return lines


async def _post(url: str, body: Any, **headers: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, json=body, headers=headers) as response,
    ):
        return response.status, await response.json(content_type=None)


async def test_one_bill_is_one_trace_in_every_services_log_and_no_secret_is_logged(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    factory = ComponentFactory(tmp_path)
    try:

        def start(name: str) -> Any:
            return factory.start(
                f"services.{name}", "--data-dir", str(tmp_path / name), "--instance-id",
                f"{name}-1", "--log-format", "json", env={"REDIS_URL": redis_server.url},
            )  # fmt: skip

        customers, inventory = await asyncio.gather(start("customers"), start("inventory"))
        billing = await start("billing")
        status, customer = await _post(
            f"{customers.url}/customers", {"name": "Ada", "email": "ada@example.com"}
        )
        assert status == 201
        status, product = await _post(
            f"{inventory.url}/products", {"name": "Monitor", "price": 199, "quantity": 7}
        )
        assert status == 201

        status, bill = await _post(
            f"{billing.url}/bills",
            {"customer_id": customer["id"], "lines": [{"product_id": product["id"], "quantity": 1}]},
            traceparent=TRACEPARENT, Authorization=SECRET, **{"X-Request-ID": "bill-req-1"},
        )  # fmt: skip
        assert status in (201, 202), bill

        def traced(component: Component, logger: str) -> list[dict[str, Any]]:
            return [
                line for line in _lines(component)
                if line.get("logger") == logger and line.get("trace_id") == TRACE_ID
            ]  # fmt: skip

        await wait_until(
            lambda: traced(inventory, "essaim.events"),
            timeout=15,
            message="inventory's consumer handled the bill's event in the bill's trace",
        )
        bill_access = [
            line for line in traced(billing, "essaim.access") if line["path"] == "/bills"
        ]
        assert len(bill_access) == 1
        access = bill_access[0]
        assert access["request_id"] == "bill-req-1"
        assert (access["method"], access["route"], access["status"]) == ("POST", "/bills", status)
        assert (access["service"], access["instance"]) == ("billing", "billing-1")
        assert access["duration_ms"] > 0
        assert access["bytes_in"] > 0
        assert access["bytes_out"] > 0
        # billing's calls continued the trace, each as a child of billing's span.
        for component, path in ((customers, f"/customers/{customer['id']}"),
                                (inventory, f"/products/{product['id']}")):  # fmt: skip
            called = [line for line in traced(component, "essaim.access") if line["path"] == path]
            assert called, f"no traced access line for {path}"
            assert called[0]["request_id"] == "bill-req-1"
            assert called[0]["span_id"] != access["span_id"]
        for component in (customers, inventory, billing):
            assert "not-a-real-token" not in component.log
    finally:
        factory.close()
