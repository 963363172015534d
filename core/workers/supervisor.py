"""A parent process that runs N workers, restarts the crashed, replaces them one by one, stops them.

Each worker slot owns listening sockets (made by the parent, see
:mod:`core.workers.sockets`); a worker is spawned with its slot's sockets
inherited, a pipe to say it is ready, and the read end of a "life" pipe whose
end of file tells it that the parent died (it then stops: no orphan keeps
serving). Workers run in their own session, so a terminal's Ctrl-C reaches
the parent only, which stops them in order.

- :meth:`Supervisor.start` spawns every slot and waits until each is ready
  (``StartupError`` when one exits first: a bad route table, say).
- A worker that exits on its own is a crash: logged with its exit code and
  spawned again on the same sockets (at once if it had run 10 s, else after
  a delay doubling from 0.1 s to 5 s). Connections arriving meanwhile wait
  in the slot's queue; none is refused.
- :meth:`Supervisor.reload` (``SIGHUP``) replaces the workers one slot at a
  time: the new worker accepts from the slot's sockets and says it is ready
  before the old one is told to stop (``SIGTERM``: it stops accepting and
  drains its requests in flight). A new worker that fails to become ready
  stops the reload and the old workers stay.
- :meth:`Supervisor.stop` sends ``SIGTERM`` to every worker and waits, then
  ``SIGKILL`` after ``stop_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from core import log
from core.errors import StartupError

logger = log.get("workers")

__all__ = ["Supervisor", "Worker", "WorkerSpec", "notify_ready"]

_STABLE_SECONDS = 10.0
_MAX_DELAY = 5.0


@dataclasses.dataclass(frozen=True)
class WorkerSpec:
    """What a worker is told on its command line: its slot, inherited fds, admin socket path."""

    slot: int
    fds: tuple[int, ...]
    ready_fd: int
    life_fd: int
    admin: str

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> WorkerSpec:
        doc = json.loads(text)
        return cls(
            slot=int(doc["slot"]),
            fds=tuple(int(fd) for fd in doc["fds"]),
            ready_fd=int(doc["ready_fd"]),
            life_fd=int(doc["life_fd"]),
            admin=str(doc["admin"]),
        )


def notify_ready(fd: int) -> None:
    """The worker's side: tell the parent it accepts (write to, then close, the ready pipe)."""
    with contextlib.suppress(OSError):
        os.write(fd, b"R")
    with contextlib.suppress(OSError):
        os.close(fd)


@dataclasses.dataclass(eq=False)
class Worker:
    """One worker process. ``state``: starting, ready, stopping, exited."""

    slot: int
    generation: int
    process: asyncio.subprocess.Process
    admin: str
    ready: asyncio.Future[None]
    started: float
    state: str = "starting"

    @property
    def pid(self) -> int:
        return self.process.pid


