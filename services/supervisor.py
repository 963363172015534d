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
- Once :attr:`Supervisor.started` is set, a child that exits is reported and
  started again with the same command, after 0.5 s, doubling (up to 30 s)
  while it keeps dying within 30 s of its start.
- :meth:`Supervisor.stop_all` stops them stage by stage in reverse: SIGTERM,
  then SIGKILL past ``shutdown_timeout``.
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
    """One running (or restarting) process of the system."""

    def __init__(
        self, name: str, stage: int, argv: list[str], env: dict[str, str], health: str, url: str
    ) -> None:
        self.name = name
        self.stage = stage
        self.argv = argv
        self.env = env
        self.health = health
        self.url = url
        self.process: asyncio.subprocess.Process | None = None
        self.started_at = 0.0
        self.restarts = 0
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

    async def start(self, child: Child) -> None:
        """Start ``child``'s process; :class:`StartupFailed` once stopping began."""
        if self.stopping:
            raise StartupFailed(f"{child.name}: not started, the system is stopping")
        log_path = self.log_dir / f"{child.name}.log"
        child.process = await asyncio.create_subprocess_exec(
            *child.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=child.env,
            start_new_session=True,
            preexec_fn=self._preexec,
        )
        child.started_at = time.monotonic()
        (self.pid_dir / f"{child.name}.pid").write_text(f"{child.process.pid}\n")
        child.pump = asyncio.ensure_future(self._pump(child, child.process, log_path))
        self._spawn(self._watch(child, child.process))

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
        if child.process is not process or self.stopping:
            return
        if not self.started:
            self.startup_failure = (
                f"{child.name} exited with {describe_exit(code)} while starting"
                f" (its output: {self.log_dir / (child.name + '.log')})"
            )
            return
        lived = time.monotonic() - child.started_at
        delay = 0.5 if lived > 30 else min(30.0, 0.5 * 2 ** min(child.restarts, 6))
        self.out.say(
            f"{child.name} (pid {process.pid}) exited with {describe_exit(code)} after {lived:.1f}s;"
            f" restarting in {delay:.1f}s"
        )
        child.restarts += 1
        await asyncio.sleep(delay)
        if self.stopping:
            return
        try:
            await self.start(child)
            await self.wait_healthy([child], self.startup_timeout)
            self.out.say(f"{child.name} restarted (pid {child.pid})")
        except (StartupFailed, OSError) as exc:
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

    async def _stop(self, child: Child) -> None:
        process = child.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(process.wait(), self.shutdown_timeout)
        except TimeoutError:
            self.out.say(f"{child.name} did not stop in {self.shutdown_timeout:.0f}s: SIGKILL")
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            code = await process.wait()
        if code not in (0, -signal.SIGTERM):
            self.out.say(f"{child.name} stopped with {describe_exit(code)}")

    def kill_all(self) -> None:
        for child in self.children:
            if child.running and child.process is not None:
                with contextlib.suppress(ProcessLookupError):
                    child.process.kill()

    # -- the run -----------------------------------------------------------------------


def describe_exit(code: int | None) -> str:
    """``code 3``, ``signal SIGKILL``: how a process ended."""
    if code is None:
        return "no exit code"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
    return f"code {code}"
