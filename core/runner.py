"""Running a component: the event loop, the listening sockets, graceful stop.

:func:`run` is what every entry point's ``main`` ends with. It installs uvloop
when available, starts the given aiohttp applications on their sites, waits
for SIGTERM or SIGINT, awaits ``before_stop`` (a service deregisters there,
while it still accepts), then stops accepting, lets in-flight requests finish
within ``shutdown_timeout``, runs every cleanup context in reverse order
(closing Redis) and returns 0. A second signal forces the stop.
A failure while starting logs one line and returns :data:`STARTUP_FAILURE`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import random
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

from aiohttp import web

from core import log
from core.errors import SettingsError, StartupError
from core.settings import PRIVATE_UMASK, CommonSettings, load

logger = log.get("runner")

S = TypeVar("S", bound=CommonSettings)

STARTUP_FAILURE = 3
#: The exit code of a process whose settings are missing or malformed.
BAD_SETTINGS = 2

__all__ = [
    "BAD_SETTINGS",
    "STARTUP_FAILURE",
    "ProtocolSite",
    "Site",
    "address_family",
    "configure",
    "free_port",
    "inherited_socket",
    "install_uvloop",
    "run",
]


@dataclass(frozen=True)
class Site:
    """One application bound to one address.

    ``sock``, when given, is a socket already listening (inherited or handed
    over by another process) that is served instead of binding ``host:port``;
    ``fd`` the same as a file descriptor inherited from the parent process
    (``--listen-fd``; -1: none), checked to be a listening socket at start;
    ``unix`` a Unix socket path to bind instead. Stopping closes this
    process's copy of an inherited socket only: connections waiting in its
    queue wait for another process holding it (the launcher's next one).
    """

    app: web.Application
    host: str
    port: int
    name: str = "http"
    sock: socket.socket | None = None
    unix: str | None = None
    fd: int = -1


@dataclass(frozen=True)
class ProtocolSite:
    """A raw asyncio protocol server bound to one address.

    ``factory`` makes one protocol per connection. ``start`` is awaited just
    before listening; ``drain(timeout)`` after the listener stopped accepting,
    to let connections finish within ``timeout`` seconds. ``socks``, when
    given, are sockets already listening (a gateway worker's, inherited from
    its parent) accepted on instead of binding ``host:port``: stopping closes
    this process's copies only, so connections waiting in their queues are
    left to the other processes holding them.
    """

    factory: Callable[[], asyncio.BaseProtocol]
    host: str
    port: int
    name: str = "proxy"
    start: Callable[[], Awaitable[None]] | None = None
    drain: Callable[[float], Awaitable[None]] | None = None
    socks: tuple[socket.socket, ...] = ()


def configure(
    cls: type[S],
    *,
    name: str,
    prefix: str,
    argv: Sequence[str] | None,
    description: str,
    prog: str | None = None,
) -> S | None:
    """A component's settings, read once, with logging configured from them.

    A bad value prints one line (``name: VARIABLE: reason``) on stderr and
    returns None: ``main`` then returns :data:`BAD_SETTINGS`. It also sets the
    process's umask to :data:`core.settings.PRIVATE_UMASK` (files 0600,
    directories 0700).
    """
    try:
        settings = load(
            cls, prefix=prefix, argv=argv, prog=prog or f"python -m {name}", description=description
        )
    except SettingsError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return None
    log.configure(settings.log_format, settings.log_level)
    # Whatever the component creates (databases, config copies) is owner-only from the start.
    os.umask(PRIVATE_UMASK)
    return settings


def install_uvloop() -> bool:
    """Use uvloop's event loop policy when it is installed; say whether it is."""
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


