"""The bill saga under concurrency and faults: customers, two inventory instances, billing.

Every service is its own process on a private Redis that the tests may
restart. 50 clients bill one unit each of a product with 20 in stock, at
once: exactly 20 bills end ``confirmed`` and the 30 others ``rejected``
with the reason, the stock ends at 0 and is never seen below it, and nothing
becomes a dead letter. The same holds with an inventory instance killed -9
in the middle, with Redis restarted (empty) in the middle, and after every
event of every stream is delivered again, as itself and as a new event.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from core.events.bus import Event, Keys
from core.testing import Component, ComponentFactory, RedisServer, wait_until
from tests.services.conftest import rows

BILLS = 50
STOCK = 20


@dataclass
class System:
    redis: RedisServer
    factory: ComponentFactory
    data: Path
    customers: Component
    inventory: list[Component]
    billing: Component
    customer_id: int = 0

    def env(self) -> dict[str, str]:
        return {"REDIS_URL": self.redis.url, "INVENTORY_VISIBILITY_TIMEOUT": "2"}

    def start(self, name: str, instance: str, *args: str) -> Awaitable[Component]:
        return self.factory.start(
            f"services.{name}", "--data-dir", str(self.data / name), "--instance-id", instance,
            "--ttl", "3", *args, env=self.env(),
        )  # fmt: skip

    @property
    def live_inventory(self) -> Component:
        return next(c for c in self.inventory if c.process.poll() is None)


async def start_system(redis: RedisServer, work: Path) -> System:
    factory = ComponentFactory(work)
    system = System(redis, factory, work / "data", None, [], None)  # type: ignore[arg-type]
    system.customers, *system.inventory = await asyncio.gather(
        system.start("customers", "customers-1"),
        system.start("inventory", "inventory-1"),
        system.start("inventory", "inventory-2"),
    )
    system.billing = await system.start("billing", "billing-1")
    _, customer, _ = await call(
        "POST", f"{system.customers.url}/customers", {"name": "Ada", "email": "ada@example.com"}
    )
    system.customer_id = int(customer["id"])
    return system


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """One private Redis and the services, shared by the tests (each bills its own product)."""
    redis = RedisServer().start()
    work = tmp_path_factory.mktemp("saga")
    try:
        started = asyncio.run(start_system(redis, work))
    except BaseException:
        redis.close()
        raise
    try:
        yield started
    finally:
        started.factory.close()
        redis.close()


async def call(
    method: str, url: str, body: Any = None, *, timeout: float = 10.0
) -> tuple[int, Any, Any]:
    """``(status, JSON body or None, headers)`` of one request."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http,
        http.request(method, url, json=body) as response,
    ):
        text = await response.read()
        doc = await response.json(content_type=None) if text else None
        return response.status, doc, response.headers


async def new_product(system: System, stock: int = STOCK) -> int:
    status, product, _ = await call(
        "POST",
        f"{system.live_inventory.url}/products",
        {"name": "Monitor", "price": 199, "quantity": stock},
    )
    assert status == 201, product
    return int(product["id"])


async def stock_of(system: System, product_id: int) -> int:
    status, product, _ = await call("GET", f"{system.live_inventory.url}/products/{product_id}")
    assert status == 200, product
    return int(product["quantity"])


@dataclass
class Run:
    """What the clients saw: the bills accepted (202), the stock seen, how each bill ended."""

    accepted: list[int] = field(default_factory=list)
    stock_seen: list[int] = field(default_factory=list)
    final: dict[int, dict[str, Any]] = field(default_factory=dict)

    def ended(self, status: str) -> list[int]:
        return [i for i, bill in self.final.items() if bill["status"] == status]


