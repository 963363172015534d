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
import pytest

from core.service.scaffold import run_service
from core.testing import (
    Component,
    ComponentFactory,
    OTLPReceiver,
    ReceivedSpan,
    free_port,
    wait_until,
)
from core.trace import ratio_bound, sampled_by_ratio
from services.customers.service import SERVICE as CUSTOMERS
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


#: The spans of one bill, as (service, kind, name): the request, billing's calls, and the
#: saga's two events (bill.created to inventory, stock.reserved back to billing).
BILL_SPANS = {
    ("gateway", "server", "POST /billing"), ("billing", "server", "POST /bills"),
    ("billing", "client", "GET customers"), ("customers", "server", "GET /customers/{id}"),
    ("billing", "client", "GET inventory"), ("inventory", "server", "GET /products/{id}"),
    ("billing", "producer", "create bill.created"),
    ("inventory", "consumer", "process bill.created"),
    ("inventory", "producer", "create stock.reserved"),
    ("billing", "consumer", "process stock.reserved"),
}  # fmt: skip


async def test_head_sampling_keeps_or_drops_each_bills_trace_whole_across_processes(
    redis_url: str, components: ComponentFactory, otlp_receiver: OTLPReceiver, tmp_path: Path
) -> None:
    """Gateways sample at 0.5 and 0; the services (at the default 1.0) obey what they are sent.

    Every span of one bill, from the gateway to inventory's event consumer,
    is exported or none is; which ones, the trace id says, as OpenTelemetry's
    TraceIdRatioBased would; a client's traceparent keeps its own decision.
    """
    env = {"REDIS_URL": redis_url}
    otel = ("--otel-endpoint", otlp_receiver.url, "--log-format", "json")

    def service(name: str) -> Any:
        return components.start(
            f"services.{name}", "--data-dir", str(tmp_path / name), "--instance-id", f"{name}-1",
            "--outbox-poll", "0.2", *otel, env=env,
        )  # fmt: skip

    def gateway(ratio: str) -> Any:
        admin = free_port()
        return components.start(
            "gateway", "--host", "127.0.0.1", "--admin-port", str(admin), "--workers", "1",
            "--access-log", "on", "--otel-sample", ratio, *otel, env=env, health_port=admin,
        )  # fmt: skip

    customers, inventory, billing, half, never = await asyncio.gather(
        service("customers"), service("inventory"), service("billing"),
        gateway("0.5"), gateway("0"),
    )  # fmt: skip
    not_sampled = f"00-{'1' * 32}-{CLIENT_SPAN}-00"  # the set-up's trace: recorded nowhere
    status, customer = await _post(
        f"{customers.url}/customers", {"name": "Ada", "email": "ada@example.com"},
        traceparent=not_sampled,
    )  # fmt: skip
    assert status == 201
    status, product = await _post(
        f"{inventory.url}/products", {"name": "Monitor", "price": 199, "quantity": 100},
        traceparent=not_sampled,
    )  # fmt: skip
    assert status == 201
    bill_body = {"customer_id": customer["id"], "lines": [{"product_id": product["id"], "quantity": 1}]}  # fmt: skip

    async def routes(gw: Component) -> bool:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{gw.url}/billing/health", headers={"traceparent": not_sampled}) as resp,
        ):
            return resp.status == 200

    for gw in (half, never):
        await wait_until(lambda gw=gw: routes(gw), timeout=15, interval=0.2, message="routing")

    async def bill(gw: Component, request_id: str, **headers: str) -> None:
        status, _ = await _post(
            f"{gw.url}/billing/bills", bill_body, **{"X-Request-ID": request_id}, **headers
        )
        assert status == 202, (request_id, status)

    for n in range(3):
        await bill(never, f"never-{n}")
    for n in range(16):
        await bill(half, f"half-{n}")
    bound = ratio_bound(0.5)
    # A client's decision wins both ways: "not sampled" on an id the ratio would sample...
    refused = "4bf92f3577b34da6" + "0000000000000001"
    assert sampled_by_ratio(refused, bound)
    await bill(half, "client-00", traceparent=f"00-{refused}-{CLIENT_SPAN}-00")
    # ... and "sampled" on one it would not (sent last: once its spans are in, so are the others').
    kept = "4bf92f3577b34da6" + "ffffffffffffffff"
    assert not sampled_by_ratio(kept, bound)
    await bill(half, "client-01", traceparent=f"00-{kept}-{CLIENT_SPAN}-01")

    def shape(trace_id: str) -> set[tuple[str, str, str]]:
        return {(s.service, s.kind, s.name) for s in otlp_receiver.find(trace_id=trace_id)}

    await wait_until(
        lambda: shape(kept) >= BILL_SPANS, timeout=20, message="the client-sampled bill's spans"
    )

    def bills(gw: Component) -> dict[str, str]:
        return {
            line["request_id"]: line["trace_id"]
            for line in _json_lines(gw)
            if line.get("logger") == "essaim.access" and line["path"] == "/billing/bills"
        }

    await wait_until(
        lambda: len(bills(half)) == 18 and len(bills(never)) == 3,
        timeout=5, message="the gateways' access lines (written in batches)",
    )  # fmt: skip
    started = {rid: tid for rid, tid in bills(half).items() if rid.startswith("half-")}
    sampled = {tid for tid in started.values() if sampled_by_ratio(tid, bound)}
    assert 4 <= len(sampled) <= 12, started  # about half of 16
    await wait_until(
        lambda: all(shape(tid) >= BILL_SPANS for tid in sampled),
        timeout=20, message="every span of each sampled bill",
    )  # fmt: skip
    for tid in started.values():
        if tid not in sampled:
            assert shape(tid) == set(), tid  # none of its spans, anywhere
    assert bills(half)["client-00"] == refused
    assert shape(refused) == set()
    edge = _one(otlp_receiver.find(trace_id=kept, service="gateway"), "the gateway's span")
    assert edge.parent_id == CLIENT_SPAN

    # At 0 the gateway samples nothing, and billing (itself at 1.0) got the trace with
    # flags 00: its access line has the gateway's trace id, and no process exported a span.
    billed_traces = {
        line["trace_id"] for line in _json_lines(billing) if line.get("logger") == "essaim.access"
    }
    for tid in bills(never).values():
        assert tid in billed_traces
        assert shape(tid) == set(), tid
    # Nothing else was exported: every trace here started at a gateway or a client.
    assert {s.trace_id for s in otlp_receiver.spans} == sampled | {kept}


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


