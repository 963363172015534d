"""Spans exported to OpenTelemetry by real processes, as a collector receives them.

Redis, customers, inventory, billing and the gateway run as processes, each
given ``--otel-endpoint`` pointing at a test receiver (:class:`core.testing.OTLPReceiver`)
that decodes each export with the official ``opentelemetry-proto`` classes.
One bill through the gateway must arrive as one trace: the gateway's span,
billing's, its calls to customers and inventory and their spans, the
``bill.created`` event written and handled by inventory's consumer, each
the child of the one before, with the ids of the log lines.
"""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from core.testing import (
    Component,
    ComponentFactory,
    OTLPReceiver,
    ReceivedSpan,
    free_port,
    wait_until,
)
from services.launcher import PORTS, Launcher, LauncherSettings
from services.supervisor import Output

ROOT = Path(__file__).resolve().parents[2]
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CLIENT_SPAN}-01"


def _json_lines(component: Component) -> list[dict[str, Any]]:
    return [orjson.loads(raw) for raw in component.log.splitlines() if raw.startswith("{")]


def _traced(component: Component, logger: str) -> list[dict[str, Any]]:
    return [
        line for line in _json_lines(component)
        if line.get("logger") == logger and line.get("trace_id") == TRACE_ID
    ]  # fmt: skip


async def _post(url: str, body: Any, **headers: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, json=body, headers=headers) as response,
    ):
        return response.status, await response.json(content_type=None)


def _one(spans: list[ReceivedSpan], what: str) -> ReceivedSpan:
    assert len(spans) == 1, f"{what}: expected one span, got {spans}"
    return spans[0]


async def test_one_bill_through_the_gateway_is_one_trace_of_linked_spans_with_the_logs_ids(
    redis_url: str, components: ComponentFactory, otlp_receiver: OTLPReceiver, tmp_path: Path
) -> None:
    env = {"REDIS_URL": redis_url}
    otel = ("--otel-endpoint", otlp_receiver.url, "--log-format", "json")

    def service(name: str) -> Any:
        return components.start(
            f"services.{name}", "--data-dir", str(tmp_path / name), "--instance-id", f"{name}-1",
            "--outbox-poll", "0.2", *otel, env=env,
        )  # fmt: skip

    admin = free_port()
    customers, inventory, billing, gateway = await asyncio.gather(
        service("customers"), service("inventory"), service("billing"),
        components.start(
            "gateway", "--host", "127.0.0.1", "--admin-port", str(admin), "--workers", "1",
            "--access-log", "on", *otel, env=env, health_port=admin,
        ),
    )  # fmt: skip
    status, customer = await _post(
        f"{customers.url}/customers", {"name": "Ada", "email": "ada@example.com"}
    )
    assert status == 201
    status, product = await _post(
        f"{inventory.url}/products", {"name": "Monitor", "price": 199, "quantity": 7}
    )
    assert status == 201

    bill_body = {"customer_id": customer["id"], "lines": [{"product_id": product["id"], "quantity": 1}]}  # fmt: skip

    async def billed() -> bool:
        # Through the gateway, once it routes to billing (the registry snapshot has it).
        status, _ = await _post(
            f"{gateway.url}/billing/bills", bill_body, traceparent=TRACEPARENT,
            **{"X-Request-ID": "otel-bill-1"},
        )  # fmt: skip
        assert status in (202, 503), status
        return status == 202

    await wait_until(
        billed, timeout=15, interval=0.2, message="a bill accepted through the gateway"
    )

    def in_trace(**wanted: Any) -> list[ReceivedSpan]:
        return otlp_receiver.find(trace_id=TRACE_ID, **wanted)

    def arrived() -> bool:
        # Each process exports on its own schedule (at most a second apart).
        return all((
            in_trace(kind="server", service="gateway", status="unset"),
            in_trace(kind="server", service="billing", name="POST /bills"),
            in_trace(kind="server", service="customers"),
            in_trace(kind="server", service="inventory"),
            len(in_trace(kind="client", service="billing")) >= 2,
            in_trace(kind="producer", name="create bill.created"),
            in_trace(kind="consumer", service="inventory", name="process bill.created"),
        ))  # fmt: skip

    await wait_until(
        arrived, timeout=20, message="the spans of the bill's request and its event at the receiver"
    )

    # The gateway's span: the client's span is its parent.
    edge = _one(in_trace(kind="server", service="gateway", status="unset"), "gateway")
    assert edge.parent_id == CLIENT_SPAN
    assert edge.parent_remote is True
    assert edge.name == "POST /billing"
    assert edge.attributes["http.request.method"] == "POST"
    assert edge.attributes["url.path"] == "/billing/bills"
    assert edge.attributes["http.response.status_code"] == 202
    assert edge.attributes["essaim.service"] == "billing"
    assert edge.attributes["essaim.route"] == "discovery"
    assert edge.attributes["essaim.instance"].startswith("127.0.0.1:")
    assert edge.scope == "essaim"
    assert edge.start_ns < edge.end_ns

    # billing's span is the gateway's child.
    bill = _one(in_trace(kind="server", service="billing", name="POST /bills"), "billing")
    assert bill.parent_id == edge.span_id
    assert bill.instance == "billing-1"
    assert bill.attributes["http.route"] == "/bills"
    assert bill.attributes["http.response.status_code"] == 202

    # Each of billing's calls is a client span under billing's, the parent of the callee's span.
    for callee, path in (("customers", f"/customers/{customer['id']}"),
                         ("inventory", f"/products/{product['id']}")):  # fmt: skip
        served = _one(
            [
                s
                for s in in_trace(kind="server", service=callee)
                if s.attributes["url.path"] == path
            ],
            f"{callee} serving {path}",
        )
        call = _one(
            [
                s
                for s in in_trace(kind="client", service="billing")
                if s.span_id == served.parent_id
            ],
            f"billing's call that {callee} served",
        )
        assert call.parent_id == bill.span_id
        assert call.parent_remote is False
        assert call.name == f"GET {callee}"
        assert call.attributes["peer.service"] == callee
        assert call.attributes["http.response.status_code"] == 200
        assert served.start_ns >= call.start_ns
        assert served.end_ns <= call.end_ns

    # The event: written in billing's span, handled by inventory's consumer as its child.
    made = _one(in_trace(kind="producer", name="create bill.created"), "the event's producer span")
    assert (made.service, made.parent_id) == ("billing", bill.span_id)
    assert made.attributes["messaging.destination.name"] == "bill.created"
    handled = _one(
        in_trace(kind="consumer", service="inventory", name="process bill.created"), "consumer"
    )
    assert handled.parent_id == made.span_id
    assert handled.parent_remote is True
    assert handled.attributes["messaging.consumer.group.name"] == "inventory"
    assert handled.attributes["messaging.message.id"] == made.attributes["messaging.message.id"]

    # The log lines carry the same ids: each access line and the consumer's line is its span.
    await wait_until(
        lambda: any(line["span_id"] == edge.span_id for line in _traced(gateway, "essaim.access")),
        timeout=5,
        message="the gateway's access line (written in batches)",
    )
    assert [line["span_id"] for line in _traced(billing, "essaim.access")] == [bill.span_id]
    consumer_lines = [
        line for line in _traced(inventory, "essaim.events") if line["event_type"] == "bill.created"
    ]
    assert [line["span_id"] for line in consumer_lines] == [handled.span_id]
    for component, callee in ((customers, "customers"), (inventory, "inventory")):
        logged = {line["span_id"] for line in _traced(component, "essaim.access")}
        assert {s.span_id for s in in_trace(kind="server", service=callee)} <= logged


