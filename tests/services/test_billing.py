"""The billing service as a process among customers and inventory processes.

Sync calls through discovery, pricing, the bill and its saga (``bill.created``
reserved by inventory, the bill confirmed; a cancellation releasing the
stock; a timeout that compensates), bad input, a dependency down or behind
an open breaker, and the outbox surviving a kill between commit and publish.
The saga under concurrency and faults: ``test_bill_saga.py``.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from core.db import Database
from core.testing import Component, ComponentFactory, RedisServer, wait_until
from services.billing.service import MIGRATIONS, SERVICE
from tests.services.conftest import MakeClient


@dataclass
class System:
    redis: RedisServer
    customers: Component
    inventory: Component
    billing: Component


async def start_system(
    factory: ComponentFactory, redis_url: str, data: Path
) -> tuple[Component, Component, Component]:
    """customers, inventory and billing (once the other two listen), on ``redis_url``."""

    def start(name: str) -> Awaitable[Component]:
        args = ("--data-dir", str(data / name), "--instance-id", f"{name}-1")
        return factory.start(f"services.{name}", *args, env={"REDIS_URL": redis_url})

    customers, inventory = await asyncio.gather(start("customers"), start("inventory"))
    return customers, inventory, await start("billing")


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """One Redis and the three services for the tests that leave them running."""
    redis = RedisServer().start()
    work = tmp_path_factory.mktemp("billing")
    factory = ComponentFactory(work)
    try:
        customers, inventory, billing = asyncio.run(start_system(factory, redis.url, work / "data"))
        yield System(redis, customers, inventory, billing)
    finally:
        factory.close()
        redis.close()


async def call(method: str, url: str, body: Any = None, **kwargs: Any) -> tuple[int, Any, Any]:
    """``(status, JSON body or None, headers)`` of one request."""
    async with aiohttp.ClientSession() as http:
        data = body if isinstance(body, bytes) else None
        json = None if isinstance(body, bytes) else body
        async with http.request(method, url, data=data, json=json, **kwargs) as response:
            text = await response.read()
            doc = await response.json(content_type=None) if text else None
            return response.status, doc, response.headers


async def make(url: str, body: dict[str, Any]) -> int:
    """Create a customer or product (201), or a bill (202, pending); its id."""
    status, doc, _ = await call("POST", url, body)
    assert status == (202 if url.endswith("/bills") else 201), doc
    return int(doc["id"])


async def counts(billing: Component) -> tuple[int, int]:
    """How many bills billing stored, and how many events its outbox holds."""
    _, bills, _ = await call("GET", f"{billing.url}/bills")
    _, outbox, _ = await call("GET", f"{billing.url}/events/outbox")
    return len(bills["bills"]), len(outbox["events"])


async def test_a_bill_is_priced_pending_then_confirmed_once_inventory_reserved_its_stock(
    system: System,
) -> None:
    customer = await make(
        f"{system.customers.url}/customers", {"name": "Ada", "email": "ada@example.com"}
    )
    monitor = await make(
        f"{system.inventory.url}/products", {"name": "Monitor", "price": 199.99, "quantity": 7}
    )
    mouse = await make(
        f"{system.inventory.url}/products", {"name": "Mouse", "price": 19.9, "quantity": 50}
    )
    body = {"customer_id": customer, "lines": [{"product_id": monitor, "quantity": 3},
                                               {"product_id": mouse, "quantity": 1}]}  # fmt: skip
    status, bill, headers = await call(
        "POST", f"{system.billing.url}/bills", body, headers={"X-Request-ID": "walk-1"}
    )
    assert (status, bill["status"]) == (202, "pending"), bill
    assert headers["X-Request-ID"] == "walk-1"
    assert headers["Location"] == f"/bills/{bill['id']}"
    assert [(line["name"], line["amount"]) for line in bill["lines"]] == [
        ("Monitor", 599.97),
        ("Mouse", 19.9),
    ]
    assert (bill["subtotal"], bill["tax_rate"], bill["tax"], bill["total"]) == (
        619.87,
        0.2,
        123.97,
        743.84,
    )

    async def stock() -> int:
        _, product, _ = await call("GET", f"{system.inventory.url}/products/{monitor}")
        return int(product["quantity"])

    status, full, _ = await call("GET", f"{system.billing.url}/bills/{bill['id']}?wait=10")
    assert (status, full["status"]) == (200, "confirmed"), full
    assert await stock() == 4
    assert full["customer"] == {"id": customer, "name": "Ada", "email": "ada@example.com"}
    assert full["lines"][0]["product"] == {"id": monitor, "name": "Monitor", "price": 199.99,
                                           "quantity": 4, "low_stock": True}  # fmt: skip
    assert full["total"] == 743.84
    _, outbox, _ = await call("GET", f"{system.billing.url}/events/outbox")
    assert outbox["events"][0]["type"] == "bill.created"
    assert outbox["events"][0]["data"]["lines"] == body["lines"]
    assert outbox["pending"] == 0


async def _is(value: Any, expected: Any) -> bool:
    return await value == expected


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (b"{", 400, None),
        ([], 400, "the body"),
        ({"lines": [{"product_id": 1, "quantity": 1}]}, 422, "customer_id"),
        ({"customer_id": 1, "lines": []}, 422, "lines"),
        ({"customer_id": 1, "lines": [{"product_id": 1, "quantity": -2}]}, 422, "lines[0].quantity"),
        ({"customer_id": 1, "lines": [{"product_id": 1, "quantity": 0}]}, 422, "lines[0].quantity"),
        ({"customer_id": 1, "lines": [{"product_id": 1, "quantity": "2"}]}, 400, "lines[0].quantity"),
        ({"customer_id": 1, "lines": [{"product_id": 1}]}, 422, "lines[0].quantity"),
        ({"customer_id": 1, "lines": [5]}, 400, "lines[0]"),
        ({"customer_id": 1, "lines": [{"product_id": 1, "quantity": 1},
                                      {"product_id": 1, "quantity": 1}]}, 422, "lines[1].product_id"),
        ({"customer_id": 999, "lines": [{"product_id": 1, "quantity": 1}]}, 422, "customer_id"),
        ({"customer_id": 1, "lines": [{"product_id": 1, "quantity": 1},
                                      {"product_id": 999, "quantity": 1}]}, 422, "lines[1].product_id"),
    ],
)  # fmt: skip
async def test_a_bill_that_cannot_be_priced_whole_is_refused_and_nothing_is_stored(
    system: System, body: Any, status: int, field: str | None
) -> None:
    _, customers, _ = await call("GET", f"{system.customers.url}/customers")
    if not customers["customers"]:
        await make(f"{system.customers.url}/customers", {"name": "Ada", "email": "ada@example.com"})
        await make(
            f"{system.inventory.url}/products", {"name": "Monitor", "price": 199, "quantity": 7}
        )
    before = await counts(system.billing)
    got, problem, headers = await call("POST", f"{system.billing.url}/bills", body)
    assert got == status, problem
    assert headers["Content-Type"] == "application/problem+json"
    if field is not None:
        assert field in [e["field"] for e in problem["errors"]]
    assert await counts(system.billing) == before


async def test_a_dependency_down_or_behind_an_open_breaker_is_a_503_and_stores_nothing(
    components: ComponentFactory, redis_url: str, tmp_path: Path
) -> None:
    customers, inventory, billing = await start_system(components, redis_url, tmp_path)
    await make(f"{customers.url}/customers", {"name": "Ada", "email": "ada@example.com"})
    await make(f"{inventory.url}/products", {"name": "Monitor", "price": 199, "quantity": 70})
    body = {"customer_id": 1, "lines": [{"product_id": 1, "quantity": 1}]}
    await make(f"{billing.url}/bills", body)

    assert customers.terminate() == 0  # deregisters: no instance of customers is up
    status, problem, headers = await call("POST", f"{billing.url}/bills", body)
    assert (status, problem["dependency"]) == (503, "customers")
    assert problem["detail"] == "customers is unavailable: no instance of 'customers' is up"
    assert headers["Retry-After"] == "1"
    # Marked as the dependency's failure, for the gateway not to hold it against billing.
    assert headers["Essaim-Failure"] == "dependency"
    assert problem["type"] == "urn:essaim:problem:dependency-unavailable"
    _, bill, _ = await call("GET", f"{billing.url}/bills/1")  # reading degrades instead
    assert bill["customer"] == {"id": 1, "unavailable": "no instance of 'customers' is up"}

    crashed = await components.start(
        "services.customers", "--data-dir", str(tmp_path / "customers"), "--instance-id", "customers-1",
        env={"REDIS_URL": redis_url},
    )  # fmt: skip
    await wait_until(lambda: _is(_status(billing, body), 202), 10, message="customers back")
    crashed.kill()  # SIGKILL: still registered, refusing connections
    details = []
    for _ in range(40):
        status, problem, _ = await call("POST", f"{billing.url}/bills", body)
        assert status == 503, problem
        details.append(problem["detail"])
        if "circuit breaker" in problem["detail"]:
            break
    assert details[-1] == "customers is unavailable: the circuit breaker of 'customers' is open"
    assert await counts(billing) == (2, 2)


async def _status(billing: Component, body: Any) -> int:
    status, _, _ = await call("POST", f"{billing.url}/bills", body)
    return status


async def test_a_bill_committed_before_billing_was_killed_is_published_after_its_restart(
    components: ComponentFactory, redis_factory: Any, tmp_path: Path
) -> None:
    redis: RedisServer = redis_factory()
    customers, inventory, billing = await start_system(components, redis.url, tmp_path)
    await make(f"{customers.url}/customers", {"name": "Ada", "email": "ada@example.com"})
    await make(f"{inventory.url}/products", {"name": "Monitor", "price": 199, "quantity": 7})

    redis.stop()  # the relay can't publish; billing still calls by its last registry snapshot
    await make(
        f"{billing.url}/bills", {"customer_id": 1, "lines": [{"product_id": 1, "quantity": 2}]}
    )
    _, outbox, _ = await call("GET", f"{billing.url}/events/outbox")
    assert (outbox["pending"], outbox["events"][0]["published"]) == (1, False)
    billing.kill()  # after the commit, before the event was published

    redis.start()  # empty: the consumer group is made again, from the start of the stream
    restarted = await components.start(
        "services.billing", "--data-dir", str(tmp_path / "billing"), "--instance-id", "billing-1",
        env={"REDIS_URL": redis.url},
    )  # fmt: skip

    async def stock() -> int:
        _, product, _ = await call("GET", f"{inventory.url}/products/1")
        return int(product["quantity"])

    await wait_until(lambda: _is(stock(), 5), 20, message="the bill taken from stock")
    _, outbox, _ = await call("GET", f"{restarted.url}/events/outbox")
    assert (outbox["pending"], outbox["events"][0]["published"]) == (0, True)


async def bill_status(billing: Component, bill_id: int) -> Any:
    """The bill as listed (``GET /bills`` asks no other service), or None."""
    _, listed, _ = await call("GET", f"{billing.url}/bills")
    return next((bill for bill in listed["bills"] if bill["id"] == bill_id), None)


async def test_a_cancelled_bill_releases_its_stock_once_a_shortage_is_a_rejected_bill(
    system: System,
) -> None:
    _, customers, _ = await call("GET", f"{system.customers.url}/customers")
    if not customers["customers"]:
        await make(f"{system.customers.url}/customers", {"name": "Ada", "email": "ada@example.com"})
    product = await make(
        f"{system.inventory.url}/products", {"name": "Webcam", "price": 59.5, "quantity": 7}
    )
    customer = customers["customers"][0]["id"] if customers["customers"] else 1
    body = {"customer_id": customer, "lines": [{"product_id": product, "quantity": 2}]}
    bill_id = await make(f"{system.billing.url}/bills", body)
    _, bill, _ = await call("GET", f"{system.billing.url}/bills/{bill_id}?wait=10")
    assert bill["status"] == "confirmed", bill

    for _ in range(2):  # cancelling twice is cancelling once
        status, cancelled, _ = await call("POST", f"{system.billing.url}/bills/{bill_id}/cancel")
        assert status == 200, cancelled
        assert cancelled["status"] == "cancelled"
        assert cancelled["reason"] == {"code": "cancelled", "detail": "cancelled by the customer"}

    async def released() -> bool:
        doc = await bill_status(system.billing, bill_id)
        return bool(doc["stock_released"])

    await wait_until(released, 10, message="inventory released the stock")
    _, product_doc, _ = await call("GET", f"{system.inventory.url}/products/{product}")
    assert product_doc["quantity"] == 7

    too_many = {"customer_id": customer, "lines": [{"product_id": product, "quantity": 8}]}
    refused = await make(f"{system.billing.url}/bills", too_many)  # accepted, then rejected
    _, bill, _ = await call("GET", f"{system.billing.url}/bills/{refused}?wait=10")
    assert (bill["status"], bill["reason"]) == ("rejected", {
        "code": "out_of_stock", "detail": f"product {product}: only 7 in stock",
        "lines": [{"product_id": product, "quantity": 8, "available": 7, "reason": "only 7 in stock"}],
    }), bill  # fmt: skip
    status, problem, _ = await call("POST", f"{system.billing.url}/bills/{refused}/cancel")
    assert (status, problem["state"]) == (409, "rejected"), problem

    status, problem, _ = await call("POST", f"{system.billing.url}/bills/999999/cancel")
    assert (status, problem["detail"]) == (404, "no bill with id 999999")


@pytest.mark.parametrize("wait", ["abc", "-1", "31", "nan", "inf", "1e400"])
async def test_a_bad_wait_is_a_400_problem(system: System, wait: str) -> None:
    status, problem, headers = await call("GET", f"{system.billing.url}/bills/1?wait={wait}")
    assert status == 400, problem
    assert headers["Content-Type"] == "application/problem+json"
    assert problem["errors"] == [{"field": "wait", "reason": "expected a number from 0 to 30"}]


async def test_a_bill_inventory_does_not_answer_in_time_is_rejected_and_its_stock_released(
    components: ComponentFactory, redis_url: str, tmp_path: Path
) -> None:
    """The timeout follows configsvc: a bill keeps the one in force when it was made."""
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "billing.toml").write_text(
        "[billing]\nreservation_timeout = 60\nresend_interval = 0.5\n"
    )
    env = {"REDIS_URL": redis_url}
    configsvc = await components.start("configsvc", "--config-dir", str(config_dir), env=env)

    def start(name: str, *args: str) -> Awaitable[Component]:
        return components.start(
            f"services.{name}", "--data-dir", str(tmp_path / name), "--instance-id", f"{name}-1",
            *args, env=env,
        )  # fmt: skip

    customers, inventory = await asyncio.gather(start("customers"), start("inventory"))
    billing = await start("billing", "--config-url", configsvc.url)
    await make(f"{customers.url}/customers", {"name": "Ada", "email": "ada@example.com"})
    await make(f"{inventory.url}/products", {"name": "Monitor", "price": 199, "quantity": 10})

    def bill(quantity: int) -> dict[str, Any]:
        return {"customer_id": 1, "lines": [{"product_id": 1, "quantity": quantity}]}

    # Inventory can't write while the test holds its database's write lock: no answer.
    lock = sqlite3.connect(tmp_path / "inventory" / "inventory.db", isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    try:
        kept = await make(f"{billing.url}/bills", bill(2))  # made under a 60 s timeout
        cancelled = await make(f"{billing.url}/bills", bill(1))
        status, doc, _ = await call("POST", f"{billing.url}/bills/{cancelled}/cancel")
        assert (status, doc["status"]) == (200, "cancelled"), doc

        _, health, _ = await call("GET", f"{billing.url}/health")
        version = health["config"]["version"]
        status, _, _ = await call(
            "PUT", f"{configsvc.url}/v1/documents/billing",
            {"billing": {"reservation_timeout": 1, "resend_interval": 0.5}},
        )  # fmt: skip
        assert status == 200

        async def applied() -> bool:
            _, health, _ = await call("GET", f"{billing.url}/health")
            return bool(health["config"]["version"] != version)

        await wait_until(applied, 10, message="the new timeout applied")
        late = await make(f"{billing.url}/bills", bill(3))

        async def rejected() -> Any:
            doc = await bill_status(billing, late)
            return doc if doc["status"] == "rejected" else None

        doc = await wait_until(rejected, 10, message="the bill rejected at its timeout")
        assert doc["reason"] == {
            "code": "timeout",
            "detail": "no answer to bill.created within 1 s",
        }
        assert doc["stock_released"] is False  # inventory has not confirmed yet
        assert (await bill_status(billing, kept))["status"] == "pending"
        status, problem, _ = await call("POST", f"{billing.url}/bills/{late}/cancel")
        assert status == 409, problem
        assert problem["detail"] == (
            f"bill {late} is rejected: only a confirmed or pending bill can become cancelled"
        )
    finally:
        lock.rollback()
        lock.close()

    # Inventory answers at last: the bill made under 60 s is confirmed; the others hold nothing.
    _, doc, _ = await call("GET", f"{billing.url}/bills/{kept}?wait=20", timeout=30)
    assert doc["status"] == "confirmed", doc

    async def settled() -> bool:
        docs = [await bill_status(billing, i) for i in (cancelled, late)]
        return all(d["stock_released"] for d in docs)

    await wait_until(settled, 20, message="the releases confirmed")
    _, product, _ = await call("GET", f"{inventory.url}/products/1")
    assert product["quantity"] == 8
    assert [d["status"] for d in [await bill_status(billing, i) for i in (late, cancelled)]] == [
        "rejected",
        "cancelled",
    ]
    _, dead, _ = await call("GET", f"{inventory.url}/events/dead")
    assert dead["dead_letters"] == []
    _, health, _ = await call("GET", f"{billing.url}/health")
    counters = health["events"]["sagas"]["bill"]
    assert (counters["timeouts"], counters["compensated"]) == (1, 2), counters
    assert counters["moved"] >= 1  # the kept bill; the late answer to the other is stale
    async with aiohttp.ClientSession() as http, http.get(f"{billing.url}/metrics") as r:
        assert 'billing_saga_events_total{outcome="timeouts",saga="bill"} 1.0' in await r.text()


async def test_a_bill_made_before_the_saga_is_confirmed_and_cannot_be_cancelled(
    make_service: MakeClient, tmp_path: Path
) -> None:
    """A database of the first version: its bills' stock was taken with no reservation kept."""
    old = await Database.open(tmp_path / "billing", "billing", MIGRATIONS[:1])
    await old.transaction(
        lambda c: (
            c.execute("INSERT INTO bills VALUES (1, 7, 'EUR', '0.2', 100, 20, 120, 'then')"),
            c.execute("INSERT INTO bill_lines VALUES (1, 0, 3, 'Monitor', 2, 50, 100)"),
        )
    )
    await old.close()
    client = await make_service(SERVICE)
    listed = await (await client.get("/bills")).json()
    assert [(b["id"], b["status"]) for b in listed["bills"]] == [(1, "confirmed")]
    refused = await client.post("/bills/1/cancel")
    assert refused.status == 409
    assert (await refused.json())["detail"] == (
        "bill 1 was made before stock reservations were recorded: it can't be cancelled"
    )
