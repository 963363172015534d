"""Who may register what, and where: the registry as a real process (issue 10).

A service's token (``python -m registry token NAME``) writes its own
service only; the operator token writes everything; instance targets on
link-local and metadata addresses, or on the control plane's ports of this
host, are refused whoever asks. A service process given ``--registry-url``
and its token registers through the API, and is refused with another's.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import subprocess
import sys
from typing import Any

import aiohttp
import pytest

from core.testing import ComponentFactory, free_port, wait_until

OPERATOR = "operator-s3cret"


def issued(service: str, operator: str = OPERATOR) -> str:
    """A service token, as an operator gets one: ``python -m registry token NAME``
    (``--status``: the status token)."""
    env = {**os.environ, "REGISTRY_TOKEN": operator}
    done = subprocess.run(
        [sys.executable, "-m", "registry", "token", service],
        capture_output=True, text=True, env=env, timeout=30, check=True,
    )  # fmt: skip
    return done.stdout.strip()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def write(
    http: aiohttp.ClientSession, method: str, url: str, token: str | None, body: Any = None
) -> tuple[int, dict[str, Any]]:
    headers = bearer(token) if token else {}
    async with http.request(method, url, json=body, headers=headers) as r:
        doc = await r.json(content_type=None) if r.status != 204 else {}
        return r.status, doc


async def test_a_service_token_writes_its_own_service_only_and_the_operator_everything(
    components: ComponentFactory, redis_url: str
) -> None:
    reg = await components.start(
        "registry", "--redis-url", redis_url, env={"REGISTRY_TOKEN": OPERATOR}
    )
    billing = issued("billing")
    assert billing.startswith("svc.billing.")
    body = {"host": "127.0.0.1", "port": 9001}
    base = f"{reg.url}/v1/services"
    async with aiohttp.ClientSession() as http:
        own = f"{base}/billing/instances/b1"
        assert (await write(http, "PUT", own, billing, body))[0] == 201
        assert (await write(http, "PUT", own + "/heartbeat", billing))[0] == 204
        assert (await write(http, "PATCH", own, billing, {"status": "DOWN"}))[0] == 200

        other = f"{base}/customers/instances/c1"
        assert (await write(http, "PUT", other, OPERATOR, body))[0] == 201
        for method, url, payload in (
            ("PUT", f"{base}/customers/instances/evil", body),
            ("PUT", other, body),
            ("PUT", other + "/heartbeat", None),
            ("PATCH", other, {"status": "OUT_OF_SERVICE"}),
            ("DELETE", other, None),
        ):
            status, problem = await write(http, method, url, billing, payload)
            assert status == 403, (method, url)
            assert problem["may_write"] == "billing"
            assert problem["detail"] == (
                "this token may register, heartbeat, change and deregister instances of the "
                "service 'billing' only; not 'customers'"
            )
        async with http.get(f"{base}/customers?all=1") as r:
            listed = (await r.json())["instances"]
        assert [(i["id"], i["status"], i["port"]) for i in listed] == [("c1", "UP", 9001)]

        # A token made with another operator secret, or a name swapped into a valid
        # token, is no token at all.
        forged = [issued("customers", "not-the-operator"), billing.replace("billing", "customers")]
        for token in forged:
            status, problem = await write(http, "PUT", other, token, body)
            assert status == 401
            assert "not the registry's operator token" in problem["detail"]
        assert (await write(http, "DELETE", other, OPERATOR))[0] == 204
        assert (await write(http, "DELETE", own, billing))[0] == 204


async def test_a_status_token_changes_any_instance_s_status_and_nothing_else(
    components: ComponentFactory, redis_url: str
) -> None:
    reg = await components.start(
        "registry", "--redis-url", redis_url, env={"REGISTRY_TOKEN": OPERATOR}
    )
    status = issued("--status")
    assert status.startswith("ops.status.")
    base = f"{reg.url}/v1/services"
    body = {"host": "127.0.0.1", "port": 9001}
    async with aiohttp.ClientSession() as http:
        for service in ("billing", "customers"):
            url = f"{base}/{service}/instances/x1"
            assert (await write(http, "PUT", url, OPERATOR, body))[0] == 201
            code, doc = await write(http, "PATCH", url, status, {"status": "OUT_OF_SERVICE"})
            assert (code, doc["instance"]["status"]) == (200, "OUT_OF_SERVICE")
        url = f"{base}/billing/instances/x1"
        for method, target, payload in (
            ("PATCH", url, {"metadata": {"a": "b"}}),
            ("PATCH", url, {"status": "UP", "metadata": {"a": "b"}}),
            ("PUT", f"{base}/billing/instances/x2", body),
            ("PUT", url, body),
            ("PUT", url + "/heartbeat", None),
            ("DELETE", url, None),
        ):
            code, problem = await write(http, method, target, status, payload)
            assert code == 403, (method, target, payload)
            assert problem["detail"].startswith(
                "this token may change the status of any service's instances, nothing else"
            )
        async with http.get(f"{base}/billing?all=1") as r:
            listed = (await r.json())["instances"]
        assert [(i["id"], i["status"], i["metadata"]) for i in listed] == [
            ("x1", "OUT_OF_SERVICE", {})
        ]
        # Made under another operator secret, or a service token's MAC: no token at all.
        for forged in (issued("--status", "not-the-operator"),
                       "ops.status." + issued("status").rpartition(".")[2]):  # fmt: skip
            code, _ = await write(http, "PATCH", url, forged, {"status": "UP"})
            assert code == 401


@pytest.mark.parametrize(
    ("host", "port", "field"),
    [
        ("169.254.169.254", 80, "host"),  # the cloud metadata service
        ("169.254.10.1", 8000, "host"),  # link-local
        ("::ffff:169.254.169.254", 80, "host"),  # the same, IPv4-mapped
        ("fe80::1", 8000, "host"),
        ("fd00:ec2::254", 80, "host"),
        ("100.100.100.200", 80, "host"),
        ("127.0.0.1", "registry", "port"),  # the registry itself
        ("localhost", "registry", "port"),  # by name
        ("127.0.0.1", "redis", "port"),  # its Redis
        ("127.0.0.1", "admin", "port"),  # the gateway's admin port (--reserved-ports)
        ("0.0.0.0", "admin", "port"),
    ],
)
async def test_targets_on_metadata_addresses_or_control_plane_ports_are_refused(
    components: ComponentFactory, redis_url: str, host: str, port: Any, field: str
) -> None:
    admin_port = free_port()
    reg = await components.start(
        "registry", "--redis-url", redis_url, "--reserved-ports", str(admin_port),
        env={"REGISTRY_TOKEN": OPERATOR},
    )  # fmt: skip
    ports = {"registry": reg.port, "redis": int(redis_url.split(":")[-1].split("/")[0]),
             "admin": admin_port}  # fmt: skip
    target = ports.get(port, port)
    url = f"{reg.url}/v1/services/adminx/instances/x1"
    async with aiohttp.ClientSession() as http:
        status, problem = await write(http, "PUT", url, OPERATOR, {"host": host, "port": target})
        assert status == 422, problem
        assert problem["errors"][0]["field"] == field
        assert f"instance target {host}" in problem["detail"]
        async with http.get(f"{reg.url}/v1/services") as r:
            assert (await r.json())["services"] == {}  # nothing stored
        # An ordinary port of this host is fine.
        ok = await write(http, "PUT", url, OPERATOR, {"host": "127.0.0.1", "port": free_port()})
        assert ok[0] == 201


async def test_an_operator_can_allow_a_denied_network(
    components: ComponentFactory, redis_url: str
) -> None:
    reg = await components.start(
        "registry", "--redis-url", redis_url, "--allow-networks", "169.254.10.0/24",
        env={"REGISTRY_TOKEN": OPERATOR},
    )  # fmt: skip
    url = f"{reg.url}/v1/services/edge/instances/e1"
    async with aiohttp.ClientSession() as http:
        assert (await write(http, "PUT", url, OPERATOR, {"host": "169.254.10.7", "port": 80}))[
            0
        ] == 201
        refused = await write(http, "PUT", url, OPERATOR, {"host": "169.254.169.254", "port": 80})
        assert refused[0] == 422


async def test_a_service_registers_through_the_registry_with_its_token_and_not_with_another(
    components: ComponentFactory, redis_url: str, tmp_path: Any
) -> None:
    reg = await components.start(
        "registry", "--redis-url", redis_url, env={"REGISTRY_TOKEN": OPERATOR}
    )
    common = ("--redis-url", redis_url, "--registry-url", reg.url, "--ttl", "3")
    customers = await components.start(
        "services.customers", *common, "--data-dir", str(tmp_path / "c"),
        "--instance-id", "customers-1", env={"CUSTOMERS_REGISTRY_TOKEN": issued("customers")},
    )  # fmt: skip
    impostor = await components.start(
        "services.customers", *common, "--data-dir", str(tmp_path / "i"),
        "--instance-id", "customers-2", env={"CUSTOMERS_REGISTRY_TOKEN": issued("billing")},
    )  # fmt: skip
    async with aiohttp.ClientSession() as http:

        async def listed() -> list[str]:
            async with http.get(f"{reg.url}/v1/services/customers") as r:
                return [i["id"] for i in (await r.json())["instances"]]

        assert await wait_until(listed, 10, message="customers-1 registered") == ["customers-1"]
        await wait_until(lambda: "the registry refuses customers/customers-2 (403)" in impostor.log,
                         10, message="the refusal logged")  # fmt: skip
        async with http.get(f"{impostor.url}/health") as r:
            assert (await r.json())["registered"] is False

        # It heartbeats through the registry: the heartbeat time moves on.
        async def heartbeat() -> str:
            async with http.get(f"{reg.url}/v1/services/customers") as r:
                return str((await r.json())["instances"][0]["last_heartbeat"])

        first = await heartbeat()
        await wait_until(lambda: _differs(heartbeat(), first), 5, message="a heartbeat")
        assert await listed() == ["customers-1"]
        customers.process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(customers.process.wait, 15) == 0
        assert await listed() == []  # deregistered through the registry on the way out
    assert impostor.log.count("the registry refuses") == 1  # logged once, not per attempt


async def _differs(value: Any, other: str) -> bool:
    return bool(await value != other)


async def test_without_a_token_the_registry_warns_that_anyone_can_write(
    components: ComponentFactory, redis_url: str
) -> None:
    reg = await components.start("registry", "--redis-url", redis_url)
    warnings = [line for line in reg.log.splitlines() if "no REGISTRY_TOKEN" in line]
    assert len(warnings) == 1
    assert "anyone who can reach 127.0.0.1:" in warnings[0]
    assert "WARNING" in warnings[0]
    secured = await components.start(
        "registry", "--redis-url", redis_url, env={"REGISTRY_TOKEN": OPERATOR}
    )
    assert "no REGISTRY_TOKEN" not in secured.log


def eureka_instance(app: str, host: str, port: int) -> dict[str, Any]:
    return {
        "instance": {
            "instanceId": f"{host}:{app}:{port}", "hostName": host, "app": app.upper(),
            "ipAddr": host, "status": "UP", "port": {"$": port, "@enabled": "true"},
            "dataCenterInfo": {"@class": "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo",
                               "name": "MyOwn"},
            "leaseInfo": {"renewalIntervalInSecs": 5, "durationInSecs": 15},
        }
    }  # fmt: skip


async def test_the_eureka_api_takes_the_same_scopes_and_targets(
    components: ComponentFactory, redis_url: str
) -> None:
    reg = await components.start(
        "registry", "--redis-url", redis_url, env={"REGISTRY_TOKEN": OPERATOR}
    )
    billing = issued("billing")
    # Eureka clients put the token in the service URL: HTTP Basic, any user name.
    basic = base64.b64encode(f"billing:{billing}".encode()).decode()
    auth = {"Authorization": f"Basic {basic}"}
    async with aiohttp.ClientSession() as http:

        async def post(app: str, host: str, port: int) -> tuple[int, str]:
            body = eureka_instance(app, host, port)
            async with http.post(
                f"{reg.url}/eureka/apps/{app.upper()}", json=body, headers=auth
            ) as r:
                return r.status, await r.text()

        assert (await post("billing", "127.0.0.1", free_port()))[0] == 204
        status, text = await post("customers", "127.0.0.1", free_port())
        assert status == 403
        assert "of the service 'billing' only" in text
        status, text = await post("billing", "169.254.169.254", 80)
        assert status == 422
        assert "denied network 169.254.0.0/16" in text
        async with http.get(f"{reg.url}/v1/services") as r:
            assert {name: s["instances"] for name, s in (await r.json())["services"].items()} == {
                "billing": 1
            }
