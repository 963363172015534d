"""The billing service as a process among customers and inventory processes.

Sync calls through discovery, pricing, the bill and its ``bill.created`` event
(taken from stock by inventory), bad input, a dependency down or behind an
open breaker, and the outbox surviving a kill between commit and publish.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from core.testing import Component, ComponentFactory, RedisServer, wait_until


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
    status, doc, _ = await call("POST", url, body)
    assert status == 201, doc
    return int(doc["id"])


async def counts(billing: Component) -> tuple[int, int]:
    """How many bills billing stored, and how many events its outbox holds."""
    _, bills, _ = await call("GET", f"{billing.url}/bills")
    _, outbox, _ = await call("GET", f"{billing.url}/events/outbox")
    return len(bills["bills"]), len(outbox["events"])


async def test_a_bill_is_priced_from_its_dependencies_and_its_event_takes_the_stock(
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
    assert status == 201, bill
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

    await wait_until(lambda: _is(stock(), 4), 10, message="bill.created taken from stock")
    status, full, _ = await call("GET", f"{system.billing.url}/bills/{bill['id']}")
    assert status == 200
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
        ({"customer_id": 1, "lines": [{"product_id": 1, "quantity": 10_000}]}, 422, "lines[0].quantity"),
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
    await wait_until(lambda: _is(_status(billing, body), 201), 10, message="customers back")
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