class Supervisor:
    """Workers on ``slots`` (each a sequence of listening sockets), made by ``command(spec)``."""

    def __init__(
        self,
        command: Callable[[WorkerSpec], Sequence[str]],
        slots: Sequence[Sequence[socket.socket]],
        *,
        workdir: Path,
        ready_timeout: float = 30.0,
        stop_timeout: float = 15.0,
    ) -> None:
        self.command = command
        self.slots = [tuple(s) for s in slots]
        self.workdir = workdir
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.workers: list[Worker | None] = [None] * len(self.slots)
        self.retiring: set[Worker] = set()
        self.restarts = 0
        self.reloads = 0
        self.stopping = False
        self.started = False
        self.reloading: asyncio.Task[bool] | None = None
        self._generation = 0
        self._crashes = [0] * len(self.slots)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._life_r, self._life_w = os.pipe()

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Spawn every slot and wait until all are ready; ``StartupError`` when one is not."""
        spawned = [await self._spawn(slot) for slot in range(len(self.slots))]
        for worker in spawned:
            self.workers[worker.slot] = worker
        try:
            for worker in spawned:
                await self._wait_ready(worker)
        except StartupError:
            await self.stop()
            raise
        self.started = True
        logger.info(
            "%d workers ready (pids %s)", len(spawned), ", ".join(str(w.pid) for w in spawned)
        )

    async def stop(self) -> None:
        """``SIGTERM`` to every worker, wait for them (``SIGKILL`` after ``stop_timeout``)."""
        self.stopping = True
        if self.reloading is not None:
            self.reloading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.reloading
        everyone = [w for w in self.workers if w is not None] + list(self.retiring)
        for worker in everyone:
            self._signal(worker, signal.SIGTERM)
        waits = [asyncio.create_task(w.process.wait()) for w in everyone]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=self.stop_timeout)
            for worker in everyone:
                if worker.process.returncode is None:
                    logger.warning(
                        "worker %d (pid %d) did not stop: killed", worker.slot, worker.pid
                    )
                    self._signal(worker, signal.SIGKILL)
            if pending:
                await asyncio.wait(pending, timeout=5.0)
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for fd in (self._life_r, self._life_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def reload(self) -> asyncio.Task[bool]:
        """Replace the workers one by one (see the module doc); a reload in progress is reused."""
        if self.reloading is None or self.reloading.done():
            self.reloading = asyncio.create_task(self._reload(), name="workers:reload")
        return self.reloading

    async def _reload(self) -> bool:
        logger.info("reload: replacing %d workers one by one", len(self.slots))
        for slot in range(len(self.slots)):
            if self.stopping:
                return False
            new = await self._spawn(slot)
            try:
                await self._wait_ready(new)
            except StartupError as exc:
                logger.error("reload stopped, the old workers stay: %s", exc)
                self._signal(new, signal.SIGKILL)
                return False
            old = self.workers[slot]
            self.workers[slot] = new
            if old is not None:
                self._retire(old)
            logger.info(
                "reload: worker %d is pid %d (was %s)",
                slot,
                new.pid,
                old.pid if old is not None else "none",
            )
        self.reloads += 1
        logger.info("reload done")
        return True

    def _retire(self, worker: Worker) -> None:
        """Tell ``worker`` to stop accepting and drain; it is no longer restarted."""
        worker.state = "stopping"
        self.retiring.add(worker)
        self._signal(worker, signal.SIGTERM)

    # -- spawning and watching ------------------------------------------------------

    async def _spawn(self, slot: int) -> Worker:
        loop = asyncio.get_running_loop()
        self._generation += 1
        generation = self._generation
        admin = str(self.workdir / f"w{slot}.{generation}.sock")
        ready_r, ready_w = os.pipe()
        fds = tuple(sock.fileno() for sock in self.slots[slot])
        spec = WorkerSpec(slot, fds, ready_w, self._life_r, admin)
        try:
            process = await asyncio.create_subprocess_exec(
                *self.command(spec),
                pass_fds=(*fds, ready_w, self._life_r),
                start_new_session=True,
            )
        except OSError:
            os.close(ready_r)
            raise
        finally:
            os.close(ready_w)
        ready: asyncio.Future[None] = loop.create_future()
        worker = Worker(slot, generation, process, admin, ready, time.monotonic())

        def readable() -> None:
            try:
                data = os.read(ready_r, 16)
            except OSError:
                data = b""
            loop.remove_reader(ready_r)
            os.close(ready_r)
            if ready.done():
                return
            if data:
                ready.set_result(None)
            else:
                ready.set_exception(EOFError())
                ready.exception()  # marked retrieved: the waiter or the watcher reports it

        loop.add_reader(ready_r, readable)
        task = asyncio.create_task(self._watch(worker), name=f"workers:watch:{slot}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return worker

    async def _wait_ready(self, worker: Worker) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(worker.ready), self.ready_timeout)
        except TimeoutError:
            raise StartupError(
                f"worker {worker.slot} (pid {worker.pid}) not ready within {self.ready_timeout}s"
            ) from None
        except EOFError:
            code = await worker.process.wait()
            raise StartupError(
                f"worker {worker.slot} exited with code {code} before it was ready"
            ) from None
        worker.state = "ready"

    async def _watch(self, worker: Worker) -> None:
        code = await worker.process.wait()
        if not worker.ready.done():
            worker.ready.set_exception(EOFError())
            worker.ready.exception()  # retrieved: a crash before ready is reported by the waiter
        state, worker.state = worker.state, "exited"
        self.retiring.discard(worker)
        if self.stopping or state == "stopping" or self.workers[worker.slot] is not worker:
            logger.info("worker %d (pid %d) stopped (exit code %s)", worker.slot, worker.pid, code)
            return
        if state == "starting" and not self.started:
            return  # start() reports it, and fails
        lived = time.monotonic() - worker.started
        if lived >= _STABLE_SECONDS:
            self._crashes[worker.slot] = 0
        delay = (
            0.0
            if lived >= _STABLE_SECONDS
            else min(_MAX_DELAY, 0.1 * 2 ** self._crashes[worker.slot])
        )
        self._crashes[worker.slot] += 1
        self.restarts += 1
        logger.error(
            "worker %d (pid %d) exited with code %s: starting another in %.1fs",
            worker.slot, worker.pid, code, delay,
        )  # fmt: skip
        await asyncio.sleep(delay)
        if self.stopping or self.workers[worker.slot] is not worker:
            return
        new = await self._spawn(worker.slot)
        self.workers[worker.slot] = new
        try:
            await self._wait_ready(new)
        except StartupError as exc:
            logger.error("%s", exc)  # its own watcher spawns the next one
            return
        logger.info("worker %d is pid %d again", new.slot, new.pid)

    def _signal(self, worker: Worker, sig: signal.Signals) -> None:
        if worker.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                worker.process.send_signal(sig)

    # -- views ---------------------------------------------------------------------

    def ready_workers(self) -> list[Worker]:
        """The workers serving now, by slot (a worker being replaced is not among them)."""
        return [w for w in self.workers if w is not None and w.state == "ready"]

    def describe(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "workers": [
                {
                    "slot": slot,
                    "pid": w.pid if w is not None else None,
                    "state": w.state if w is not None else "none",
                    "generation": w.generation if w is not None else None,
                    "uptime": round(now - w.started, 3) if w is not None else 0.0,
                }
                for slot, w in enumerate(self.workers)
            ],
            "retiring": [{"slot": w.slot, "pid": w.pid} for w in self.retiring],
            "restarts": self.restarts,
            "reloads": self.reloads,
            "reloading": self.reloading is not None and not self.reloading.done(),
        }
