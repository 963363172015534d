"""The registry's Eureka API over real HTTP and a real Redis: shapes, statuses, refusals, tokens."""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

import registry
from core.redis import Redis, connect
from core.settings import Secret
from core.testing import wait_until
from tests.test_registry import dump

Client = TestClient[Any, Any]
JSON = {"Accept": "application/json"}


@pytest.fixture
async def make_client(
    aiohttp_client: Callable[..., Awaitable[Client]], redis_url: str
) -> Callable[..., Awaitable[Client]]:
    async def make(**overrides: Any) -> Client:
        overrides.setdefault("sweep_interval", 0.1)
        settings = registry.Settings(redis_url=redis_url, **overrides)
        return await aiohttp_client(registry.build_app(settings))

    return make


@pytest.fixture
async def client(make_client: Callable[..., Awaitable[Client]]) -> Client:
    return await make_client()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    r = connect(redis_url)
    yield r
    await r.aclose()


def body(app: str = "BILLING", iid: str = "10.0.0.5:billing:8080", **over: Any) -> dict[str, Any]:
    """A registration as Spring's and py-eureka-client's codecs write it."""
    doc: dict[str, Any] = {
        "instanceId": iid,
        "hostName": "billing-1.local",
        "app": app,
        "ipAddr": "10.0.0.5",
        "status": "UP",
        "overriddenstatus": "UNKNOWN",
        "port": {"$": 8080, "@enabled": "true"},
        "securePort": {"$": 8443, "@enabled": "false"},
        "countryId": 1,
        "dataCenterInfo": {
            "@class": "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo",
            "name": "MyOwn",
        },
        "leaseInfo": {"renewalIntervalInSecs": 5, "durationInSecs": 15},
        "metadata": {"management.port": "8080", "zone": "a"},
        "homePageUrl": "http://billing-1.local:8080/",
        "vipAddress": "billing",
        "lastDirtyTimestamp": "1700000000000",
    }
    doc.update(over)
    return {"instance": doc}


async def register(client: Client, app: str = "BILLING", **over: Any) -> ClientResponse:
    return await client.post(f"/eureka/apps/{app}", json=body(app, **over))


async def native(client: Client, service: str) -> list[dict[str, Any]]:
    resp = await client.get(f"/v1/services/{service}?all=1")
    if resp.status == 404:
        return []
    return list((await resp.json())["instances"])


async def test_a_eureka_registration_is_a_native_instance(client: Client) -> None:
    resp = await register(client)
    assert resp.status == 204
    [inst] = await native(client, "billing")
    assert (inst["id"], inst["host"], inst["port"], inst["scheme"]) == (
        "10.0.0.5:billing:8080",
        "10.0.0.5",
        8080,
        "http",
    )
    assert inst["status"] == "UP"
    assert inst["ttl"] == 15
    assert inst["metadata"]["management.port"] == "8080"
    assert inst["metadata"]["eureka.hostName"] == "billing-1.local"


async def test_applications_as_json_in_eureka_shapes(client: Client) -> None:
    await register(client)
    resp = await client.get("/eureka/apps", headers=JSON)
    assert resp.status == 200
    apps = (await resp.json())["applications"]
    assert apps["apps__hashcode"] == "UP_1_"
    assert int(apps["versions__delta"]) >= 1
    [app] = apps["application"]
    assert app["name"] == "BILLING"
    [inst] = app["instance"]
    assert inst["app"] == "BILLING"
    assert inst["hostName"] == "billing-1.local"
    assert inst["port"] == {"$": 8080, "@enabled": "true"}
    assert inst["securePort"]["@enabled"] == "false"
    assert inst["dataCenterInfo"]["@class"].endswith("DefaultDataCenterInfo")
    assert inst["leaseInfo"]["durationInSecs"] == 15
    assert inst["leaseInfo"]["renewalIntervalInSecs"] == 5
    assert inst["metadata"] == {"management.port": "8080", "zone": "a"}
    assert inst["lastDirtyTimestamp"] == "1700000000000"