async def _serve(
    sites: Sequence[Site | ProtocolSite],
    shutdown_timeout: float,
    on_started: Callable[[list[tuple[str, str, int]]], Awaitable[None]] | None,
    stop: asyncio.Event,
    before_stop: Callable[[], Awaitable[None]] | None = None,
) -> int:
    loop = asyncio.get_running_loop()
    signals = 0

    def on_signal(signame: str) -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            logger.info("%s received: stopping (again to force)", signame)
            stop.set()
        else:
            logger.warning("%s received again: forcing stop", signame)
            raise SystemExit(1)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig.name)

    runners: list[web.AppRunner] = []
    servers: list[tuple[ProtocolSite, asyncio.Server]] = []
    started: list[ProtocolSite] = []
    bound: list[tuple[str, str, int]] = []
    try:
        for site in sites:
            if isinstance(site, ProtocolSite):
                continue
            runner = web.AppRunner(
                site.app, handle_signals=False, access_log=None, shutdown_timeout=shutdown_timeout
            )
            await runner.setup()
            runners.append(runner)
            tcp: web.BaseSite
            sock = site.sock if site.fd < 0 else inherited_socket(site.fd)
            if sock is not None:
                tcp = web.SockSite(runner, sock)
            elif site.unix is not None:
                tcp = web.UnixSite(runner, site.unix)
            else:
                tcp = web.TCPSite(runner, site.host, site.port, backlog=1024, reuse_address=True)
            try:
                await tcp.start()
            except OSError as exc:
                raise StartupError(
                    f"cannot listen on {site.host}:{site.port}: {exc.strerror}"
                ) from None
            if site.unix is not None:
                bound.append((site.name, site.unix, 0))
                logger.debug("%s listening on %s", site.name, site.unix)
                continue
            host, port = _address(runner, site)
            bound.append((site.name, host, port))
            logger.info("%s listening on http://%s:%d", site.name, host, port)
        for psite in sites:
            if not isinstance(psite, ProtocolSite):
                continue
            if psite.start is not None:
                await psite.start()
            started.append(psite)
            for sock in psite.socks or (None,):
                try:
                    if sock is not None:
                        server = await loop.create_server(psite.factory, sock=sock, backlog=1024)
                    else:
                        server = await loop.create_server(
                            psite.factory, psite.host, psite.port, backlog=1024, reuse_address=True
                        )
                except OSError as exc:
                    raise StartupError(
                        f"cannot listen on {psite.host}:{psite.port}: {exc.strerror}"
                    ) from None
                servers.append((psite, server))
                host, port = server.sockets[0].getsockname()[:2]
                bound.append((psite.name, str(host), int(port)))
                logger.info("%s listening on http://%s:%d", psite.name, host, port)
        if on_started is not None:
            await on_started(bound)
    except (StartupError, OSError) as exc:
        logger.error("failed to start: %s", exc)
        for _, server in servers:
            server.close()
        for psite in started:
            if psite.drain is not None:
                with contextlib.suppress(Exception):
                    await psite.drain(0)
        for runner in reversed(runners):
            with contextlib.suppress(Exception):
                await runner.cleanup()
        return STARTUP_FAILURE

    await stop.wait()
    if before_stop is not None:
        try:
            await asyncio.wait_for(before_stop(), shutdown_timeout)
        except Exception:  # a stop goes on whatever this hook does
            logger.exception("before stopping")
    for _, server in servers:
        server.close()
    drained: set[int] = set()
    for psite, _ in servers:
        if psite.drain is not None and id(psite) not in drained:
            drained.add(id(psite))
            await psite.drain(shutdown_timeout)
    for runner in runners:
        # Stop accepting first on every site, then drain.
        for s in list(runner.sites):
            with contextlib.suppress(Exception):
                await s.stop()
    for runner in reversed(runners):
        await runner.cleanup()
    logger.info("stopped")
    return 0


