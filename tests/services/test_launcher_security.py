"""A system started by ``python -m services``, attacked from inside (issue 10).

Each check is what an attacker on the same host, or holding one service's
credentials, or logged in as a plain user, would try against the real
processes: reading secrets from the run directory, registering instances
with a service's token or at control-plane endpoints, reading the gateway's
admin pages through a registered instance, replaying dead letters.
"""

from __future__ import annotations

import re
import stat
from pathlib import Path

import aiohttp

from tests.services.test_launcher import start_launcher, up


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


async def test_a_launched_system_keeps_secrets_private_and_scopes_every_credential(
    tmp_path: Path,
) -> None:
    async with start_launcher(tmp_path, "--inventory-instances", "1") as launcher:
        pids = await up(launcher)
        run_dir = launcher.run_dir
        ports = launcher.ports
        gateway = f"http://127.0.0.1:{ports['gateway']}"
        registry = f"http://127.0.0.1:{ports['registry']}"

        # -- secrets at rest: nothing under run/ is readable by another user.
        auth_db = run_dir / "data" / "auth" / "auth.db"
        for path in (auth_db, run_dir / "registry.token", run_dir / "admin.password"):
            assert path.exists(), path
        assert (run_dir / "data" / "auth" / "auth.db-wal").exists()
        loose = []
        for path in [run_dir, *run_dir.rglob("*")]:
            mode = stat.S_IMODE(path.lstat().st_mode)
            if mode & 0o077:  # group or others may read, write or enter
                loose.append(f"{path.relative_to(run_dir.parent)} {mode:o}")
        assert loose == []
        assert stat.S_IMODE(auth_db.stat().st_mode) == 0o600

        # -- each service holds a token for its own name, never the operator's.
        operator = (run_dir / "registry.token").read_text().strip()
        tokens = {}
        for name in ("auth", "customers", "inventory-1", "billing", "console"):
            env = environ(pids[name])
            service = name.removesuffix("-1")
            token = env[f"{service.upper()}_REGISTRY_TOKEN"]
            assert re.fullmatch(rf"svc\.{service}\.[A-Za-z0-9_-]{{43}}", token), name
            assert operator not in env.values(), name
            tokens[service] = token
        assert operator not in environ(pids["gateway"]).values()
        # The console changes instances' status with a token that may do nothing else.
        assert re.fullmatch(r"ops\.status\.[A-Za-z0-9_-]{43}",
                            environ(pids["console"])["CONSOLE_STATUS_TOKEN"])  # fmt: skip

        passwords = {u: (run_dir / f"{u}.password").read_text().strip() for u in ("admin", "alice")}
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{registry}/v1/services") as r:
                listed = (await r.json())["services"]
            assert {name: s["up"] for name, s in listed.items()} == {
                "auth": 1, "billing": 1, "console": 1, "customers": 1, "inventory": 1,
            }  # fmt: skip

            # A stolen billing token can't take customers' traffic...
            steal = {"host": "127.0.0.1", "port": 9, "ttl": 30}
            async with http.put(
                f"{registry}/v1/services/customers/instances/evil", json=steal,
                headers={"Authorization": f"Bearer {tokens['billing']}"},
            ) as r:  # fmt: skip
                assert r.status == 403
                assert "of the service 'billing' only" in (await r.json())["detail"]
            # ...nor point billing at the gateway's admin port, nor can the operator.
            for token, service in ((tokens["billing"], "billing"), (operator, "adminx")):
                admin_target = {"host": "127.0.0.1", "port": ports["admin"], "ttl": 30}
                async with http.put(
                    f"{registry}/v1/services/{service}/instances/x", json=admin_target,
                    headers={"Authorization": f"Bearer {token}"},
                ) as r:  # fmt: skip
                    assert r.status == 422, await r.text()
                    assert "control-plane port" in (await r.json())["detail"]

            async def bearer(user: str) -> dict[str, str]:
                body = {"username": user, "password": passwords[user]}
                async with http.post(f"{gateway}/auth/token", json=body) as r:
                    assert r.status == 200
                    return {"Authorization": f"Bearer {(await r.json())['access_token']}"}

            alice, admin = await bearer("alice"), await bearer("admin")
            # The gateway's admin pages are not reachable through a discovery route.
            for path in ("/adminx/metrics", "/adminx/routes"):
                async with http.get(gateway + path, headers=alice) as r:
                    body = await r.text()
                    assert r.status in (404, 503), (path, r.status)
                    assert "gateway_requests" not in body
                    assert '"routes"' not in body

            # Dead letters: a login lists them, only an admin replays or discards.
            async with http.get(f"{gateway}/inventory/events/dead", headers=alice) as r:
                assert r.status == 200
            for action, body in (("replay", None), ("discard", {"ids": ["1-0"]})):
                url = f"{gateway}/inventory/events/dead/{action}"
                async with http.post(url, json=body, headers=alice) as r:
                    assert r.status == 403, action
                async with http.post(url, json=body, headers=admin) as r:
                    assert r.status == 200, action
