"""The inventory service: products, its part in the bill saga, ``stock.low``, dead letters.

Events are published here as billing's relay would (``EventBus.publish``):
what is tested is the service's use of the bus (the bus itself is tested in
``tests/core``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import ClientSession
from aiohttp.test_utils import TestClient

import configsvc
from core.events.bus import Event, EventBus, Keys
from core.settings import Secret
from core.testing import ComponentFactory, wait_until
from services.auth.service import AuthSettings, build_auth_app
from services.inventory.service import SERVICE
from tests.services.conftest import Client, MakeClient, rows


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def client(make_service: MakeClient) -> Client:
    return await make_service(SERVICE, max_deliveries=2)


async def product(
    client: Client, name: str = "Monitor", price: Any = 199, quantity: int = 7
) -> int:
    response = await client.post(
        "/products", json={"name": name, "price": price, "quantity": quantity}
    )
    assert response.status == 201, await response.text()
    return int((await response.json())["id"])


async def quantity(client: Client, product_id: int) -> int:
    return int((await (await client.get(f"/products/{product_id}")).json())["quantity"])


def bill(*lines: tuple[int, int], bill_id: int = 1) -> Event:
    data = {"bill_id": bill_id, "lines": [{"product_id": p, "quantity": q} for p, q in lines]}
    return Event("bill.created", "billing", data)


async def health_events(client: Client) -> dict[str, Any]:
    return dict((await (await client.get("/health")).json())["events"])


async def test_products_have_prices_in_cents_and_a_low_stock_flag(
    client: Client, tmp_path: Path
) -> None:
    keyboard = await product(client, "Keyboard", 49.9, 20)
    created = await (await client.get(f"/products/{keyboard}")).json()
    assert created == {
        "id": 1,
        "name": "Keyboard",
        "price": 49.9,
        "quantity": 20,
        "low_stock": False,
    }
    patched = await client.patch(f"/products/{keyboard}", json={"quantity": 4, "price": 45})
    assert await patched.json() == {
        "id": 1,
        "name": "Keyboard",
        "price": 45,
        "quantity": 4,
        "low_stock": True,
    }
    db = tmp_path / "inventory" / "inventory.db"
    assert rows(db, "SELECT price_cents, quantity FROM products") == [(4500, 4)]
    listed = await (await client.get("/products")).json()
    assert [p["name"] for p in listed["products"]] == ["Keyboard"]
    assert (await client.delete(f"/products/{keyboard}")).status == 204
    assert (await client.get(f"/products/{keyboard}")).status == 404


@pytest.mark.parametrize(
    ("method", "body", "status", "field"),
    [
        ("POST", {"name": "X", "price": 1, "quantity": -1}, 422, "quantity"),
        ("POST", {"name": "X", "price": -0.5, "quantity": 1}, 422, "price"),
        ("POST", {"name": "X", "price": 1.005, "quantity": 1}, 422, "price"),
        ("POST", {"name": "X", "price": "1", "quantity": 1}, 400, "price"),
        ("POST", {"name": "X", "price": 1, "quantity": 1.5}, 422, "quantity"),
        ("POST", {"name": "X", "price": 1, "quantity": True}, 400, "quantity"),
        ("POST", {"name": "X", "price": 1}, 422, "quantity"),
        ("POST", {"name": "X", "price": 1, "quantity": 1, "sku": "a"}, 422, "sku"),
        ("POST", b"{", 400, None),
        ("PATCH", {"quantity": -3}, 422, "quantity"),
        ("PATCH", {"name": "Y", "price": 1e12}, 422, "price"),
        ("PATCH", {"quantity": None}, 400, "quantity"),
    ],
)
async def test_bad_products_are_refused_and_change_nothing(
    client: Client, tmp_path: Path, method: str, body: Any, status: int, field: str | None
) -> None:
    await product(client)
    db = tmp_path / "inventory" / "inventory.db"
    before = rows(db, "SELECT * FROM products")
    path = "/products" if method == "POST" else "/products/1"
    kwargs = {"data": body} if isinstance(body, bytes) else {"json": body}
    response = await client.request(method, path, **kwargs)
    assert response.status == status
    assert response.content_type == "application/problem+json"
    if field is not None:
        assert field in [e["field"] for e in (await response.json())["errors"]]
    assert rows(db, "SELECT * FROM products") == before


async def test_a_bill_reserves_its_stock_once_answers_and_emits_stock_low_under_the_threshold(
    client: Client, redis: aioredis.Redis, redis_url: str
) -> None:
    monitor = await product(client, "Monitor", 199, 7)
    mouse = await product(client, "Mouse", 19.9, 50)
    event = bill((monitor, 3), (mouse, 2))
    bus = EventBus(redis)
    await bus.publish(event)
    await bus.publish(event)  # delivered twice (a relay that died before marking it published)
    await wait_until(lambda: _handled(client, 2), 10, message="both deliveries taken")
    assert await quantity(client, monitor) == 4
    assert await quantity(client, mouse) == 48
    events = await health_events(client)
    assert (events["consumer"]["handled"], events["consumer"]["duplicates"]) == (1, 1)

    low = await wait_until(lambda: redis.xrange(Keys().stream("stock.low")), 5, message="stock.low")
    assert len(low) == 1
    data = Event.from_fields(low[0][1]).data
    assert data == {"product_id": monitor, "name": "Monitor", "quantity": 4, "threshold": 5,
                    "cause": "bill", "bill_id": 1}  # fmt: skip
    outbox = await (await client.get("/events/outbox")).json()
    assert [e["type"] for e in outbox["events"]] == ["stock.reserved", "stock.low"]  # newest first
    assert all(e["published"] for e in outbox["events"])
    reserved = Event.from_fields((await redis.xrange(Keys().stream("stock.reserved")))[0][1])
    assert reserved.data == {"bill_id": 1, "lines": event.data["lines"]}
    assert len(await redis.xrange(Keys().stream("stock.reserved"))) == 1  # the duplicate: nothing

    await bus.publish(bill((monitor, 1), bill_id=2))  # already under: no second alert
    await wait_until(lambda: _handled(client, 3), 10)
    assert await quantity(client, monitor) == 3
    assert len(await redis.xrange(Keys().stream("stock.low"))) == 1


async def _handled(client: Client, count: int) -> bool:
    consumer = (await health_events(client))["consumer"]
    return bool(consumer["handled"] + consumer["duplicates"] >= count)


async def answers(redis: aioredis.Redis, type: str, count: int) -> list[Any]:
    """The data of the first ``count`` events of ``type``, once there are that many."""

    async def found() -> list[Any]:
        entries = await redis.xrange(Keys().stream(type))
        return [Event.from_fields(f).data for _, f in entries] if len(entries) >= count else []

    return list(await wait_until(found, 10, message=f"{count} {type}"))


async def test_a_bill_that_cannot_be_served_is_rejected_with_a_reason_per_line_never_dead(
    client: Client, redis: aioredis.Redis
) -> None:
    monitor = await product(client, "Monitor", 199, 2)
    keyboard = await product(client, "Keyboard", 49.9, 10)
    bus = EventBus(redis)
    await bus.publish(bill((keyboard, 1), (monitor, 3), (99, 1)))
    [rejected] = await answers(redis, "stock.rejected", 1)
    assert rejected == {"bill_id": 1, "reason": {
        "code": "out_of_stock",
        "detail": f"product {monitor}: only 2 in stock; product 99: no product with id 99",
        "lines": [
            {"product_id": monitor, "quantity": 3, "available": 2, "reason": "only 2 in stock"},
            {"product_id": 99, "quantity": 1, "available": 0, "reason": "no product with id 99"},
        ],
    }}  # fmt: skip
    assert await quantity(client, keyboard) == 10  # all lines or none

    # Asked again (billing sends a command again until it hears back): the same answer,
    # even after a restock; a bill that can be served is served.
    await client.patch(f"/products/{monitor}", json={"quantity": 5})
    await bus.publish(bill((keyboard, 1), (monitor, 3), (99, 1)))
    await bus.publish(bill((keyboard, 1), (monitor, 3), bill_id=2))
    assert (await answers(redis, "stock.rejected", 2))[1] == rejected
    assert (await answers(redis, "stock.reserved", 1))[0]["bill_id"] == 2
    assert (await quantity(client, monitor), await quantity(client, keyboard)) == (2, 9)
    assert (await (await client.get("/events/dead")).json())["dead_letters"] == []


async def test_a_cancelled_bill_releases_its_stock_even_when_the_cancel_comes_first(
    client: Client, redis: aioredis.Redis
) -> None:
    monitor = await product(client, "Monitor", 199, 7)
    bus = EventBus(redis)

    def cancel(bill_id: int) -> Event:
        data = {"bill_id": bill_id, "cause": "cancelled",
                "lines": [{"product_id": monitor, "quantity": 3}]}  # fmt: skip
        return Event("bill.cancelled", "billing", data)

    await bus.publish(bill((monitor, 3), bill_id=1))
    await answers(redis, "stock.reserved", 1)
    assert await quantity(client, monitor) == 4
    await bus.publish(cancel(1))
    await bus.publish(cancel(1))  # sent again: released once, answered again
    released = await answers(redis, "stock.released", 2)
    assert released == [{"bill_id": 1, "lines": [{"product_id": monitor, "quantity": 3}]},
                        {"bill_id": 1, "lines": []}]  # fmt: skip
    assert await quantity(client, monitor) == 7

    await bus.publish(cancel(2))  # the cancel overtook its bill: the bill must reserve nothing
    await answers(redis, "stock.released", 3)
    await bus.publish(bill((monitor, 3), bill_id=2))
    await wait_until(lambda: _handled(client, 5), 10, message="the late bill handled")
    assert await quantity(client, monitor) == 7
    assert len(await redis.xrange(Keys().stream("stock.reserved"))) == 1

    await bus.publish(Event("bill.created", "billing", {"bill_id": 3}))  # malformed: a dead letter
    letters = await wait_until(
        lambda: _dead(client), 10, message="the malformed event dead-lettered"
    )
    assert "data has no 'lines' array" in letters[0]["error"]


async def _dead(client: Client) -> list[Any]:
    return list((await (await client.get("/events/dead")).json())["dead_letters"])


async def _quantity_is(client: Client, product_id: int, expected: int) -> bool:
    return await quantity(client, product_id) == expected


async def test_the_low_stock_threshold_follows_configsvc_without_a_restart(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    make_service: MakeClient,
    redis_url: str,
    tmp_path: Path,
) -> None:
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "inventory.toml").write_text("[inventory]\nlow_stock_threshold = 5\n")
    settings = configsvc.Settings(
        redis_url=redis_url,
        config_dir=str(config_dir),
        data_dir=str(tmp_path / "configsvc"),
        token=Secret("t"),
    )
    config = await aiohttp_client(configsvc.build_app(settings))
    client = await make_service(SERVICE, config_url=str(config.make_url("")).rstrip("/"))
    monitor = await product(client, "Monitor", 199, 4)
    assert (await (await client.get(f"/products/{monitor}")).json())["low_stock"] is True

    async def put(threshold: Any) -> None:
        response = await config.put(
            "/v1/documents/inventory",
            json={"inventory": {"low_stock_threshold": threshold}},
            headers={"Authorization": "Bearer t"},
        )
        assert response.status in (200, 201)

    async def low() -> bool:
        return bool((await (await client.get(f"/products/{monitor}")).json())["low_stock"])

    await put(3)
    await wait_until(lambda: _not(low()), 5, message="threshold 3 applied")
    await put(-1)  # refused by the service: the threshold in force stays
    health = await (await client.get("/health")).json()
    await wait_until(lambda: _rejected(client), 5, message="-1 rejected")
    assert await low() is False
    assert health["config"]["source"] == "server"
    # Reported by readiness (alive all along), until a version it can use arrives.
    response = await client.get("/health/ready")
    ready = await response.json()
    assert (response.status, ready["failing"]) == (503, ["config"])
    assert ready["checks"]["database"]["status"] == "UP"
    assert "low_stock_threshold" in ready["checks"]["config"]["detail"]["rejected"]["reason"]
    assert (await client.get("/health/live")).status == 200
    await put(10)
    await wait_until(low, 5, message="threshold 10 applied")
    assert (await client.get("/health/ready")).status == 200


async def _not(value: Awaitable[bool]) -> bool:
    return not await value


async def _rejected(client: Client) -> bool:
    health = await (await client.get("/health")).json()
    return health["config"]["last_rejection"] is not None


async def test_a_bill_whose_consumer_is_killed_mid_handling_is_taken_once_by_another_instance(
    components: ComponentFactory, redis: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    data = tmp_path / "inventory"
    env = {"REDIS_URL": redis_url, "INVENTORY_VISIBILITY_TIMEOUT": "1"}
    first = await components.start(
        "services.inventory", "--data-dir", str(data), "--instance-id", "inventory-a", env=env
    )
    async with ClientSession() as http:
        async with http.post(
            f"{first.url}/products", json={"name": "Monitor", "price": 199, "quantity": 10}
        ) as response:
            assert response.status == 201
        # Hold the database's write lock, so that the handler blocks inside its transaction.
        lock = sqlite3.connect(data / "inventory.db", isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")
        try:
            await EventBus(redis).publish(bill((1, 4)))

            async def pending_on_first() -> bool:
                summary = await redis.xpending(Keys().stream("bill.created"), "inventory")
                return any(c["name"] == "inventory-a" for c in summary["consumers"])

            await wait_until(pending_on_first, 10, message="the bill delivered to inventory-a")
            first.kill()  # SIGKILL while the handler waits for the lock
        finally:
            lock.rollback()
            lock.close()
        second = await components.start(
            "services.inventory", "--data-dir", str(data), "--instance-id", "inventory-b", env=env
        )

        async def stock() -> int:
            async with http.get(f"{second.url}/products/1") as response:
                return int((await response.json())["quantity"])

        await wait_until(lambda: _equals(stock(), 6), 15, message="the bill claimed again")
        async with http.get(f"{second.url}/health") as response:
            consumer = (await response.json())["events"]["consumer"]
        assert (consumer["consumer"], consumer["handled"]) == ("inventory-b", 1)
        assert await stock() == 6


async def _equals(value: Awaitable[Any], expected: Any) -> bool:
    return await value == expected


async def test_given_a_jwks_url_inventory_checks_tokens_itself_anyone_reads_admins_write(
    make_service: MakeClient,
    aiohttp_client: Callable[..., Awaitable[Client]],
    redis_url: str,
    tmp_path: Path,
) -> None:
    settings = AuthSettings(
        redis_url=redis_url,
        data_dir=str(tmp_path / "auth"),
        seed_users=Secret("admin:admin-pw:admin;alice:alice-pw:user"),
        password_cost=10,
    )
    auth = await aiohttp_client(build_auth_app(settings))
    client = await make_service(SERVICE, jwks_url=str(auth.make_url("/.well-known/jwks.json")))

    async def bearer(username: str) -> dict[str, str]:
        response = await auth.post(
            "/token", json={"username": username, "password": f"{username}-pw"}
        )
        return {"Authorization": f"Bearer {(await response.json())['access_token']}"}

    admin, alice = await bearer("admin"), await bearer("alice")
    body = {"name": "Webcam", "price": 59.5, "quantity": 12}

    anonymous = await client.post("/products", json=body)
    assert (anonymous.status, anonymous.headers["WWW-Authenticate"]) == (
        401,
        'Bearer realm="essaim"',
    )
    assert (await anonymous.json())["detail"] == "this route needs a bearer token"
    refused = await client.post("/products", json=body, headers=alice)
    assert refused.status == 403
    assert (await refused.json())["detail"] == "this route needs one of the roles: admin"
    forged = await client.post("/products", json=body, headers={"Authorization": "Bearer x.y.z"})
    assert forged.status == 401
    assert 'error="invalid_token"' in forged.headers["WWW-Authenticate"]
    created = await client.post("/products", json=body, headers=admin)
    assert created.status == 201
    product_id = (await created.json())["id"]
    assert (await client.patch(f"/products/{product_id}", json={"quantity": 3})).status == 401
    assert (await client.delete(f"/products/{product_id}", headers=alice)).status == 403

    assert (await client.get("/products")).status == 200
    assert (await client.head(f"/products/{product_id}")).status == 200
    assert (await client.get(f"/products/{product_id}")).status == 200
    assert (await client.get("/events/outbox")).status == 401  # not listed: a token is needed
    assert (await client.get("/events/outbox", headers=alice)).status == 200
    health = await client.get("/health")
    assert health.status == 200
    assert (await health.json())["tokens"]["keys"] == 2  # the signing key and the next one
    assert (await client.get("/metrics")).status == 200


async def test_replaying_or_discarding_dead_letters_needs_the_admin_role(
    make_service: MakeClient,
    aiohttp_client: Callable[..., Awaitable[Client]],
    redis: aioredis.Redis,
    redis_url: str,
    tmp_path: Path,
) -> None:
    settings = AuthSettings(
        redis_url=redis_url,
        data_dir=str(tmp_path / "auth"),
        seed_users=Secret("admin:admin-pw:admin;alice:alice-pw:user"),
        password_cost=10,
    )
    auth = await aiohttp_client(build_auth_app(settings))
    client = await make_service(
        SERVICE, jwks_url=str(auth.make_url("/.well-known/jwks.json")), max_deliveries=1
    )

    async def bearer(username: str) -> dict[str, str]:
        response = await auth.post(
            "/token", json={"username": username, "password": f"{username}-pw"}
        )
        return {"Authorization": f"Bearer {(await response.json())['access_token']}"}

    admin, alice = await bearer("admin"), await bearer("alice")
    # Malformed (no lines): a dead letter (a shortage or an unknown product is an answer).
    await EventBus(redis).publish(Event("bill.created", "billing", {"bill_id": 99}))

    async def dead() -> list[dict[str, Any]]:
        listed = await client.get("/events/dead", headers=alice)  # a login may look
        return list((await listed.json())["dead_letters"])

    letter = (await wait_until(dead, 10, message="a dead letter"))[0]["id"]
    for action, body in (("replay", None), ("replay", {"ids": [letter]}),
                         ("discard", {"ids": [letter]})):  # fmt: skip
        refused = await client.post(f"/events/dead/{action}", json=body, headers=alice)
        assert refused.status == 403, action
        assert (await refused.json())["detail"] == "this route needs one of the roles: admin"
        assert (await client.post(f"/events/dead/{action}", json=body)).status == 401
    assert [d["id"] for d in await dead()] == [letter]  # nothing was replayed or discarded

    discarded = await client.post("/events/dead/discard", json={"ids": [letter]}, headers=admin)
    assert (discarded.status, await discarded.json()) == (200, {"discarded": 1})
    assert await dead() == []
    replayed = await client.post("/events/dead/replay", headers=admin)
    assert (replayed.status, await replayed.json()) == (200, {"replayed": 0})