def inherited_socket(fd: int) -> socket.socket:
    """The listening TCP socket inherited as file descriptor ``fd``; :class:`StartupError` if not."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise StartupError(f"listen_fd {fd}: not an open socket ({exc.strerror})") from None
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or not sock.getsockopt(
        socket.SOL_SOCKET, socket.SO_ACCEPTCONN
    ):
        sock.detach()
        raise StartupError(f"listen_fd {fd}: not a listening TCP socket")
    return sock


def _address(runner: web.AppRunner, site: Site) -> tuple[str, int]:
    """The address really bound (the port the OS picked when ``site.port`` is 0)."""
    for addr in runner.addresses:
        if isinstance(addr, tuple) and len(addr) >= 2:
            return str(addr[0]), int(addr[1])
    return site.host, site.port


def run(
    sites: Sequence[Site | ProtocolSite],
    *,
    shutdown_timeout: float = 10.0,
    on_started: Callable[[list[tuple[str, str, int]]], Awaitable[None]] | None = None,
    stop: asyncio.Event | None = None,
    before_stop: Callable[[], Awaitable[None]] | None = None,
) -> int:
    """Serve ``sites`` until a signal (or ``stop`` is set); return the process exit code.

    ``before_stop`` is awaited once stopping began, before the sites stop
    accepting (bounded by ``shutdown_timeout``).

    Startup errors raised by the applications' cleanup contexts (Redis refused
    while the component requires it, a bad configuration) are reported as one
    line and give :data:`STARTUP_FAILURE`.
    """
    install_uvloop()
    try:
        return asyncio.run(
            _serve(sites, shutdown_timeout, on_started, stop or asyncio.Event(), before_stop)
        )
    except StartupError as exc:
        logger.error("failed to start: %s", exc)
        return STARTUP_FAILURE
    except KeyboardInterrupt:
        return 1


# -- ports chosen for processes ------------------------------------------------------
#
# Ports for processes to bind: chosen here, bound later by whoever asked for one.
#
# A port the kernel hands out with bind(0) comes from its range for
# outgoing connections (/proc/sys/net/ipv4/ip_local_port_range, 32768 to
# 60999 by default): between the moment it is chosen and the moment the new
# process binds it, any outgoing connection of the machine may take it as its
# local port, and the process fails with "address already in use" (seen in
# the test suite, where hundreds of client connections come and go).
# free_port() picks below that range instead, where only a listener can
# take a port.
#
# A port is free a moment ago, not reserved: two processes choosing at the
# same time (two pytest-xdist workers, a test and the launcher it started)
# could both find the same port free and both hand it out. So every choice is
# written, under an exclusive flock, to a ledger file shared by the
# machine's processes of the same user (essaim-ports-<uid> in the
# temporary directory); a port in the ledger is not chosen again by anyone
# for HOLD seconds, time enough for its taker to bind it, after which
# a bound port is refused by the bind check anyway. Without a usable ledger
# (a read-only temporary directory) the choice is per process only, as before.
# One process never hands out the same port twice.

#: The lowest port free_port() picks: above the well-known and most registered services' ports.
LOWEST_PORT = 10000
#: Seconds a port handed out stays out of every other process's choice.
HOLD = 120.0
#: Ports handed out by this process: each at most once.
_ports_given: set[int] = set()
_port_random = random.SystemRandom()


def address_family(host: str) -> socket.AddressFamily:
    """``AF_INET6`` for an IPv6 address (it has a colon), else ``AF_INET``."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _outgoing_range() -> tuple[int, int]:
    """The kernel's range of local ports for outgoing connections (Linux's default elsewhere)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(x) for x in f.read().split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def _bindable(host: str, port: int) -> bool:
    with socket.socket(address_family(host), socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def ledger_path() -> str:
    """The file where this user's processes record the ports they handed out."""
    return os.path.join(tempfile.gettempdir(), f"essaim-ports-{os.getuid()}")


@contextlib.contextmanager
def _ledger() -> Iterator[dict[int, float] | None]:
    """The ledger's live entries (port -> until when), held locked; written back on exit.

    ``None`` when the ledger cannot be opened or locked: the caller goes on alone.
    """
    try:
        fd = os.open(ledger_path(), os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        yield None
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            yield None
            return
        now = time.time()
        entries: dict[int, float] = {}
        with os.fdopen(os.dup(fd), "r+") as f:
            for line in f.read().splitlines():
                with contextlib.suppress(ValueError):
                    port, until = line.split()
                    if float(until) > now:
                        entries[int(port)] = float(until)
            yield entries
            f.seek(0)
            f.truncate()
            f.write("".join(f"{p} {u:.3f}\n" for p, u in entries.items()))
    finally:
        os.close(fd)  # releases the lock


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` a moment ago, outside the range for outgoing connections.

    Not handed out before by this process, nor by another of this user's
    processes in the last :data:`HOLD` seconds (the comment above says why). Falls
    back to one the kernel picks when no port below that range is free after
    a few tries (or the range starts too low to leave any).
    """
    low, _ = _outgoing_range()
    with _ledger() as taken:
        if low > LOWEST_PORT + 1000:
            for _ in range(64):
                port = _port_random.randrange(LOWEST_PORT, low)
                if port in _ports_given or (taken is not None and port in taken):
                    continue
                if _bindable(host, port):
                    break
            else:
                port = _kernel_port(host)
        else:
            port = _kernel_port(host)
        _ports_given.add(port)
        if taken is not None:
            taken[port] = time.time() + HOLD
    return port


def _kernel_port(host: str) -> int:
    with socket.socket(address_family(host), socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
