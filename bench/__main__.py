"""``python -m bench <name|all> [args]``: run one benchmark, or all of them with ``all``."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

import bench


def available() -> list[str]:
    here = Path(bench.__file__).parent
    return sorted(m.name for m in pkgutil.iter_modules([str(here)]) if not m.name.startswith("_"))


def main(argv: list[str]) -> int:
    names = available()
    if not argv or argv[0] in {"-h", "--help"}:
        print(f"usage: python -m bench {{{','.join([*names, 'all'])}}} [--quick] [args]")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name == "all":
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
