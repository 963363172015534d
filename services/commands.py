"""``python -m services status | restart | scale``: commands against the running system.

Each is a client of the launcher's control socket (:mod:`services.control`),
``run/control.sock``, or ``--run-dir`` as the launcher was given it:

``status [--json]``
    every process: name, pid, port, instance id, state, restarts (crashes
    the launcher restarted), uptime; a table, or the launcher's JSON answer.
``restart NAME... [--json]``
    a service (``inventory``: each of its processes in turn), one process
    (``inventory-1``), several, or ``all`` (every one but Redis); the steps
    are printed as they happen, the command returns once every new process
    is ready (and, for a service, registered and routed to by the gateway).
``scale SERVICE N [--json]``
    N instances of a business service: new ones ready, registered and
    routed before it returns; or the newest stopped (deregistered, drained).

Whatever goes wrong is one line on stderr, with the exit status:

=====  ==============================================================
code   meaning
=====  ==============================================================
0      done (status printed, every new process ready)
1      refused or failed: unknown name, out of range, another
       operation under way, a new process that did not become ready
2      bad usage, or no run directory where said
3      the system is not running (no launcher answers), or is still
       starting or already stopping
=====  ==============================================================
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.errors import SettingsError
from core.settings import load, option
from services.control import SOCKET, ask

__all__ = ["COMMANDS", "ControlSettings", "main"]

EXIT_FAILED, EXIT_USAGE, EXIT_DOWN = 1, 2, 3

#: What each command takes after its name, for the usage line.
COMMANDS = {"status": "", "restart": "NAME...", "scale": "SERVICE N"}
#: Each command's ``--help``.
DESCRIPTIONS = {
    "status": "List every process of the running system (`make up`): name, pid, port, instance\n"
    "id, state, restarts (crashes the launcher recovered from), uptime.",
    "restart": "Restart NAME of the running system without failing a request: a service\n"
    "(each of its processes in turn), one process (inventory-1), several, or all\n"
    "(every process but Redis). Returns once every new process is ready.",
    "scale": "Run N (1-16) instances of SERVICE (customers, inventory, billing): new ones\n"
    "ready, registered and routed before it returns, or the newest ones stopped.",
}
EXIT_STATUS = (
    "\nExit status: 0 done, 1 refused or failed (the line says why), 2 bad usage or no\n"
    "run directory, 3 the system is not running."
)


@dataclasses.dataclass(frozen=True)
class ControlSettings:
    """The commands' settings (prefix ``ESSAIM_CONTROL_``; the run directory's is the launcher's)."""

    run_dir: str = dataclasses.field(
        default="run", metadata=option("the launcher's run directory", env="ESSAIM_RUN_DIR")
    )
    json: bool = dataclasses.field(
        default=False, metadata=option("print the launcher's answer as JSON (progress on stderr)")
    )
    timeout: float = dataclasses.field(
        default=600.0, metadata=option("seconds to wait for the answer")
    )

    def validate(self) -> None:
        if self.timeout <= 0:
            raise SettingsError(f"timeout: expected > 0, got {self.timeout}")


class CommandError(Exception):
    """Why a command did not do its job: ``str()`` is the line to print, ``code`` the exit status."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def split(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(operands, flags)``: flags with their values (``--run-dir X``, ``--json``) apart."""
    operands: list[str] = []
    flags: list[str] = []
    args = list(args)
    while args:
        arg = args.pop(0)
        if arg.startswith("-") and not _number(arg):
            flags.append(arg)
            takes_value = arg not in ("--json", "-h", "--help") and "=" not in arg
            if takes_value and args:
                flags.append(args.pop(0))
        else:
            operands.append(arg)
    return operands, flags


def _number(text: str) -> bool:
    return text.lstrip("-").isdigit()


