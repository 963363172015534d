"""The whole demo system in a child process, as ``make up`` runs it, on free ports.

For the console's screenshots (:mod:`services.console.screenshots`), its
browser tests (``tests/browser``) and the benchmarks that run the whole
system (:mod:`bench.system`, :mod:`bench.resilience`): :class:`RunningSystem` starts
``python -m services`` with a run directory of its own and free ports for
everything (so that it never meets a ``make up`` already running), waits
until the launcher says the system is up, reads what the launcher left in
the run directory (the URLs, the demo users' passwords, the write tokens,
the private Redis's URL), and stops it with SIGINT, as Ctrl-C does.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType

from core.runner import free_port
from services.launcher import BANNER_END

__all__ = ["RunningSystem"]

ROOT = Path(__file__).resolve().parents[1]


class RunningSystem:
    """``python -m services`` in ``run_dir``; a context manager that starts and stops it.

    ``args`` are more launcher arguments (``--log-level warning``...); ``echo``
    copies the launcher's output to stderr as it comes.
    """

    def __init__(
        self,
        run_dir: Path,
        *,
        timeout: float = 120.0,
        echo: bool = False,
        args: tuple[str, ...] = (),
    ) -> None:
        self.run_dir = Path(run_dir).resolve()
        self.timeout = timeout
        self.echo = echo
        self.args = args
        self.lines: list[str] = []
        self.ports = {name: free_port() for name in ("gateway", "admin", "registry", "configsvc")}
        self.process: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None

    # -- what the launcher left -------------------------------------------------------

    @property
    def gateway(self) -> str:
        """The gateway's traffic URL, as a browser reaches it."""
        return f"http://localhost:{self.ports['gateway']}"

    @property
    def registry(self) -> str:
        return f"http://127.0.0.1:{self.ports['registry']}"

    @property
    def configsvc(self) -> str:
        return f"http://127.0.0.1:{self.ports['configsvc']}"

    def secret(self, name: str) -> str:
        """A file of the run directory: ``admin.password``, ``registry.token``..."""
        return (self.run_dir / name).read_text().strip()

    @property
    def redis_url(self) -> str:
        """The private Redis's URL, password included."""
        masked = json.loads((self.run_dir / "system.json").read_text())["urls"]["redis"]
        return str(masked).replace("***", self.secret("redis.password"))

    def pid(self, name: str) -> int:
        return int((self.run_dir / f"{name}.pid").read_text())

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> RunningSystem:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ESSAIM_", "REDIS_URL"))}
        env["PYTHONUNBUFFERED"] = "1"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "services", "--run-dir", str(self.run_dir),
             "--gateway-port", str(self.ports["gateway"]),
             "--gateway-admin-port", str(self.ports["admin"]),
             "--registry-port", str(self.ports["registry"]),
             "--configsvc-port", str(self.ports["configsvc"]), *self.args],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + self.timeout
        # The banner's last line: "the system is up" comes first, the lines
        # after it (pids, passwords) may not be read yet when it is.
        while not any(BANNER_END in line for line in self.lines):
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = "\n".join(self.lines[-40:])
                self.stop()
                raise RuntimeError(f"the system did not come up:\n{tail}")
            time.sleep(0.05)
        return self

    def _read(self) -> None:
        process = self.process
        assert process is not None
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines.append(line)
            if self.echo:
                print(line, file=sys.stderr)

    def printed(self, pattern: str) -> list[str]:
        """The launcher's output lines matching ``pattern``."""
        return [line for line in self.lines if re.search(pattern, line)]

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if self._reader is not None:
            self._reader.join(5)
        if process.stdout is not None:
            process.stdout.close()

    def __enter__(self) -> RunningSystem:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with contextlib.suppress(Exception):
            self.stop()
