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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from aiohttp import web
from cryptography.fernet import Fernet
from hypothesis import HealthCheck, Phase, given, settings
from openapi_spec_validator import validate
from schemathesis import checks

import configsvc
import registry
from core.openapi.spec import drift
from core.testing import ComponentFactory, RedisServer

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


async def _document(app: web.Application) -> dict[str, Any]:
    from aiohttp.test_utils import TestClient, TestServer

    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/openapi.json")
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

        @given(case=operation.as_strategy())
        @EXAMPLES
        def run(case: Any) -> None:
            case.call_and_validate(checks=CHECKS, headers=headers)

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