def test_the_launcher_gives_its_endpoint_and_ratio_to_the_gateway_and_every_service(
    tmp_path: Path,
) -> None:
    url = "http://127.0.0.1:4318"
    ports = dict.fromkeys(PORTS, 0)  # any free ones: the machine's 8080 may be taken
    settings = LauncherSettings(
        run_dir=str(tmp_path / "run"), redis_url="redis://127.0.0.1:1/0", otel_endpoint=url,
        otel_sample=0.25, **ports,
    )  # fmt: skip
    launcher = Launcher(settings, Output(io.StringIO(), 12))
    (tmp_path / "run").mkdir()
    launcher.plan(private_redis=False)
    launcher.close()  # the ports it bound for configsvc, the registry and auth

    def given(flag: str) -> dict[str, str | None]:
        return {
            child.name: child.argv[child.argv.index(flag) + 1] if flag in child.argv else None
            for child in launcher.supervisor.children
        }

    exporting = ("auth", "gateway", "customers", "inventory-1", "inventory-2", "billing", "console")
    assert given("--otel-endpoint") == {
        "configsvc": None, "registry": None, **dict.fromkeys(exporting, url),
    }  # fmt: skip
    assert given("--otel-sample") == {
        "configsvc": None, "registry": None, **dict.fromkeys(exporting, "0.25"),
    }  # fmt: skip


def test_a_bad_sampling_ratio_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway import main as gateway_main
    from services.launcher import main as launcher_main

    def customers_main(argv: list[str]) -> int:
        return run_service(CUSTOMERS, [*argv, "--data-dir", str(tmp_path)])

    for name, main in (("gateway", gateway_main), ("customers", customers_main),
                       ("services", launcher_main)):  # fmt: skip
        for argv, source, said in (
            (["--otel-sample", "1.5"], "ESSAIM_OTEL_SAMPLE", "from 0.0 to 1.0 (0.1: one in ten), got 1.5"),
            (["--otel-sample", "-0.1"], "ESSAIM_OTEL_SAMPLE", "from 0.0 to 1.0 (0.1: one in ten), got -0.1"),
            (["--otel-sample", "ten%"], "--otel-sample", "expected a number, got 'ten%'"),
            (["--otel-sample", "nan"], "--otel-sample", "expected a finite number"),
        ):  # fmt: skip
            assert main(argv) == 2, (name, argv)
            lines = capsys.readouterr().err.strip().splitlines()
            assert len(lines) == 1, (name, argv, lines)
            assert lines[0].startswith(f"{name}: {source}: "), lines[0]
            assert said in lines[0], lines[0]
        monkeypatch.setenv("ESSAIM_OTEL_SAMPLE", "2")
        assert main([]) == 2, name
        assert "ESSAIM_OTEL_SAMPLE: expected the share of new traces to sample" in (
            capsys.readouterr().err
        )
        monkeypatch.delenv("ESSAIM_OTEL_SAMPLE")
