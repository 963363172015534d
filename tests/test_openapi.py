"""Every API is described by its OpenAPI document, and answers as it says.

For each component: the document at ``/openapi.json`` is valid OpenAPI 3.1
(openapi-spec-validator), every route of the application is in it and every
operation it lists is a route (no drift), and schemathesis, run against the
component as a real process on loopback, finds no 5xx and no answer that
contradicts the document (status, content type, body schema). Bounded:
a few examples per operation, no shrinking.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import schemathesis
from aiohttp import web
from cryptography.fernet import Fernet
from hypothesis import HealthCheck, Phase, given, settings
from openapi_spec_validator import validate
from schemathesis import checks

import configsvc
import gateway
import registry
from core.openapi.spec import drift
from core.proxy import openapi
from core.service.scaffold import build_app
from core.testing import ComponentFactory, RedisServer, free_port
from core.workers.admin import build_admin
from core.workers.supervisor import Supervisor

TOKEN = "openapi-test-token"
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
]
EXAMPLES = settings(
    max_examples=8,
    deadline=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
STREAM_EXAMPLES = settings(EXAMPLES, max_examples=3)


async def _document(app: web.Application, path: str = "/openapi.json") -> dict[str, Any]:
    from aiohttp.test_utils import TestClient, TestServer

    async with TestClient(TestServer(app)) as client:
        resp = await client.get(path)
        assert resp.status == 200
        assert resp.content_type == "application/json"
        doc: dict[str, Any] = await resp.json()
        return doc


async def test_the_registry_document_is_valid_and_lists_exactly_its_routes(redis_url: str) -> None:
    app = registry.build_app(registry.Settings(redis_url=redis_url))
    doc = await _document(app)
    validate(doc)
    assert drift(app, doc) == ([], [])


async def test_the_config_service_document_is_valid_and_lists_exactly_its_routes(
    redis_url: str, tmp_path: Path
) -> None:
    app = configsvc.build_app(configsvc.Settings(redis_url=redis_url, config_dir=str(tmp_path)))
    doc = await _document(app)
    validate(doc)
    assert drift(app, doc) == ([], [])


@pytest.fixture(scope="module")
def registry_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    redis = RedisServer().start()
    work: Path = tmp_path_factory.mktemp("openapi-registry")
    factory = ComponentFactory(work)
    try:
        component = asyncio.run(factory.start("registry", env={"REDIS_URL": redis.url}))
        yield component.url
    finally:
        factory.close()
        redis.close()


def fuzz(base_url: str, headers: dict[str, str] | None = None) -> list[str]:
    """Run schemathesis on every operation of the document at ``base_url``; the failures.

    ``headers`` go with every request (a token, so that writes are exercised).
    """
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        # A stream of Server-Sent Events is read for 1 s (schemathesis would wait 10 s
        # for 20 events on a quiet one), in 3 examples: its head and first events are
        # what is checked, and each example costs the whole read.
        ok = operation.definition.raw.get("responses", {}).get("200", {})
        streams = "text/event-stream" in ok.get("content", {})
        timeout = 1.0 if streams else None

        @given(case=operation.as_strategy())
        @(STREAM_EXAMPLES if streams else EXAMPLES)
        def run(case: Any) -> None:
            # run() is called below, in this iteration: timeout is this operation's.
            case.call_and_validate(checks=CHECKS, headers=headers, timeout=timeout)  # noqa: B023

        try:
            run()
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # a failed check (an exception group), with its case
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
    return failures


def test_the_registry_answers_as_its_document_says(registry_url: str) -> None:
    failures = fuzz(registry_url)
    assert not failures, "\n\n".join(failures)


@pytest.fixture(scope="module")
def configsvc_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    redis = RedisServer().start()
    work: Path = tmp_path_factory.mktemp("openapi-configsvc")
    (work / "config").mkdir()
    (work / "config" / "application.toml").write_text("[http]\ntimeout = 5\n")
    (work / "config" / "billing.toml").write_text("[billing]\ntax_rate = 0.2\n")
    factory = ComponentFactory(work)
    try:
        env = {"REDIS_URL": redis.url, "CONFIGSVC_TOKEN": TOKEN,
               "CONFIGSVC_ENCRYPT_KEY": Fernet.generate_key().decode()}  # fmt: skip
        component = asyncio.run(
            factory.start("configsvc", "--config-dir", str(work / "config"), env=env)
        )
        yield component.url
    finally:
        factory.close()
        redis.close()


def test_the_config_service_answers_as_its_document_says(configsvc_url: str) -> None:
    failures = fuzz(configsvc_url, {"Authorization": f"Bearer {TOKEN}"})
    assert not failures, "\n\n".join(failures)


DEMO = ("customers", "inventory", "billing", "auth", "console")


@pytest.mark.parametrize("name", DEMO)
async def test_each_demo_service_document_is_valid_and_lists_exactly_its_routes(
    name: str, redis_url: str, tmp_path: Path
) -> None:
    service = importlib.import_module(f"services.{name}.service").SERVICE
    app = build_app(service, service.settings(redis_url=redis_url, data_dir=str(tmp_path)))
    doc = await _document(app)
    validate(doc)
    assert drift(app, doc) == ([], [])


@pytest.fixture(scope="module")
def demo_urls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The demo services as processes on one Redis (billing calls the other two)."""
    redis = RedisServer().start()
    work: Path = tmp_path_factory.mktemp("openapi-services")
    factory = ComponentFactory(work)

    async def start() -> dict[str, str]:
        urls = {}
        for name in DEMO:
            component = await factory.start(
                f"services.{name}", "--data-dir", str(work / name), env={"REDIS_URL": redis.url}
            )
            urls[name] = component.url
        return urls

    try:
        yield asyncio.run(start())
    finally:
        factory.close()
        redis.close()


