"""Many clients in separate processes (``python -m core.config.watch``) converge on a change."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer

import configsvc
from core.config.watch import WatcherProcesses
from core.testing import free_port


@pytest.fixture
async def service(
    aiohttp_server: Callable[..., Awaitable[TestServer]], redis_url: str, tmp_path: Path
) -> str:
    (tmp_path / "billing.toml").write_text('[billing]\ncurrency = "EUR"\n')
    settings = configsvc.Settings(
        redis_url=redis_url, config_dir=str(tmp_path), data_dir=str(tmp_path / "data")
    )
    server = await aiohttp_server(configsvc.build_app(settings))
    return str(server.make_url("")).rstrip("/")


async def put_currency(url: str, currency: str) -> str:
    """Change billing's currency; the merged version the service then serves."""
    async with aiohttp.ClientSession() as session:
        async with session.put(f"{url}/v1/documents/billing",
                               json={"billing": {"currency": currency}}) as resp:  # fmt: skip
            assert resp.status == 200, await resp.text()
        async with session.get(f"{url}/v1/config/billing/default") as resp:
            return str((await resp.json())["version"])


async def test_twenty_client_processes_all_converge_on_each_change(
    service: str, redis_url: str
) -> None:
    watchers = WatcherProcesses(service, "billing", redis_url=redis_url, processes=20)
    try:
        await watchers.start(timeout=60.0)
        assert len(set(watchers.versions().values())) == 1
        for currency in ("CHF", "JPY"):
            version = await put_currency(service, currency)
            times = await watchers.wait_applied(version, timeout=10.0)
            assert len(times) == 20
    finally:
        codes = await watchers.stop()
    assert codes == [0] * 20


def test_fail_fast_watcher_exits_3_with_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "core.config.watch", "--url", f"http://127.0.0.1:{free_port()}",
         "--app", "billing", "--fail-fast", "true", "--retries", "1", "--log-level", "error"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 3
    assert result.stderr.strip().splitlines()[-1].startswith("config_watch: config for billing")


async def test_watcher_prints_the_config_it_starts_with(service: str) -> None:
    watchers = WatcherProcesses(service, "billing", args=["--print-config", "true"])
    try:
        await watchers.start(timeout=30.0)
        start = orjson.loads(watchers.output[0][0])
        assert start["event"] == "start"
        assert start["source"] == "server"
        assert start["config"] == {"billing": {"currency": "EUR"}}
    finally:
        assert await watchers.stop() == [0]