def test_export_asked_for_without_the_extra_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """The SDK missing (imports of ``opentelemetry`` fail): the component says so and exits 2."""
    for main, args in (
        ("from gateway import main", "['--otel-endpoint', 'http://127.0.0.1:4318']"),
        ("from services.customers.service import SERVICE;"
         " from core.service.scaffold import run_service;"
         " main = lambda argv: run_service(SERVICE, argv)",
         f"['--otel-endpoint', 'http://127.0.0.1:4318', '--data-dir', {str(tmp_path)!r}]"),
    ):  # fmt: skip
        done = subprocess.run(
            [sys.executable, "-c",
             f"import sys; sys.modules['opentelemetry'] = None; {main}; sys.exit(main({args}))"],
            cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 2, done.stdout + done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert "ESSAIM_OTEL_ENDPOINT" in lines[0]
        assert "pip install 'essaim[otel]'" in lines[0]


def test_the_launcher_gives_its_endpoint_to_the_gateway_and_every_service(tmp_path: Path) -> None:
    url = "http://127.0.0.1:4318"
    ports = dict.fromkeys(PORTS, 0)  # any free ones: the machine's 8080 may be taken
    settings = LauncherSettings(
        run_dir=str(tmp_path / "run"), redis_url="redis://127.0.0.1:1/0", otel_endpoint=url,
        **ports,
    )  # fmt: skip
    launcher = Launcher(settings, Output(io.StringIO(), 12))
    (tmp_path / "run").mkdir()
    launcher.plan(private_redis=False)
    launcher.close()  # the ports it bound for configsvc, the registry and auth
    given = {}
    for child in launcher.supervisor.children:
        argv = child.argv
        given[child.name] = argv[argv.index("--otel-endpoint") + 1] if "--otel-endpoint" in argv else None  # fmt: skip
    assert given == {
        "configsvc": None, "registry": None, "auth": url, "gateway": url, "customers": url,
        "inventory-1": url, "inventory-2": url, "billing": url,
    }  # fmt: skip