async def bill_concurrently(
    system: System, product_id: int, fault: Callable[[], Awaitable[None]] | None = None
) -> Run:
    """50 clients bill one unit each: 25 at once, then ``fault``, then 25 more at once.

    The fault comes once 10 bills of the first wave were accepted, while
    their sagas are under way. A client retries a 503 (a dependency
    unreachable for a moment) until a deadline, as its ``Retry-After``
    invites; any other answer but 202 fails the test (a shortage is not
    refused: it is a rejected bill). Then every
    accepted bill is read with ``?wait=`` until it is no longer pending.
    """
    run = Run()
    enough = asyncio.Event()
    body = {"customer_id": system.customer_id, "lines": [{"product_id": product_id, "quantity": 1}]}
    deadline = time.monotonic() + 30

    async def client() -> None:
        while True:
            try:
                status, doc, headers = await call("POST", f"{system.billing.url}/bills", body)
            except (aiohttp.ClientError, TimeoutError) as exc:
                status, doc, headers = 0, repr(exc), {}
            if status == 202:
                assert doc["status"] == "pending", doc
                assert headers["Location"] == f"/bills/{doc['id']}"
                run.accepted.append(int(doc["id"]))
                if len(run.accepted) >= 10:
                    enough.set()
                return
            assert status in (0, 503), (status, doc)
            assert time.monotonic() < deadline, (status, doc)
            await asyncio.sleep(0.1)

    async def watch_stock() -> None:
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, AssertionError):
                run.stock_seen.append(await stock_of(system, product_id))
            await asyncio.sleep(0.05)

    watcher = asyncio.ensure_future(watch_stock())
    try:
        first = asyncio.gather(*(client() for _ in range(BILLS // 2)))
        await asyncio.wait_for(enough.wait(), 30)
        if fault is not None:
            await asyncio.wait_for(fault(), 20)
        await asyncio.gather(first, *(client() for _ in range(BILLS - BILLS // 2)))
        run.final = await settle(system, run.accepted)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    return run


async def settle(system: System, bill_ids: list[int], timeout: float = 40.0) -> dict[int, Any]:
    """Every bill once it left ``pending`` (read with ``?wait=``), by id."""
    deadline = time.monotonic() + timeout

    async def final(bill_id: int) -> Any:
        while True:
            status, bill, _ = await call(
                "GET", f"{system.billing.url}/bills/{bill_id}?wait=5", timeout=15
            )
            if status == 200 and bill["status"] != "pending":
                return bill
            assert time.monotonic() < deadline, f"bill {bill_id} still {bill}"

    return dict(zip(bill_ids, await asyncio.gather(*map(final, bill_ids)), strict=True))


async def dead_letters(system: System) -> list[Any]:
    letters = []
    for service in (system.billing, system.live_inventory):
        status, doc, _ = await call("GET", f"{service.url}/events/dead")
        assert status == 200, doc
        letters += doc["dead_letters"]
    return letters


async def check_run(system: System, product_id: int, run: Run) -> None:
    """Exactly the stock confirmed, the others rejected for the stock, nothing negative or dead."""
    assert len(run.accepted) == BILLS
    confirmed, rejected = run.ended("confirmed"), run.ended("rejected")
    assert len(confirmed) == STOCK, run.final
    assert len(rejected) == BILLS - STOCK, run.final
    for bill_id in rejected:
        reason = run.final[bill_id]["reason"]
        assert reason["code"] == "out_of_stock", reason
        assert reason["lines"] == [{"product_id": product_id, "quantity": 1, "available": 0,
                                    "reason": "only 0 in stock"}]  # fmt: skip
    assert await stock_of(system, product_id) == STOCK - len(confirmed) == 0
    assert min(run.stock_seen, default=0) >= 0
    reserved = rows(
        system.data / "inventory" / "inventory.db",
        "SELECT bill_id FROM reservations WHERE status = 'reserved' ORDER BY bill_id",
    )
    assert {bill_id for (bill_id,) in reserved} >= set(confirmed)
    assert await dead_letters(system) == []


async def test_50_concurrent_bills_for_a_stock_of_20_confirm_exactly_20(system: System) -> None:
    product_id = await new_product(system)
    run = await bill_concurrently(system, product_id)
    await check_run(system, product_id, run)


async def test_with_an_inventory_instance_killed_in_the_middle_exactly_20_are_confirmed(
    system: System,
) -> None:
    product_id = await new_product(system)
    victim = system.inventory[0]

    async def kill() -> None:
        async with bus(system) as redis:

            async def holding() -> bool:  # events delivered to it and not yet acknowledged
                summary = await redis.xpending(Keys().stream("bill.created"), "inventory")
                return any(c["name"] == "inventory-1" for c in summary["consumers"])

            with contextlib.suppress(TimeoutError):
                await wait_until(holding, 1, 0.002)
        victim.kill()  # SIGKILL: its transactions die, its pending events wait to be claimed

    run = await bill_concurrently(system, product_id, kill)
    assert victim.process.poll() is not None
    await check_run(system, product_id, run)


async def test_with_redis_restarted_empty_in_the_middle_exactly_20_are_confirmed(
    system: System,
) -> None:
    product_id = await new_product(system)

    async def restart() -> None:
        # Events in the streams are lost with it: billing sends its commands again.
        await asyncio.to_thread(system.redis.stop)
        await asyncio.to_thread(system.redis.start)

    run = await bill_concurrently(system, product_id, restart)
    await check_run(system, product_id, run)


async def _snapshot(system: System) -> tuple[Any, ...]:
    _, bills, _ = await call("GET", f"{system.billing.url}/bills?limit=1000")
    _, products, _ = await call("GET", f"{system.live_inventory.url}/products?limit=1000")
    reservations = rows(
        system.data / "inventory" / "inventory.db",
        "SELECT bill_id, status FROM reservations ORDER BY bill_id",
    )
    statuses = [(b["id"], b["status"], b.get("stock_released")) for b in bills["bills"]]
    return statuses, [(p["id"], p["quantity"]) for p in products["products"]], reservations


@contextlib.asynccontextmanager
async def bus(system: System) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(system.redis.url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


async def streams(redis: aioredis.Redis) -> list[str]:
    """The event streams (not the replays nor the dead letters of a group)."""
    keys = await redis.keys("essaim:events:*")
    return sorted(k for k in keys if not k.endswith((":retry", ":dead")))


async def quiet(system: System, redis: aioredis.Redis) -> bool:
    """Every group has read and acknowledged everything, and no outbox holds an event."""
    for stream in await streams(redis):
        for group in await redis.xinfo_groups(stream):
            if group["pending"] or group.get("lag") != 0:
                return False
    for service in (system.billing, system.live_inventory):
        _, outbox, _ = await call("GET", f"{service.url}/events/outbox")
        if outbox["pending"]:
            return False
    return True


async def test_every_event_delivered_again_as_itself_or_as_a_new_event_changes_nothing(
    system: System,
) -> None:
    product_id = await new_product(system)
    run = await bill_concurrently(system, product_id)
    await check_run(system, product_id, run)
    cancelled = run.ended("confirmed")[:2]
    for bill_id in cancelled:
        status, bill, _ = await call("POST", f"{system.billing.url}/bills/{bill_id}/cancel")
        assert (status, bill["status"]) == (200, "cancelled"), bill
    await wait_until(lambda: _is(stock_of(system, product_id), 2), 10, message="stock released")
    await settle_released(system, cancelled)

    async with bus(system) as redis:
        await wait_until(lambda: quiet(system, redis), 20, message="the system quiet")
        before = await _snapshot(system)
        replayed = 0
        for stream in await streams(redis):
            for _, fields in await redis.xrange(stream):
                again = Event.from_fields(fields)
                fresh = Event(again.type, again.source, again.data)  # the same, as a new event
                await redis.xadd(stream, fields)  # type: ignore[arg-type]
                await redis.xadd(stream, fresh.to_fields())  # type: ignore[arg-type]
                replayed += 1
        assert replayed >= 2 * len(run.accepted) + 4  # a command and an answer each, the cancels
        await wait_until(lambda: quiet(system, redis), 30, message="the replays handled")
        await wait_until(lambda: quiet(system, redis), 10, message="the answers handled")
    assert await _snapshot(system) == before
    assert await stock_of(system, product_id) == 2
    assert await dead_letters(system) == []


async def settle_released(system: System, bill_ids: list[int]) -> None:
    async def released() -> bool:
        for bill_id in bill_ids:
            _, bill, _ = await call("GET", f"{system.billing.url}/bills/{bill_id}")
            if bill.get("stock_released") is not True:
                return False
        return True

    await wait_until(released, 15, message="inventory confirmed the releases")


async def _is(value: Awaitable[Any], expected: Any) -> bool:
    return await value == expected