@pytest.mark.parametrize("name", DEMO)
def test_each_demo_service_answers_as_its_document_says(
    name: str, demo_urls: dict[str, str]
) -> None:
    failures = fuzz(demo_urls[name])
    assert not failures, "\n\n".join(failures)


async def test_the_gateway_admin_documents_are_valid_and_list_exactly_their_routes(
    redis_url: str,
) -> None:
    admin, _ = gateway.build_app(gateway.Settings(redis_url=redis_url))
    doc = await _document(admin)
    validate(doc)
    assert drift(admin, doc) == ([], [])
    # The parent of --workers N: the same API, merged, and /workers.
    parent = build_admin(cast(Supervisor, None), [])
    doc = openapi.build(workers=True).document()
    validate(doc)
    assert drift(parent, doc) == ([], [])
    # The traffic port's own endpoints, served by both shapes of the admin port
    # (what the port answers is tested against it in test_gateway_sessions).
    settings = gateway.Settings(redis_url=redis_url, health_path="/-/up")
    single, _ = gateway.build_app(settings)
    edge = await _document(single, "/openapi-traffic.json")
    validate(edge)
    assert set(edge["paths"]) == {"/-/up", "/-/session", "/-/session/logout"}
    assert edge == openapi.traffic("/-/up").document()
    parent = build_admin(cast(Supervisor, None), [], health_path="")
    edge = await _document(parent, "/openapi-traffic.json")
    validate(edge)
    assert set(edge["paths"]) == {"/-/session", "/-/session/logout"}  # no health path


@pytest.fixture(scope="module")
def gateway_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    redis = RedisServer().start()
    work: Path = tmp_path_factory.mktemp("openapi-gateway")
    factory = ComponentFactory(work)
    admin = free_port()
    try:
        asyncio.run(
            factory.start(
                "gateway", "--host", "127.0.0.1", "--admin-port", str(admin), "--workers", "1",
                env={"REDIS_URL": redis.url}, health_port=admin,
            )
        )  # fmt: skip
        yield f"http://127.0.0.1:{admin}"
    finally:
        factory.close()
        redis.close()


def test_the_gateway_admin_answers_as_its_document_says(gateway_admin_url: str) -> None:
    failures = fuzz(gateway_admin_url)
    assert not failures, "\n\n".join(failures)
