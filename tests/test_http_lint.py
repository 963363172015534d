"""REDbot, an HTTP linter, finds nothing bad in what the components answer (issue 10).

A system started by ``python -m services`` on loopback; REDbot
(:mod:`tests.redbot_check`) fetches representative URLs of the registry,
configsvc, the gateway (its traffic and admin ports) and a service, probes
them (conditional requests, ranges, HEAD, compression) and grades each
finding. No finding may be BAD. A control server that sends more body than
its ``Content-Length`` says shows that the harness does see BAD findings.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from core.testing import free_port
from tests.services.test_launcher import ROOT, start_launcher, up


@pytest.fixture
async def liar() -> AsyncIterator[str]:
    """A server whose every answer says 3 bytes of body and sends 6."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n"
                     b"Connection: close\r\n\r\nabcdef")  # fmt: skip
        await writer.drain()
        writer.close()

    port = free_port()
    server = await asyncio.start_server(answer, "127.0.0.1", port)
    yield f"http://127.0.0.1:{port}/"
    server.close()
    await server.wait_closed()


async def redbot(*urls: str) -> dict[str, dict[str, object]]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.redbot_check", *urls,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 180)
    assert process.returncode == 0, err.decode()
    report: dict[str, dict[str, object]] = json.loads(out)
    return report


async def test_redbot_finds_nothing_bad_in_any_component(tmp_path: Path, liar: str) -> None:
    async with start_launcher(tmp_path, "--inventory-instances", "1") as launcher:
        await up(launcher)
        ports = launcher.ports
        service = next(
            m.group(1)
            for m in (re.search(r"inventory-1\s+pid \d+\s+(\S+)", line) for line in launcher.lines)
            if m
        )
        registry = f"http://127.0.0.1:{ports['registry']}"
        configsvc = f"http://127.0.0.1:{ports['configsvc']}"
        gateway = f"http://127.0.0.1:{ports['gateway']}"
        admin = f"http://127.0.0.1:{ports['admin']}"
        urls = [
            f"{registry}/v1/services", f"{registry}/v1/services/inventory",
            f"{registry}/v1/services/Bad_Name", f"{registry}/health", f"{registry}/metrics",
            f"{configsvc}/v1/documents/billing", f"{configsvc}/v1/documents/billing?format=toml",
            f"{configsvc}/v1/documents/billing/history", f"{configsvc}/v1/config/billing/default",
            f"{configsvc}/v1/documents/none", f"{configsvc}/health",
            f"{gateway}/inventory/products", f"{gateway}/inventory/products/1",
            f"{gateway}/customers/customers", f"{gateway}/auth/.well-known/jwks.json",
            f"{gateway}/nowhere/at/all", f"{admin}/routes", f"{admin}/health", f"{admin}/metrics",
            f"{service}/products/1", f"{service}/products/999", f"{service}/health",
            liar,
        ]  # fmt: skip
        report = await redbot(*urls)

    assert all(report[url]["done"] for url in urls), report
    control = [n["id"] for n in report.pop(liar)["notes"] if n["level"] == "BAD"]  # type: ignore[attr-defined]
    assert control == ["EXTRA_DATA"]
    bad = {
        url: [f"{n['id']}: {n['summary']}" for n in result["notes"] if n["level"] == "BAD"]  # type: ignore[attr-defined]
        for url, result in report.items()
    }
    assert {url: notes for url, notes in bad.items() if notes} == {}
    statuses = {url: result["status"] for url, result in report.items()}
    assert statuses[f"{gateway}/customers/customers"] == 401
    assert statuses[f"{registry}/v1/services/Bad_Name"] == 422
    assert statuses[f"{gateway}/inventory/products/1"] == 200
