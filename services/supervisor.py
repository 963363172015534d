"""Supervising the processes of a system: start in stages, watch, restart, stop in reverse.

:class:`Supervisor` runs each :class:`Child` as its own process in its own
session (a Ctrl-C in the terminal reaches only the supervising process, which
stops the children in order) and, on Linux, with ``PR_SET_PDEATHSIG`` so that
a child gets SIGTERM if the supervisor dies. Every line a child writes is
printed with its name as a prefix and appended to ``{log_dir}/NAME.log``; its
pid is in ``{pid_dir}/NAME.pid`` while it runs.

- :meth:`Supervisor.start_all` starts the children stage by stage (lowest
  first), each stage once the previous one answers its health checks; a child
  that exits meanwhile makes it raise :class:`StartupFailed`.
- Once :attr:`Supervisor.started` is set, a child that dies (a non-zero exit,
  a signal) is a crash: reported, counted in :attr:`Child.restarts` and
  started again with the same command after 0.5 s, doubling (up to 30 s)
  while it keeps dying within 30 s of its start. A child that stopped by
  itself (exit status 0 or SIGTERM: someone asked it to stop, and it
  drained) is not a crash: it is started again at once, uncounted.
- A child the supervisor stops on purpose (:meth:`Supervisor.retire`: a
  requested restart or a scale-down, :mod:`services.operations`) is not
  started again; nor is one not yet :attr:`Child.supervised` (a new process
  of an operation, which the operation watches itself until it is ready).
- :meth:`Supervisor.stop_all` stops them stage by stage in reverse: SIGTERM,
  then SIGKILL past ``shutdown_timeout``.

Each child has a :attr:`Child.state` for ``python -m services status``:
``waiting`` (its stage has not begun), ``starting`` (started, not yet healthy), ``ready``, ``stopping``,
``restarting`` (died, waiting for its next start), ``failed`` (a restart
that did not become healthy), ``stopped``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import aiohttp

from core.security.resp import RespClient, RespError

__all__ = ["Child", "Output", "StartupFailed", "Supervisor", "describe_exit"]

#: A clean exit sooner than this after the start is treated as a crash: it can't have served.
QUICK_EXIT = 1.0
#: A crash later than this after the start begins a new series of delays (0.5 s again).
STABLE_AFTER = 30.0


class StartupFailed(Exception):
    """A process exited or stayed unhealthy while the system was starting."""


def _death_signal() -> Callable[[], None] | None:
    """Linux: a ``preexec_fn`` making the child get SIGTERM when its parent dies (whatever killed it).

    Everything it needs is loaded here, in the parent: between fork and exec
    the child must not import or allocate much.
    """
    if sys.platform != "linux":
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    set_pdeathsig, sigterm = 1, int(signal.SIGTERM)  # PR_SET_PDEATHSIG

    def preexec() -> None:  # pragma: no cover - runs in the child
        prctl(set_pdeathsig, sigterm)

    return preexec


class Output:
    """The terminal: each line prefixed by the name of the process that wrote it (in color on a tty)."""

    COLORS = (36, 33, 32, 35, 34, 31, 96, 93, 92, 95)

    def __init__(self, stream: IO[str], width: int) -> None:
        self.stream = stream
        self.width = width
        self.color = stream.isatty() and os.environ.get("NO_COLOR") is None
        self._colors: dict[str, int] = {}

    def line(self, name: str, text: str) -> None:
        prefix = f"{name:<{self.width}} |"
        if self.color:
            code = self._colors.setdefault(name, self.COLORS[len(self._colors) % len(self.COLORS)])
            prefix = f"\x1b[{code}m{prefix}\x1b[0m"
        try:
            self.stream.write(f"{prefix} {text}\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass  # the terminal went away: the logs are still in their files

    def say(self, text: str) -> None:
        self.line("essaim", text)


class Child:
    """One running (or restarting) process of the system.

    ``name`` is its place in the system (``inventory-1``): its pid file, its
    log file and its prefix in the output. A requested restart replaces the
    process of a place with a new :class:`Child` of the same name, whose
    ``instance`` (the id it registers under) and ``port`` may differ.
    """

    def __init__(
        self,
        name: str,
        stage: int,
        argv: list[str],
        env: dict[str, str],
        health: str,
        url: str,
        *,
        service: str = "",
        instance: str = "",
        port: int = 0,
        pass_fds: tuple[int, ...] = (),
    ) -> None:
        self.name = name
        self.stage = stage
        self.argv = argv
        self.env = env
        self.health = health
        self.url = url
        self.service = service or name
        self.instance = instance
        self.port = port
        #: File descriptors the process inherits (a listening socket the launcher holds).
        self.pass_fds = pass_fds
        self.process: asyncio.subprocess.Process | None = None
        self.started_at = 0.0
        #: Crashes that the supervisor restarted (a requested restart is not one).
        self.restarts = 0
        #: Crashes in a row, each within :data:`STABLE_AFTER` of its start: the delay's exponent.
        self.streak = 0
        self.state = "waiting"
        #: The supervisor restarts it when it dies (else its owner watches it).
        self.supervised = True
        #: Stopped on purpose (a requested restart, a scale-down): never started again.
        self.retiring = False
        #: The exit status of a process that died while not supervised, for :meth:`Supervisor.adopt`.
        self.unhandled_exit: int | None = None
        self.pump: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None


class Supervisor:
    """Starts, watches, restarts and stops ``children``; see the module docstring."""

    def __init__(
        self,
        output: Output,
        *,
        log_dir: Path,
        pid_dir: Path,
        startup_timeout: float,
        shutdown_timeout: float,
    ) -> None:
        self.out = output
        self.log_dir = log_dir
        self.pid_dir = pid_dir
        self.startup_timeout = startup_timeout
        self.shutdown_timeout = shutdown_timeout
        self.children: list[Child] = []
        self.started = False
        self.stopping = False
        self.startup_failure: str | None = None
        self.session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._preexec = _death_signal()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def start(
        self, child: Child, argv: Sequence[str] | None = None, *, pid_file: bool = True
    ) -> None:
        """Start ``child``'s process (with ``argv`` instead of its own, this once).

        :class:`StartupFailed` once stopping began. ``pid_file``: write
        ``NAME.pid`` now (an operation writes it once the new process
        replaced the old one, :meth:`write_pid`).
        """
        if self.stopping:
            raise StartupFailed(f"{child.name}: not started, the system is stopping")
        log_path = self.log_dir / f"{child.name}.log"
        child.state = "starting"
        child.process = await asyncio.create_subprocess_exec(
            *(child.argv if argv is None else argv),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=child.env,
            start_new_session=True,
            preexec_fn=self._preexec,
            pass_fds=child.pass_fds,
        )
        child.started_at = time.monotonic()
        if pid_file:
            self.write_pid(child)
        child.pump = asyncio.ensure_future(self._pump(child, child.process, log_path))
        self._spawn(self._watch(child, child.process))

    def write_pid(self, child: Child) -> None:
        """``{pid_dir}/NAME.pid``: the pid of the process in ``child``'s place."""
        (self.pid_dir / f"{child.name}.pid").write_text(f"{child.pid}\n")

    async def _pump(self, child: Child, process: asyncio.subprocess.Process, log: Path) -> None:
        assert process.stdout is not None
        # A local file appended line by line: not worth a thread per line.
        with open(log, "a", encoding="utf-8") as file:  # noqa: ASYNC230
            while True:
                raw = await process.stdout.readline()
                if not raw:
                    return
                text = raw.decode("utf-8", "replace").rstrip("\r\n")
                file.write(text + "\n")
                file.flush()
                self.out.line(child.name, text)

    async def _watch(self, child: Child, process: asyncio.subprocess.Process) -> None:
        code = await process.wait()
        if child.pump is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(child.pump), 1.0)
        if child.process is not process:
            return
        if self.stopping or child.retiring:
            child.state = "stopped"
            return
        if not self.started:
            self.startup_failure = (
                f"{child.name} exited with {describe_exit(code)} while starting"
                f" (its output: {self.log_dir / (child.name + '.log')})"
            )
            return
        if not child.supervised:
            child.state = "stopped"  # its operation sees it and says so
            child.unhandled_exit = code
            return
        await self._after_exit(child, process, code)

    def adopt(self, child: Child) -> None:
        """Supervise ``child`` from now on; restart it at once if it died meanwhile."""
        child.supervised = True
        code, child.unhandled_exit = child.unhandled_exit, None
        if code is not None and child.process is not None and not child.retiring:
            self._spawn(self._after_exit(child, child.process, code))

    async def _after_exit(
        self, child: Child, process: asyncio.subprocess.Process, code: int
    ) -> None:
        """A supervised child died: report it and start it again (after a delay when a crash)."""
        lived = time.monotonic() - child.started_at
        child.state = "restarting"
        if code in (0, -signal.SIGTERM) and lived >= QUICK_EXIT:
            # Asked to stop by someone else (kill PID): it drained and left. Not a crash.
            delay = 0.0
            self.out.say(
                f"{child.name} (pid {process.pid}) stopped ({describe_exit(code)}) after"
                f" {lived:.1f}s, not a crash: starting it again"
            )
        else:
            child.streak = 1 if lived > STABLE_AFTER else child.streak + 1
            delay = min(30.0, 0.5 * 2 ** min(child.streak - 1, 6))
            child.restarts += 1
            self.out.say(
                f"{child.name} (pid {process.pid}) exited with {describe_exit(code)} after"
                f" {lived:.1f}s; restarting in {delay:.1f}s"
            )
        await asyncio.sleep(delay)
        if self.stopping or child.retiring:
            child.state = "stopped"
            return
        try:
            await self.start(child)
            await self.wait_healthy([child], self.startup_timeout)
            self.out.say(f"{child.name} restarted (pid {child.pid})")
        except (StartupFailed, OSError) as exc:
            if child.running:
                child.state = "failed"
            self.out.say(f"{child.name}: restart failed: {exc}")

    async def healthy(self, child: Child) -> bool:
        if child.health == "redis":
            # PING after AUTH with the URL's password: a server that refuses
            # the password is not healthy.
            client = RespClient(child.url)
            try:
                async with asyncio.timeout(1.0):
                    return bool(await client.call("PING") == "PONG")
            except (OSError, TimeoutError, RespError):
                return False
            finally:
                await client.close()
        assert self.session is not None
        try:
            async with self.session.get(
                child.health, timeout=aiohttp.ClientTimeout(total=1.0)
            ) as response:
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def wait_healthy(self, children: Sequence[Child], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        waiting = list(children)
        while waiting:
            if self.startup_failure is not None and not self.started:
                raise StartupFailed(self.startup_failure)
            for child in list(waiting):
                process = child.process
                if process is None or process.returncode is not None:
                    code = process.returncode if process is not None else None
                    raise StartupFailed(
                        f"{child.name} exited with {describe_exit(code)} while starting"
                        f" (its output: {self.log_dir / (child.name + '.log')})"
                    )
                if await self.healthy(child):
                    child.state = "ready"
                    waiting.remove(child)
            if waiting:
                if time.monotonic() > deadline:
                    names = ", ".join(c.name for c in waiting)
                    raise StartupFailed(f"{names} not healthy within {timeout:.0f}s")
                await asyncio.sleep(0.05)

    async def start_all(self) -> None:
        for stage in sorted({c.stage for c in self.children}):
            group = [c for c in self.children if c.stage == stage]
            for child in group:
                await self.start(child)
            await self.wait_healthy(group, self.startup_timeout)

    async def stop_all(self) -> None:
        """Every process, by stage in reverse: SIGTERM, then SIGKILL past the timeout."""
        self.stopping = True
        for stage in sorted({c.stage for c in self.children}, reverse=True):
            group = [c for c in self.children if c.stage == stage and c.running]
            await asyncio.gather(*(self._stop(child) for child in group))
        for child in self.children:
            if child.pump is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(child.pump, 1.0)
            (self.pid_dir / f"{child.name}.pid").unlink(missing_ok=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # A restart that was under way when the stop began.
        await asyncio.gather(*(self._stop(child) for child in self.children if child.running))

    async def retire(self, child: Child) -> int | None:
        """Stop ``child`` on purpose, for good: SIGTERM, SIGKILL past the timeout; its exit status.

        It is not started again, and its exit is not reported as a crash.
        """
        child.retiring = True
        await self._stop(child)
        child.state = "stopped"
        return child.process.returncode if child.process is not None else None

    async def _stop(self, child: Child) -> None:
        process = child.process
        if process is None or process.returncode is not None:
            return
        child.state = "stopping"
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(process.wait(), self.shutdown_timeout)
        except TimeoutError:
            self.out.say(f"{child.name} did not stop in {self.shutdown_timeout:.0f}s: SIGKILL")
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            code = await process.wait()
        child.state = "stopped"
        if code not in (0, -signal.SIGTERM):
            self.out.say(f"{child.name} stopped with {describe_exit(code)}")

    def kill_all(self) -> None:
        for child in self.children:
            if child.running and child.process is not None:
                with contextlib.suppress(ProcessLookupError):
                    child.process.kill()


def describe_exit(code: int | None) -> str:
    """``code 3``, ``signal SIGKILL``: how a process ended."""
    if code is None:
        return "no exit code"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
    return f"code {code}"
