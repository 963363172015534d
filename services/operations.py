"""What the control socket can ask of a running system: status, restart, scale.

:class:`Operations` answers the requests of :mod:`services.control` for the
launcher (:mod:`services.launcher`), on its supervisor's children. One
operation runs at a time (another one is refused with 409, status is always
answered). Each component restarts in the way its :attr:`Spec.restart
<services.launcher.Spec.restart>` says:

``rolling`` (the business services: many instances, any port)
    one place at a time: a new process on a free port, registering under a
    new instance id (``inventory-1.2``: place ``inventory-1``, second
    process); once it answers ``/health/ready``, the registry lists it ``UP``
    and the gateway routes to it (when the gateway routes to the service at
    all), the old process gets SIGTERM: it deregisters, waits for the
    watchers to stop routing to it, drains its requests and exits. No
    request is refused: the service always has a ready instance in the
    gateway's table.
``takeover`` (the gateway: one port that clients connect to)
    a new gateway started with ``--takeover`` takes the old one's listening
    sockets over the gateway's own control socket (``run/gateway.sock``);
    once it serves, the old one stops accepting, drains and exits. The
    sockets never close, so no connection is refused (docs/gateway.md).
``shared`` (configsvc, the registry, auth: addresses others are configured with)
    the launcher holds the listening socket and passes it to each process
    (``--listen-fd``), so connections queue on it while no process accepts,
    and none is refused. Each rolls on it: a new process beside the old one
    (auth under a new instance id, registered and routed), then the old one
    leaves as above; a slow drain of the old one keeps nobody waiting.
``in_place`` (Redis)
    SIGTERM, then the same command on the same port once it exited; its
    clients reconnect.

A requested restart is not a crash: not counted, not delayed, not logged as
one. ``scale SERVICE N`` starts new places (``inventory-3``) on free ports,
every one ready, registered and routed before it answers, or stops the
newest places first, each deregistered, drained and stopped.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import aiohttp

from services.control import Problem
from services.supervisor import Child, StartupFailed

if TYPE_CHECKING:
    from services.launcher import Launcher, Spec

__all__ = ["MAX_INSTANCES", "Operations"]

#: The most instances ``scale`` starts of one service.
MAX_INSTANCES = 16

Progress = Callable[[str], None]


class Operations:
    """Status, restarts and scaling of ``launcher``'s running system (one operation at a time)."""

    def __init__(self, launcher: Launcher) -> None:
        self.launcher = launcher
        self.supervisor = launcher.supervisor
        self._lock = asyncio.Lock()
        self._current = ""
        self._since = 0.0
        #: Processes started in each place so far (1 at the start): the next instance id's suffix.
        self._generations: dict[str, int] = {}

    # -- requests ----------------------------------------------------------------------

    async def handle(self, request: dict[str, Any], progress: Progress) -> dict[str, Any]:
        """One control request's answer; :class:`Problem` when refused or failed."""
        command = request.get("command")
        if command == "status":
            return self.status()
        if command == "restart":
            names = request.get("names")
            if (
                not isinstance(names, list)
                or not names
                or not all(isinstance(n, str) for n in names)
            ):
                raise Problem(
                    400, "bad-request", "Bad Request", "restart: 'names' must be a non-empty list"
                )
            places = self._places_to_restart(names)
            return await self._exclusive(
                f"restart {' '.join(names)}", lambda: self.restart(places, progress)
            )
        if command == "scale":
            service, count = request.get("service"), request.get("instances")
            if not isinstance(service, str) or not isinstance(count, int) or count is True:
                raise Problem(
                    400,
                    "bad-request",
                    "Bad Request",
                    "scale: 'service' must be a name and 'instances' an integer",
                )
            spec = self._scalable(service, count)
            return await self._exclusive(
                f"scale {service} {count}", lambda: self.scale(spec, count, progress)
            )
        raise Problem(
            400,
            "bad-request",
            "Bad Request",
            f"unknown command {command!r}: expected status, restart or scale",
        )

    async def _exclusive(self, what: str, run: Callable[[], Any]) -> dict[str, Any]:
        if not self.supervisor.started:
            raise Problem(503, "not-ready", "Service Unavailable", "the system is still starting")
        if self.supervisor.stopping:
            raise Problem(503, "not-ready", "Service Unavailable", "the system is stopping")
        if self._lock.locked():
            raise Problem(
                409,
                "busy",
                "Conflict",
                f"another operation is under way ({self._current}, for"
                f" {time.monotonic() - self._since:.0f}s); try again when it is done",
            )
        async with self._lock:
            self._current, self._since = what, time.monotonic()
            try:
                answer: dict[str, Any] = await run()
            finally:
                self._current = ""
                self.launcher.record()
        return answer

    # -- status ------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Every process of the system: where it is, what it is doing, since when."""
        now = time.monotonic()
        processes = []
        for child in self.supervisor.children:
            running = child.running
            processes.append(
                {
                    "name": child.name,
                    "service": child.service,
                    "pid": child.pid if running else None,
                    "port": child.port,
                    "instance": child.instance or None,
                    "state": child.state,
                    "restarts": child.restarts,
                    "uptime": round(now - child.started_at, 1) if running else None,
                    "url": self.launcher.shown_url(child),
                }
            )
        return {
            "launcher_pid": self.launcher.pid,
            "system": "up" if self.supervisor.started else "starting",
            "operation": self._current or None,
            "processes": processes,
        }

    # -- restart -----------------------------------------------------------------------

    def _places_to_restart(self, names: Sequence[str]) -> list[str]:
        """The places to restart, in start order; :class:`Problem` naming an unknown name."""
        children = [c for c in self.supervisor.children if not c.retiring]
        known = {c.service for c in children} | {c.name for c in children}
        wanted: list[str] = []
        for name in names:
            if name == "all":
                wanted += [c.name for c in children if c.service != "redis"]
            elif name in known:
                wanted += [c.name for c in children if name in (c.service, c.name)]
            else:
                services = sorted({c.service for c in children})
                raise Problem(
                    404,
                    "unknown-name",
                    "Not Found",
                    f"no service or process named {name!r}; the services:"
                    f" {', '.join(services)} (or a process such as"
                    f" {next((c.name for c in children if c.name != c.service), 'inventory-1')},"
                    " or all)",
                )
        order = {c.name: i for i, c in enumerate(children)}
        return sorted(dict.fromkeys(wanted), key=order.__getitem__)

    async def restart(self, places: Sequence[str], progress: Progress) -> dict[str, Any]:
        began = time.monotonic()
        restarted = []
        for place in places:
            old = self._child(place)
            spec = self.launcher.specs[old.service]
            say = self._say(progress, place)
            if spec.restart in ("rolling", "shared"):
                new = await self._roll(spec, old, say)
            elif spec.restart == "takeover" and old.running:
                new = await self._take_over(spec, old, say)
            else:  # also a gateway that is down: there are no sockets to take over
                new = await self._in_place(spec, old, say)
            restarted.append(self._described(new))
        seconds = time.monotonic() - began
        what = ", ".join(dict.fromkeys(self.launcher.specs[self._child(p).service].name
                                       for p in places))  # fmt: skip
        summary = (
            f"restarted {what} ({len(places)} {_plural(len(places), 'process')}) in {seconds:.1f}s"
        )
        self.launcher.out.say(summary)
        return {"restarted": restarted, "seconds": round(seconds, 2), "summary": summary}

    async def _roll(self, spec: Spec, old: Child, say: Progress) -> Child:
        """A new process beside ``old``; once it is ready and routed, ``old`` leaves.

        On a shared socket (configsvc, the registry, auth) both processes
        accept from its queue meanwhile, so nothing waits for the old one's
        stop, however long its drain takes. For configsvc and the registry,
        which do not register, "ready" is their health answering on that
        port, which the old process may answer too: at worst the old one
        leaves before the new one accepts, and connections queue on the
        socket for that moment, as they did when these restarted in place.
        """
        generation = self._generations.get(old.name, 1) + 1
        instance = f"{old.name}.{generation}"
        # A shared socket: the same port, both processes accept from its queue meanwhile.
        port = old.port if spec.restart == "shared" else None
        new = await self._start_beside(spec, old.name, instance, old, port)
        self._generations[old.name] = generation
        if spec.registers:
            say(f"started {instance} (pid {new.pid}, port {new.port})")
        else:
            say(f"started pid {new.pid} beside pid {old.pid}, on the socket of port {new.port}")
        try:
            await self._until_routed(new)
        except StartupFailed as exc:
            await self._discard(new)
            raise self._failed(str(exc), new, self._serves(old)) from None
        if spec.registers:
            say(f"{instance} is ready, registered and routed by the gateway")
        else:
            say(f"pid {new.pid} is ready")
        await self._leave(old, say)
        self._adopt(new)
        return new

    async def _take_over(self, spec: Spec, old: Child, say: Progress) -> Child:
        """A new gateway takes ``old``'s listening sockets; ``old`` drains and exits by itself."""
        new = self.launcher.make_child(spec, old.name, old.instance, old.port)
        new.restarts = old.restarts
        new.supervised = False
        old.retiring = True  # it leaves by itself once the new one is ready
        self._insert_after(old, new)
        old_pid = old.pid
        try:
            await self.supervisor.start(new, [*new.argv, "--takeover"], pid_file=False)
            say(
                f"started pid {new.pid} with --takeover: it takes the listening sockets of pid {old_pid}"
            )
            settings = self.launcher.settings
            deadline = time.monotonic() + settings.startup_timeout + settings.shutdown_timeout + 5
            while old.running:
                if not new.running:
                    raise StartupFailed(f"the new gateway exited with {_exit(new)}")
                if time.monotonic() > deadline:
                    raise StartupFailed("the old gateway did not hand over and stop in time")
                await asyncio.sleep(0.05)
            await self.supervisor.wait_healthy([new], settings.startup_timeout)
        except (StartupFailed, OSError) as exc:
            await self.supervisor.retire(new)
            self.supervisor.children.remove(new)
            old.retiring = False
            if not old.running:
                self.supervisor.adopt(old)
            raise self._failed(f"the new gateway failed: {exc}", new, self._serves(old)) from None
        old.state = "stopped"
        self.supervisor.children.remove(old)
        self._adopt(new)
        say(f"pid {old_pid} handed its sockets over, drained and stopped; pid {new.pid} serves")
        return new

    async def _in_place(self, spec: Spec, old: Child, say: Progress) -> Child:
        """Stop ``old``, then the same command on the same port (its address is configured)."""
        old_pid = old.pid
        await self.supervisor.retire(old)
        say(f"pid {old_pid} stopped ({spec.name} restarts in place: others know its port)")
        new = self.launcher.make_child(spec, old.name, old.instance, old.port)
        new.restarts = old.restarts
        new.supervised = False
        index = self.supervisor.children.index(old)
        self.supervisor.children[index] = new
        try:
            await self.supervisor.start(new)
            await self._until_routed(new)
        except (StartupFailed, OSError) as exc:
            self.supervisor.adopt(new)  # restarted as after a crash, with its delays
            still = f"the launcher restarts {new.name} as after a crash"
            raise self._failed(str(exc), new, still) from None
        self._adopt(new)
        say(f"pid {new.pid} is ready on port {new.port}")
        return new

    # -- scale -------------------------------------------------------------------------

    def _scalable(self, service: str, count: int) -> Spec:
        spec = self.launcher.specs.get(service)
        if spec is None:
            scalable = sorted(
                s.name for s in self.launcher.specs.values() if s.restart == "rolling"
            )
            raise Problem(
                404,
                "unknown-name",
                "Not Found",
                f"no service named {service!r}; the services that scale: {', '.join(scalable)}",
            )
        if spec.restart != "rolling":
            why = {
                "takeover": "it owns its port (more processes: its --workers)",
                "shared": "others know it by its one address",
                "in_place": "others know it by its one address",
            }[spec.restart]
            raise Problem(
                422, "not-scalable", "Unprocessable Content", f"{service} does not scale: {why}"
            )
        if not 1 <= count <= MAX_INSTANCES:
            raise Problem(
                422,
                "out-of-range",
                "Unprocessable Content",
                f"instances: expected 1-{MAX_INSTANCES}, got {count}",
            )
        return spec

    async def scale(self, spec: Spec, count: int, progress: Progress) -> dict[str, Any]:
        began = time.monotonic()
        places = self._instances(spec.name)
        started, stopped = [], []
        if count > len(places):
            names = self._new_places(spec, count - len(places))
            last = places[-1]
            news: list[Child] = []
            try:
                for name in names:
                    new = await self._start_beside(spec, name, name, last)
                    self._say(progress, name)(f"started (pid {new.pid}, port {new.port})")
                    news.append(new)
                    last = new
                await asyncio.gather(*(self._until_routed(n) for n in news))
            except (StartupFailed, Problem) as exc:
                for new in news:
                    await self._discard(new)
                if isinstance(exc, Problem):
                    raise
                still = f"{spec.name} has its {len(places)} instances of before"
                raise self._failed(str(exc), news[-1], still) from None
            for new in news:
                self._adopt(new)
                self._say(progress, new.name)("ready, registered and routed by the gateway")
                started.append(self._described(new))
        for old in reversed(places[count:]):  # the newest first
            await self._leave(old, self._say(progress, old.name))
            (self.launcher.run_dir / f"{old.name}.pid").unlink(missing_ok=True)
            self._generations.pop(old.name, None)
            stopped.append(old.name)
        now = [c.name for c in self._instances(spec.name)]
        seconds = time.monotonic() - began
        summary = f"{spec.name}: {len(now)} {_plural(len(now), 'instance')} ({', '.join(now)})"
        self.launcher.out.say(f"scaled {summary} in {seconds:.1f}s")
        return {
            "service": spec.name,
            "instances": now,
            "started": started,
            "stopped": stopped,
            "seconds": round(seconds, 2),
            "summary": summary,
        }

    def _instances(self, service: str) -> list[Child]:
        return [c for c in self.supervisor.children if c.service == service and not c.retiring]

    def _new_places(self, spec: Spec, n: int) -> list[str]:
        """``n`` unused place names: ``inventory-3``; ``customers-2`` beside ``customers``."""
        used = {c.name for c in self.supervisor.children}
        numbers = [int(m.group(1)) for name in used
                   if (m := re.fullmatch(re.escape(spec.name) + r"-(\d+)", name))]  # fmt: skip
        first = max([*numbers, 1]) + 1
        return [f"{spec.name}-{k}" for k in range(first, first + n)]

    # -- the steps ---------------------------------------------------------------------

    async def _start_beside(
        self, spec: Spec, name: str, instance: str, after: Child, port: int | None = None
    ) -> Child:
        """A new, not yet supervised process of ``spec`` (on a free port), listed after ``after``."""
        from core.runner import free_port

        if port is None:
            port = free_port(self.launcher.settings.host)
        new = self.launcher.make_child(spec, name, instance, port)
        if name == after.name:
            new.restarts = after.restarts
        new.supervised = False
        self._insert_after(after, new)
        try:
            await self.supervisor.start(new, pid_file=False)
        except (StartupFailed, OSError) as exc:
            self.supervisor.children.remove(new)
            raise self._failed(
                f"cannot start {instance}: {exc}", new, self._serves(after)
            ) from None
        return new

    async def _until_routed(self, new: Child) -> None:
        """``new`` answers its readiness, is ``UP`` in the registry and in the gateway's table.

        The gateway is asked only when it routes to the service already (its
        ``/upstreams`` lists it); else nothing routes there yet.
        :class:`StartupFailed` when it exits or is not there in time.
        """
        settings = self.launcher.settings
        deadline = time.monotonic() + settings.startup_timeout
        try:
            await self.supervisor.wait_healthy([new], settings.startup_timeout)
        except StartupFailed:
            if new.running:
                raise
            self._exited(new)
        while new.instance and not await self._routed(new):
            if not new.running:
                self._exited(new)
            if time.monotonic() > deadline:
                raise StartupFailed(
                    f"{new.instance} not registered and routed within"
                    f" {settings.startup_timeout:.0f}s"
                )
            await asyncio.sleep(0.05)

    def _exited(self, new: Child) -> None:
        what = new.instance or f"the new {new.name}"
        log = self.launcher.shown(f"logs/{new.name}.log")
        raise StartupFailed(
            f"{what} (pid {new.pid}) exited with {_exit(new)} while starting (its output: {log})"
        )

    async def _routed(self, child: Child) -> bool:
        session = self.supervisor.session
        assert session is not None
        values, timeout = self.launcher.values, aiohttp.ClientTimeout(total=2)
        try:
            url = f"{values['registry_url']}/v1/services/{child.service}"
            async with session.get(url, timeout=timeout) as r:
                listed = {i["id"] for i in (await r.json())["instances"] if i["status"] == "UP"}
            if child.instance not in listed:
                return False
            admin = f"http://{self.launcher.settings.host}:{values['gateway_admin_port']}"
            async with session.get(f"{admin}/upstreams?per_worker=1", timeout=timeout) as r:
                doc = await r.json()
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError):
            return False
        return routed_everywhere(doc, child.service, child.instance)

    async def _leave(self, old: Child, say: Progress) -> None:
        """SIGTERM ``old``: it deregisters, drains, exits; then it is out of the system's list."""
        pid, instance = old.pid, old.instance
        code = await self.supervisor.retire(old)
        if old in self.supervisor.children:
            self.supervisor.children.remove(old)
        if instance and await self._still_listed(old):
            await self.launcher.deregister(old.service, instance)
        if code not in (0, None):
            how = f"stopped ({_exit(old)})"
        else:
            how = "deregistered, drained and stopped" if instance else "drained and stopped"
        say(f"{instance or old.name} (pid {pid}) {how}")

    async def _still_listed(self, child: Child) -> bool:
        session = self.supervisor.session
        assert session is not None
        url = f"{self.launcher.values['registry_url']}/v1/services/{child.service}?all=1"
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
                return child.instance in {i["id"] for i in (await r.json())["instances"]}
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError):
            return False

    def _adopt(self, new: Child) -> None:
        """``new`` is the process of its place now: supervised, in the pid file."""
        self.supervisor.adopt(new)
        self.supervisor.write_pid(new)

    # -- helpers -----------------------------------------------------------------------

    def _child(self, place: str) -> Child:
        return next(c for c in self.supervisor.children if c.name == place and not c.retiring)

    def _insert_after(self, after: Child, new: Child) -> None:
        children = self.supervisor.children
        children.insert(children.index(after) + 1 if after in children else len(children), new)

    def _say(self, progress: Progress, place: str) -> Progress:
        def say(text: str) -> None:
            line = f"{place}: {text}"
            self.launcher.out.say(line)
            progress(line)

        return say

    def _described(self, child: Child) -> dict[str, Any]:
        return {"name": child.name, "pid": child.pid, "port": child.port,
                "instance": child.instance or None}  # fmt: skip

    async def _discard(self, new: Child) -> None:
        """Stop a new process that did not make it, and forget it."""
        await self.supervisor.retire(new)
        if new in self.supervisor.children:
            self.supervisor.children.remove(new)

    def _serves(self, old: Child) -> str:
        if old.running:
            return f"{old.instance or old.name} (pid {old.pid}) still serves"
        return f"{old.name} is not running; the launcher restarts it as after a crash"

    def _failed(self, why: str, new: Child, still: str) -> Problem:
        if "output:" not in why:
            why += f" (its output: {self.launcher.shown(f'logs/{new.name}.log')})"
        return Problem(500, "failed", "Internal Server Error", f"{why}; {still}")


def routed_everywhere(doc: dict[str, Any], service: str, instance: str) -> bool:
    """Whether every gateway worker routes ``service`` to ``instance``, by its ``/upstreams``.

    ``doc`` is ``GET /upstreams?per_worker=1``: each worker's tables (or one
    process's). A service has one table, or one per route policy
    (``inventory@products-read``); one the gateway has none of yet is
    routed nowhere, so there is nothing to wait for.
    """
    if doc.get("unanswered"):
        return False
    workers = doc["workers"] if isinstance(doc.get("workers"), list) else [doc]
    return all(
        instance in {ep.get("key") for ep in table.get("endpoints", [])}
        for worker in workers
        for table in worker.get("upstreams", [])
        if str(table.get("name", "")).split("@")[0] == service
    )


def _exit(child: Child) -> str:
    from services.supervisor import describe_exit

    return describe_exit(child.process.returncode if child.process is not None else None)


def _plural(n: int, word: str) -> str:
    return word if n == 1 else ("processes" if word == "process" else word + "s")
