"""``python -m core.native.build``: compile the gateway's hot path with mypyc (``make native``).

Compiles :data:`core.native.loader.MODULES` into C extensions under
``build/native/`` (or ``--out``), with the manifest that :mod:`core.native.loader`
checks before loading them. Nothing is written beside the sources, so an
edited ``.py`` never hides behind a stale ``.so``: the manifest no longer
matches and the process runs the source.

Needs mypy (mypyc ships with it), setuptools and a C compiler; all but the
compiler come with ``make venv``. Without a compiler it says so and exits 0
(the gateway runs interpreted, as it always can), or 1 under ``--require``.
The build happens in a scratch directory and replaces the old one in a
single rename, so a failed or interrupted build leaves the previous one.
"""

from __future__ import annotations

import argparse
import ast
import os
import shutil
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import orjson

from core.native.loader import (
    GROUP,
    MANIFEST,
    MODULES,
    ROOT,
    SHARED_LIBRARY,
    build_dir,
    digest,
    extension_suffix,
    source_path,
)


def _core_imports(module: str) -> set[str]:
    """The ``core`` modules that ``module``'s source imports, wherever the import sits."""
    path = source_path(module)
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_bytes(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from core.proxy import head`` imports a module or a name: try both.
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        for name in names:
            if name.split(".")[0] != "core":
                continue
            parts = name.split(".")
            # ``import core.proxy.head`` runs core/__init__ and core/proxy/__init__ too.
            for end in range(1, len(parts) + 1):
                candidate = ".".join(parts[:end])
                if _exists(candidate):
                    found.add(candidate)
    return found


def _exists(module: str) -> bool:
    base = ROOT.joinpath(*module.split("."))
    return (base / "__init__.py").is_file() or base.with_suffix(".py").is_file()


def dependencies(modules: tuple[str, ...] = MODULES) -> list[str]:
    """Every ``core`` module the compiled modules import, transitively, themselves included."""
    seen: set[str] = set()
    todo = list(modules)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo.extend(_core_imports(module) - seen)
    return sorted(seen)


def compiler() -> str | None:
    """The C compiler that setuptools would call (``$CC``, else the interpreter's), if it exists."""
    command = (os.environ.get("CC") or str(sysconfig.get_config_var("CC") or "")).split()
    return shutil.which(command[0] if command else "cc")


def build(out: Path, *, jobs: int) -> dict[str, object]:
    """Compile into a scratch directory beside ``out``, write the manifest, swap it in; return the manifest."""
    import mypy.version
    import setuptools  # noqa: F401  (mypyc chooses setuptools over distutils if imported)
    from mypyc.build import mypycify
    from setuptools import Distribution

    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".native-", dir=out.parent))
    try:
        sources = dependencies()
        hashes = {str(source_path(m).relative_to(ROOT)): digest(source_path(m)) for m in sources}
        paths = [str(source_path(m).relative_to(ROOT)) for m in MODULES]
        cwd = Path.cwd()
        os.chdir(ROOT)  # mypy finds the ``core`` package, and pyproject.toml's [tool.mypy], here
        try:
            extensions = mypycify(
                paths, opt_level="3", group_name=GROUP, target_dir=str(scratch / "c")
            )
            distribution = Distribution({"name": "essaim-native", "ext_modules": extensions})
            distribution.script_args = [
                "build_ext",
                "--build-lib",
                str(scratch / "lib"),
                "--build-temp",
                str(scratch / "obj"),
                "--parallel",
                str(jobs),
            ]
            distribution.parse_command_line()
            distribution.run_commands()
        finally:
            os.chdir(cwd)
        lib = scratch / "lib"
        suffix = extension_suffix()
        modules: dict[str, str] = {}
        for name in (*MODULES, SHARED_LIBRARY):
            file = Path(*name.split(".")).with_name(name.split(".")[-1] + suffix)
            if not (lib / file).is_file():
                raise RuntimeError(f"mypyc built no {file}")
            modules[name] = str(file)
        manifest: dict[str, object] = {
            "extension_suffix": suffix,
            "python": sys.version.split()[0],
            "mypy": mypy.version.__version__,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "modules": modules,
            "extensions": {file: digest(lib / file) for file in modules.values()},
            "sources": hashes,
        }
        (lib / MANIFEST).write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
        old = out.with_name(out.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if out.exists():
            out.rename(old)
        lib.rename(out)
        shutil.rmtree(old, ignore_errors=True)
        return manifest
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Build, or say why not; the exit status is 0 unless the build failed (or ``--require``)."""
    parser = argparse.ArgumentParser(
        prog="python -m core.native.build",
        description="Compile the gateway's hot path with mypyc (see core/native/loader.py).",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="build directory (default: build/native)"
    )
    parser.add_argument(
        "--require",
        action="store_true",
        help="fail when no C compiler is found, instead of skipping",
    )
    parser.add_argument(
        "--jobs", type=int, default=os.cpu_count() or 1, help="parallel C compilations"
    )
    args = parser.parse_args(argv)
    out = (args.out or build_dir()).resolve()
    if compiler() is None:
        print(
            "native: no C compiler found ($CC or the interpreter's); the gateway runs interpreted",
            file=sys.stderr,
        )
        return 1 if args.require else 0
    started = time.monotonic()
    manifest = build(out, jobs=max(1, args.jobs))
    sources = manifest["sources"]
    assert isinstance(sources, dict)
    print(
        f"native: compiled {len(MODULES)} modules into {out} in {time.monotonic() - started:.0f} s "
        f"(mypy {manifest['mypy']}; {len(sources)} source files checked at every start)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