async def test_applications_as_xml_by_default(client: Client) -> None:
    await register(client)
    resp = await client.get("/eureka/apps/")
    assert resp.status == 200
    assert resp.content_type == "application/xml"
    root = ET.fromstring(await resp.read())
    assert root.tag == "applications"
    assert root.findtext("apps__hashcode") == "UP_1_"
    inst = root.find("application/instance")
    assert inst is not None
    port = inst.find("port")
    assert port is not None
    assert (port.text, port.get("enabled")) == ("8080", "true")
    center = inst.find("dataCenterInfo")
    assert center is not None
    assert center.get("class", "").endswith("DefaultDataCenterInfo")
    assert inst.findtext("metadata/management.port") == "8080"
    assert inst.findtext("overriddenstatus") == "UNKNOWN"


async def test_a_native_instance_is_seen_by_eureka_clients(client: Client) -> None:
    await client.put(
        "/v1/services/customers/instances/c1",
        json={"host": "127.0.0.1", "port": 9001, "ttl": 9},
    )
    resp = await client.get("/eureka/apps/CUSTOMERS/c1", headers=JSON)
    assert resp.status == 200
    inst = (await resp.json())["instance"]
    assert (inst["app"], inst["ipAddr"], inst["port"]["$"], inst["status"]) == (
        "CUSTOMERS",
        "127.0.0.1",
        9001,
        "UP",
    )
    assert inst["leaseInfo"]["durationInSecs"] == 9
    assert inst["leaseInfo"]["renewalIntervalInSecs"] == 3
    assert inst["vipAddress"] == "customers"
    resp = await client.get("/eureka/instances/c1")
    assert ET.fromstring(await resp.read()).findtext("app") == "CUSTOMERS"
    resp = await client.get("/eureka/apps/customers")
    assert ET.fromstring(await resp.read()).findtext("name") == "CUSTOMERS"


async def test_renew_answers_200_then_404_once_gone(client: Client) -> None:
    await register(client)
    url = "/eureka/apps/BILLING/10.0.0.5:billing:8080"
    resp = await client.put(url + "?status=UP&lastDirtyTimestamp=1700000000000")
    assert resp.status == 200
    assert (await client.delete(url)).status == 200
    assert await native(client, "billing") == []
    resp = await client.put(url + "?status=UP&lastDirtyTimestamp=1700000000000")
    assert resp.status == 404
    assert (await client.delete(url)).status == 404


async def test_renew_with_a_newer_dirty_timestamp_asks_to_register_again(client: Client) -> None:
    await register(client)
    resp = await client.put(
        "/eureka/apps/BILLING/10.0.0.5:billing:8080?status=UP&lastDirtyTimestamp=1700000009999"
    )
    assert resp.status == 404


async def test_out_of_service_override_leaves_routing_and_survives_re_registration(
    client: Client,
) -> None:
    await register(client)
    url = "/eureka/apps/BILLING/10.0.0.5:billing:8080/status"
    assert (await client.put(url + "?value=OUT_OF_SERVICE")).status == 200
    [inst] = await native(client, "billing")
    assert inst["status"] == "OUT_OF_SERVICE"
    up = await (await client.get("/v1/services/billing")).json()
    assert up["instances"] == []
    assert (await register(client)).status == 204  # the client says UP again
    [inst] = await native(client, "billing")
    assert inst["status"] == "OUT_OF_SERVICE"
    resp = await client.get("/eureka/apps/BILLING", headers=JSON)
    [shown] = (await resp.json())["application"]["instance"]
    assert (shown["status"], shown["overriddenStatus"]) == ("OUT_OF_SERVICE", "OUT_OF_SERVICE")
    assert (await client.delete(url)).status == 200
    [inst] = await native(client, "billing")
    assert inst["status"] == "UP"


async def test_unknown_status_is_kept_out_of_routing_and_shown_as_unknown(client: Client) -> None:
    await register(client, status="UNKNOWN")
    [inst] = await native(client, "billing")
    assert inst["status"] == "STARTING"
    resp = await client.get("/eureka/apps", headers=JSON)
    apps = (await resp.json())["applications"]
    assert apps["apps__hashcode"] == "UNKNOWN_1_"


