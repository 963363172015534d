"""Helpers for the services' tests: a service's app in-process on real HTTP, and its database."""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from core.service.scaffold import Service, ServiceSettings, build_app

Client = TestClient[Any, Any]
MakeClient = Callable[..., Awaitable[Client]]


@pytest.fixture
def make_service(
    aiohttp_client: Callable[..., Awaitable[Client]], redis_url: str, tmp_path: Path
) -> MakeClient:
    """``await make_service(SERVICE, **settings)``: the service on a loopback port, with its client.

    Its database is in ``tmp_path / name``; settings default to short
    intervals. It is not registered (registration starts with the process's
    listener, see ``tests/core/service/test_scaffold.py``).
    """

    async def make(service: Service, **overrides: Any) -> Client:
        values: dict[str, Any] = {
            "redis_url": redis_url,
            "data_dir": str(tmp_path / service.name),
            "instance_id": f"{service.name}-test",
            "visibility_timeout": 0.3,
            "outbox_poll": 0.2,
        }
        values.update(overrides)
        settings = ServiceSettings(**values)
        return await aiohttp_client(build_app(service, settings))

    return make


def rows(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """What another reader of the service's database file sees."""
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()
