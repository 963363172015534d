"""The docs' console examples, read from their Markdown and played in one terminal.

A ```console block holds ``$ command`` lines (a line ending in ``\\`` goes on
to the next), each followed by its expected output. :func:`console_blocks`
reads them (:func:`fenced_blocks` reads every block, whatever its language);
:class:`Shell` runs them one after the other in one bash session, as a user
types them in one terminal: a variable set by one (``TOKEN=$(...)``) is there
for the next.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import shutil
import tempfile
from pathlib import Path
from types import TracebackType

__all__ = ["Shell", "console_blocks", "console_examples", "fenced_blocks"]


def fenced_blocks(path: Path) -> list[tuple[str, str]]:
    """Every fenced block of the Markdown file: ``(language, body)``, in order."""
    return re.findall(r"^```(\w*)\n(.*?)^```", path.read_text(), re.S | re.M)


def console_blocks(path: Path, section: str | None = None) -> list[tuple[str, list[str]]]:
    """``(command, expected output lines)`` of the console blocks, in order.

    With ``section``, only those under ``## section``; else those of the whole file.
    """
    text = path.read_text()
    if section is not None:
        start = text.index(f"\n## {section}\n")
        end = text.find("\n## ", start + 1)
        text = text[start : end if end != -1 else len(text)]
    examples: list[tuple[str, list[str]]] = []
    for block in re.findall(r"^```console\n(.*?)^```", text, re.S | re.M):
        examples += console_examples(block)
    return examples


def console_examples(block: str) -> list[tuple[str, list[str]]]:
    """``(command, expected output lines)`` of one console block's text."""
    examples: list[tuple[str, list[str]]] = []
    lines = block.splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].startswith("$ "):
            i += 1
            continue
        command = lines[i][2:]
        while command.endswith("\\"):
            i += 1
            command = command[:-1] + " " + lines[i].strip()
        i += 1
        output = []
        while i < len(lines) and not lines[i].startswith("$ "):
            output.append(lines[i])
            i += 1
        while output and output[-1] == "":
            output.pop()
        examples.append((command, output))
    return examples


class Shell:
    """One bash session; :meth:`run` types a command and returns what it printed.

    The session starts in ``cwd`` (else the current directory). Each command
    reads nothing from the terminal (its stdin is ``/dev/null``); its standard
    error is returned apart.
    """

    def __init__(self, cwd: Path | None = None) -> None:
        self.cwd = cwd
        self._process: asyncio.subprocess.Process | None = None
        self._marker = "--- essaim console " + secrets.token_hex(8)
        self._errors = Path()

    async def __aenter__(self) -> Shell:
        self._errors = Path(tempfile.mkdtemp(prefix="essaim-console-")) / "stderr"
        self._process = await asyncio.create_subprocess_exec(
            "bash", "--noprofile", "--norc",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL, cwd=self.cwd, limit=1 << 20,
        )  # fmt: skip
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        shutil.rmtree(self._errors.parent, ignore_errors=True)
        process = self._process
        if process is None:
            return
        if process.returncode is None:
            assert process.stdin is not None
            process.stdin.close()
            try:
                await asyncio.wait_for(process.wait(), 5)
            except TimeoutError:
                process.kill()
                await process.wait()

    async def run(self, command: str, timeout: float = 30.0) -> tuple[int, list[str], str]:
        """``(exit status, stdout lines without the trailing empty ones, stderr)``."""
        process = self._process
        assert process is not None, "use Shell as an async context manager"
        assert process.stdin is not None
        assert process.stdout is not None
        errors = self._errors
        # Braces, not a subshell: an assignment stays. The newline before "}" ends a comment.
        process.stdin.write(
            f"{{ {command}\n}} </dev/null 2>'{errors}'\n"
            f"printf '\\n{self._marker} %d\\n' $?\n".encode()
        )
        await process.stdin.drain()
        lines: list[str] = []
        async with asyncio.timeout(timeout):
            while True:
                raw = await process.stdout.readline()
                if not raw:
                    raise RuntimeError(f"bash exited while running {command!r}: {lines}")
                line = raw.decode(errors="replace").rstrip("\n")
                if line.startswith(self._marker):
                    status = int(line.rsplit(" ", 1)[1])
                    break
                lines.append(line)
        while lines and lines[-1] == "":
            lines.pop()
        return status, lines, errors.read_text() if errors.exists() else ""