async def test_delta_lists_recent_changes_with_their_action(client: Client) -> None:
    await register(client)
    await register(client, iid="10.0.0.6:billing:8080", ipAddr="10.0.0.6")
    await client.delete("/eureka/apps/BILLING/10.0.0.6:billing:8080")

    async def actions() -> dict[str, str]:
        resp = await client.get("/eureka/apps/delta", headers=JSON)
        apps = (await resp.json())["applications"]
        return {
            i["instanceId"]: i["actionType"] for a in apps["application"] for i in a["instance"]
        }

    await wait_until(lambda: _eq(actions, {"10.0.0.5:billing:8080": "ADDED",
                                           "10.0.0.6:billing:8080": "DELETED"}), 5)  # fmt: skip
    resp = await client.get("/eureka/apps/delta")
    assert ET.fromstring(await resp.read()).findtext("apps__hashcode") == "UP_1_"


async def _eq(get: Callable[[], Awaitable[Any]], want: Any) -> bool:
    return bool(await get() == want)


@pytest.mark.parametrize(
    ("app", "payload", "status"),
    [
        ("BILLING", {"nope": 1}, 400),
        ("BILLING", {"instance": "x"}, 400),
        ("BAD_NAME", body(), 422),
        ("BILLING", body(port={"$": "http", "@enabled": "true"}), 400),
        ("BILLING", body(port={"$": 8080, "@enabled": "false"}), 422),
        ("BILLING", body(status="SLEEPY"), 422),
        ("BILLING", body(ipAddr="not a host!", hostName=""), 422),
        ("BILLING", body(leaseInfo={"durationInSecs": 100000}), 422),
        ("BILLING", body(metadata={"eureka.status": "UP"}), 422),
        ("BILLING", body(instanceId="", hostName="", ipAddr="10.0.0.1"), 422),
        ("BILLING", body(leaseInfo={"renewalIntervalInSecs": "often"}), 400),
        ("BILLING", body(port={"$": "\u00b2", "@enabled": "true"}), 400),
    ],
)
async def test_bad_registrations_are_problems_and_store_nothing(
    client: Client, redis: Redis, app: str, payload: Any, status: int
) -> None:
    before = await dump(redis)
    resp = await client.post(f"/eureka/apps/{app}", json=payload)
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/problem+json"
    assert await dump(redis) == before


async def test_odd_values_never_break_a_read(client: Client) -> None:
    await register(client)
    iid = "10.0.0.5:billing:8080"
    resp = await client.patch(
        f"/v1/services/billing/instances/{iid}",
        json={"metadata": {"eureka.renewalIntervalInSecs": "x", "eureka.securePort": "\u00b2"}},
    )
    assert resp.status == 200
    resp = await client.get("/eureka/apps", headers=JSON)
    assert resp.status == 200
    [inst] = (await resp.json())["applications"]["application"][0]["instance"]
    assert inst["leaseInfo"]["renewalIntervalInSecs"] == 5  # TTL/3
    resp = await client.put(f"/eureka/apps/BILLING/{iid}?lastDirtyTimestamp=\u00b2")
    assert resp.status == 200


async def test_a_bad_override_value_is_refused(client: Client) -> None:
    await register(client)
    resp = await client.put("/eureka/apps/BILLING/10.0.0.5:billing:8080/status?value=ASLEEP")
    assert resp.status == 422
    resp = await client.put("/eureka/apps/BILLING/10.0.0.5:billing:8080/status")
    assert resp.status == 400


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


async def test_writes_take_the_token_as_basic_password(
    make_client: Callable[..., Awaitable[Client]], redis: Redis
) -> None:
    client = await make_client(token=Secret("s3cret"))
    before = await dump(redis)
    resp = await client.post("/eureka/apps/BILLING", json=body())
    assert resp.status == 401
    assert "Basic" in resp.headers["WWW-Authenticate"]
    resp = await client.post("/eureka/apps/BILLING", json=body(), headers=basic("eureka", "nope"))
    assert resp.status == 401
    assert await dump(redis) == before
    resp = await client.post("/eureka/apps/BILLING", json=body(), headers=basic("any", "s3cret"))
    assert resp.status == 204
    url = "/eureka/apps/BILLING/10.0.0.5:billing:8080"
    assert (await client.put(url)).status == 401
    assert (await client.put(url, headers=basic("x", "s3cret"))).status == 200
    assert (await client.get("/eureka/apps")).status == 200  # reads are public, as natively
    # The native API takes the same credentials.
    resp = await client.put(
        "/v1/services/billing/instances/n1",
        json={"host": "127.0.0.1", "port": 1},
        headers=basic("x", "s3cret"),
    )
    assert resp.status == 201
