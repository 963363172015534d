"""The README's console examples run as shown.

Each ```console block under a section named here is split into ``$ command``
and its expected output; the command runs in bash against components started
for the test (their default ports replaced by free ones) and its output must
match, times aside. A command commented ``# Server-Sent Events`` is read for
one second and compared up to the lines shown.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
from pathlib import Path

from core.testing import ComponentFactory

README = Path(__file__).resolve().parent.parent / "README.md"
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def console_blocks(section: str) -> list[tuple[str, list[str]]]:
    """``(command, expected output lines)`` of the console blocks in ``section``."""
    text = README.read_text()
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    body = text[start : end if end != -1 else len(text)]
    examples: list[tuple[str, list[str]]] = []
    for block in re.findall(r"```console\n(.*?)```", body, re.S):
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


REV = re.compile(r'"rev":\d+')


def normalise(lines: list[str], *, revs: bool = False) -> list[str]:
    """Times always, and the config service's change counter with ``revs``."""
    out = [TIME.sub("<time>", line) for line in lines]
    return [REV.sub('"rev":N', line) for line in out] if revs else out


async def play(section: str, port_of: dict[str, int], *, revs: bool = False) -> None:
    """Run every example of ``section`` and compare its output."""
    examples = console_blocks(section)
    assert len(examples) >= 5, section
    for command, expected in examples:
        for default, port in port_of.items():
            command = command.replace(default, f"localhost:{port}")
        streaming = "# Server-Sent Events" in command
        if streaming:
            command = "timeout 1 " + command.split("#")[0]
        proc = await asyncio.to_thread(
            subprocess.run, ["bash", "-c", command], capture_output=True, text=True
        )
        got = proc.stdout.splitlines()
        while got and got[-1] == "":
            got.pop()
        if streaming:
            got = got[: len(expected)]
        else:
            assert proc.returncode == 0, (command, proc.stderr)
        assert normalise(got, revs=revs) == normalise(expected, revs=revs), command


async def test_registry_curl_examples_run_as_shown(
    components: ComponentFactory, redis_url: str
) -> None:
    registry = await components.start("registry", "--redis-url", redis_url)
    await play("The registry (discovery service)", {"localhost:8761": registry.port})


async def test_config_service_curl_examples_run_as_shown(
    components: ComponentFactory, redis_url: str
) -> None:
    configsvc = await components.start("configsvc", "--redis-url", redis_url)
    await play("The config service", {"localhost:8888": configsvc.port}, revs=True)