def request_for(command: str, operands: list[str]) -> dict[str, Any]:
    """The control request of ``command OPERANDS``; :class:`CommandError` on bad usage."""
    usage = f"usage: python -m services {command} {COMMANDS[command]}".rstrip()
    if command == "status":
        if operands:
            raise CommandError(f"status takes no operand ({' '.join(operands)}); {usage}", 2)
        return {"command": "status"}
    if command == "restart":
        if not operands:
            raise CommandError(f"restart what? {usage} (a service, a process, or all)", 2)
        return {"command": "restart", "names": operands}
    if len(operands) != 2:
        raise CommandError(f"{usage} (for example: scale inventory 3)", 2)
    service, count = operands
    try:
        instances = int(count)
    except ValueError:
        raise CommandError(
            f"N: expected a number of instances, got {count!r}; {usage}", 2
        ) from None
    return {"command": "scale", "service": service, "instances": instances}


async def send(settings: ControlSettings, request: dict[str, Any]) -> dict[str, Any]:
    """The launcher's answer to ``request``; :class:`CommandError` when none, or a problem."""
    run_dir = Path(settings.run_dir)
    out = sys.stderr if settings.json else sys.stdout

    def progress(line: str) -> None:
        print(line, file=out, flush=True)

    try:
        answer = await ask(run_dir / SOCKET, request, progress, settings.timeout)
    except (OSError, SettingsError) as exc:
        if isinstance(exc, ConnectionError) and not isinstance(
            exc, ConnectionRefusedError | FileNotFoundError
        ):
            raise CommandError(f"the launcher stopped answering: {exc}", EXIT_DOWN) from None
        raise CommandError(
            f"the system of {settings.run_dir}/ is not running: start it with `make up`", EXIT_DOWN
        ) from None
    except TimeoutError:
        raise CommandError(
            f"no answer within {settings.timeout:.0f}s (--timeout); the operation goes on:"
            f" `python -m services status` shows where it is",
            EXIT_FAILED,
        ) from None
    status = answer.get("status")
    if status != 200:
        code = EXIT_DOWN if status == 503 else EXIT_FAILED
        raise CommandError(str(answer.get("detail") or answer.get("title") or answer), code)
    return answer


def duration(seconds: float | None) -> str:
    """``45s``, ``2m10s``, ``3h02m``; ``-`` for none."""
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def table(answer: dict[str, Any]) -> list[str]:
    """``status``'s answer as aligned columns, one process a line."""
    head = ("NAME", "PID", "PORT", "INSTANCE", "STATE", "RESTARTS", "UPTIME")
    rows = [head] + [
        (
            p["name"],
            str(p["pid"] or "-"),
            str(p["port"] or "-"),
            p["instance"] or "-",
            p["state"],
            str(p["restarts"]),
            duration(p["uptime"]),
        )
        for p in answer["processes"]
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
             for row in rows]  # fmt: skip
    if answer.get("operation"):
        lines.append(f"under way: {answer['operation']}")
    return lines


def main(command: str, argv: Sequence[str] | None = None) -> int:
    """``python -m services COMMAND ARGS``; the exit status (see the module's table)."""
    operands, flags = split(sys.argv[2:] if argv is None else argv)
    prog = f"python -m services {command}"
    try:
        settings = load(
            ControlSettings,
            prefix="ESSAIM_CONTROL_",
            argv=flags,
            prog=f"{prog} {COMMANDS[command]}".rstrip(),
            description=DESCRIPTIONS[command] + EXIT_STATUS,
        )
        request = request_for(command, operands)
        if not Path(settings.run_dir).is_dir():
            raise CommandError(
                f"no run directory {settings.run_dir}/: start the system with `make up` here,"
                " or give the launcher's with --run-dir",
                EXIT_USAGE,
            )
        answer = asyncio.run(send(settings, request))
    except SettingsError as exc:
        print(f"services {command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CommandError as exc:
        print(f"services {command}: {exc}", file=sys.stderr)
        return exc.code
    if settings.json:
        print(json.dumps(answer, indent=1))
    elif command == "status":
        print("\n".join(table(answer)))
    else:
        print(answer["summary"])
    return 0
