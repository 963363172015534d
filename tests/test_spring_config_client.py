"""config-client (PyPI: Spring Cloud Config's Python client, not ours) against a real configsvc process.

It reads a service's config, with a ``{cipher}`` secret decrypted by the
server for its HTTP Basic credentials, and sees a change after a refresh
(its ``get_config`` again, as ``/actuator/refresh`` does for a Spring app).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from cryptography.fernet import Fernet
from requests.auth import HTTPBasicAuth

# ``config`` is config-client's package (a regular package wins over the
# repository's config/ folder of TOML documents, which has no __init__.py).
from config import ConfigClient
from core.testing import ComponentFactory

TOKEN = "t0ken"
KEY = Fernet.generate_key().decode()


async def test_config_client_reads_a_decrypted_secret_and_sees_a_change_after_refresh(
    components: ComponentFactory, redis_url: str, tmp_path: Path
) -> None:
    folder = tmp_path / "config"
    folder.mkdir()
    (folder / "application.toml").write_text('[log]\nlevel = "info"\n')
    (folder / "billing.toml").write_text('[billing]\ncurrency = "EUR"\ntax_rate = 0.2\n')
    svc = await components.start(
        "configsvc", "--redis-url", redis_url, "--config-dir", str(folder),
        env={"CONFIGSVC_TOKEN": TOKEN, "CONFIGSVC_ENCRYPT_KEY": KEY},
    )  # fmt: skip
    auth = HTTPBasicAuth("spring", TOKEN)
    client = ConfigClient(address=svc.url, app_name="billing", profile="prod", fail_fast=False)

    # The client's own /encrypt call makes the value written after {cipher}.
    value = await asyncio.to_thread(client.encrypt, "hunter2", auth=auth)
    async with (
        aiohttp.ClientSession() as http,
        http.put(
            f"{svc.url}/v1/documents/billing-prod",
            data=f'[billing]\ncurrency = "USD"\n[billing.db]\npassword = "{{cipher}}{value}"\n',
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/toml"},
        ) as resp,
    ):
        assert resp.status == 201, await resp.text()

    await asyncio.to_thread(client.get_config, auth=auth)
    assert client.get("billing.currency") == "USD"
    assert client.get("billing.tax_rate") == 0.2
    assert client.get("log.level") == "info"
    assert client.get("billing.db.password") == "hunter2"

    async with (
        aiohttp.ClientSession() as http,
        http.put(
            f"{svc.url}/v1/documents/billing-prod",
            json={"billing": {"currency": "CHF", "db": {"password": "{cipher}" + value}}},
            headers={"Authorization": f"Bearer {TOKEN}"},
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()
    assert client.get("billing.currency") == "USD"  # until it refreshes
    await asyncio.to_thread(client.get_config, auth=auth)
    assert client.get("billing.currency") == "CHF"
    assert client.get("billing.db.password") == "hunter2"

    # Without credentials the secret is not served.
    anonymous = ConfigClient(address=svc.url, app_name="billing", profile="prod", fail_fast=False)
    with pytest.raises(ConnectionError):
        await asyncio.to_thread(anonymous.get_config)
    assert anonymous.config == {}
