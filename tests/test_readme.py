"""The README's console examples run as shown.

Each ```console block under a section named here is split into ``$ command``
and its expected output (:mod:`tests.console`); the commands run one after the
other in one bash session, as typed in one terminal, against components
started for the test (their default ports replaced by free ones) and each
output must match, times aside. A command commented ``# Server-Sent Events``
is read for one second and compared up to the lines shown.
"""

from __future__ import annotations

import re
from pathlib import Path

from core.testing import ComponentFactory
from tests.console import Shell, console_blocks

README = Path(__file__).resolve().parent.parent / "README.md"
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


REV = re.compile(r'"rev":\d+')


def normalise(lines: list[str], *, revs: bool = False) -> list[str]:
    """Times always, and the config service's change counter with ``revs``."""
    out = [TIME.sub("<time>", line) for line in lines]
    return [REV.sub('"rev":N', line) for line in out] if revs else out


async def play(section: str, port_of: dict[str, int], *, revs: bool = False) -> None:
    """Run every example of ``section`` and compare its output."""
    examples = console_blocks(README, section)
    assert len(examples) >= 5, section
    async with Shell() as shell:
        for command, expected in examples:
            for default, port in port_of.items():
                command = command.replace(default, f"localhost:{port}")
            streaming = "# Server-Sent Events" in command
            if streaming:
                command = "timeout 1 " + command.split("#")[0]
            status, got, err = await shell.run(command)
            if streaming:
                got = got[: len(expected)]
            else:
                assert status == 0, (command, err)
            assert normalise(got, revs=revs) == normalise(expected, revs=revs), command


async def test_registry_curl_examples_run_as_shown(
    components: ComponentFactory, redis_url: str
) -> None:
    registry = await components.start("registry", "--redis-url", redis_url)
    await play("The registry (discovery service)", {"localhost:8761": registry.port})


async def test_config_service_curl_examples_run_as_shown(
    components: ComponentFactory, redis_url: str, tmp_path: Path
) -> None:
    configsvc = await components.start(
        "configsvc", "--redis-url", redis_url, "--data-dir", str(tmp_path / "configsvc")
    )
    await play("The config service", {"localhost:8888": configsvc.port}, revs=True)
