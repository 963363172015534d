"""``python -m bench <name|all> [args]``: run one benchmark, or all of them with ``all``.

``python -m bench --help`` lists them with what each measures and how long it
takes with its defaults (each module's ``DURATION``); ``python -m bench NAME
--help`` prints that benchmark's own flags and exits.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

import bench


def available() -> list[str]:
    here = Path(bench.__file__).parent
    return sorted(m.name for m in pkgutil.iter_modules([str(here)]) if not m.name.startswith("_"))


def listing(names: list[str]) -> str:
    """The usage and one line per benchmark: its name, how long it takes, what it measures."""
    lines = [
        f"usage: python -m bench {{{','.join([*names, 'all'])}}} [--quick] [args]",
        "",
        "Each benchmark prints its progress on stderr as it goes and its report on stdout,",
        "with the machine's load average before and after (a run is marked noisy above",
        "a 1-minute load of 0.3). --quick is a smoke run of seconds and judges no target.",
        "`python -m bench NAME --help` lists a benchmark's flags.",
        "",
        "benchmark  default run      measures",
    ]
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        summary = (module.__doc__ or "").strip().splitlines()[0].split(": ", 1)[-1]
        lines.append(f"{name:<10} {getattr(module, 'DURATION', '?'):<16} {summary}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    names = available()
    if not argv or argv[0] in {"-h", "--help"}:
        print(listing(names), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name == "all":
        if {"-h", "--help"} & set(rest):
            print(listing(names))
            return 0
        code = 0
        for each in names:
            print(f"== bench {each}", flush=True)
            code |= importlib.import_module(f"bench.{each}").main(rest)
        return code
    if name not in names:
        print(f"unknown benchmark {name!r}; one of: {', '.join(names)}", file=sys.stderr)
        return 2
    return int(importlib.import_module(f"bench.{name}").main(rest))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
