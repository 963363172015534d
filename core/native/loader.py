"""Which build of the gateway's hot path runs: mypyc's C extensions, or the Python source.

The modules in :data:`MODULES` are plain, typed Python, and that is what runs
unless a compiled build of exactly this source is present. ``make native``
(:mod:`core.native.build`) compiles them with mypyc into ``build/native/``,
never beside the sources, and writes a manifest there: the SHA-256 of every
compiled module's source and of every ``core`` module they import
(transitively; mypyc reads their types and inlines their constants) and of
each extension file it wrote, the extension suffix of the interpreter it
was built for, and mypy's version.

:func:`install`, called once when :mod:`core` is imported, reads that
manifest. If every file still hashes to what was compiled, it puts a finder
first on :data:`sys.meta_path` that serves the compiled modules (and mypyc's
shared library) from ``build/native/``; all other imports pass through it
untouched. If anything differs (a source edited since the build, another
interpreter, a file missing or replaced), nothing compiled is loaded at all: compiled
modules call each other directly in C, so a half-compiled set could run
stale code. The process runs interpreted and :data:`BUILD` says why.

``ESSAIM_NATIVE`` chooses: unset or ``auto`` (compiled when it matches),
``off`` (always interpreted), ``require`` (compiled, or :func:`install`
raises :class:`NativeBuildError` with the reason: for test runs that must
exercise the compiled build). ``ESSAIM_NATIVE_DIR`` moves the build
directory (default: ``build/native`` beside the ``core`` package).

This module imports nothing from ``core``: it runs before any of it.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType
from typing import Final, Literal

import orjson

# The request path: parsing, routing, choosing an endpoint, the exchange with
# the upstream, the response relay, the counters. The route policy models
# (core.routes.model, core.upstream.retry/breaker/outlier) stay interpreted:
# the route parser reads their dataclass annotations at run time.
MODULES: Final[tuple[str, ...]] = (
    "core.proxy.exchange",
    "core.proxy.head",
    "core.proxy.pool",
    "core.proxy.response",
    "core.proxy.router",
    "core.proxy.server",
    "core.proxy.stats",
    "core.proxy.wire",
    "core.routes.table",
    "core.routes.trie",
    "core.upstream.balancer",
    "core.upstream.upstream",
)
# mypyc's shared library holding every compiled module's code; the
# per-module extensions are thin shims that import it by this name.
GROUP: Final = "essaim_native"
SHARED_LIBRARY: Final = f"{GROUP}__mypyc"
MANIFEST: Final = "manifest.json"
ROOT: Final = Path(__file__).resolve().parents[2]
ENV_MODE: Final = "ESSAIM_NATIVE"
ENV_DIR: Final = "ESSAIM_NATIVE_DIR"


class NativeBuildError(RuntimeError):
    """``ESSAIM_NATIVE=require`` and no compiled build matching the source could be loaded."""


@dataclass(frozen=True, slots=True)
class Build:
    """What runs: ``name`` is ``mypyc`` or ``interpreted``; ``reason`` says why (for logs, /health)."""

    name: Literal["mypyc", "interpreted"]
    reason: str
    directory: Path | None = None

    def __str__(self) -> str:
        """For log lines: ``mypyc (built by mypy 2.4.1 from this source)``."""
        return f"{self.name} ({self.reason})"

    def as_dict(self) -> dict[str, str]:
        """The JSON face: ``{"build": ..., "reason": ...}``."""
        return {"build": self.name, "reason": self.reason}


BUILD: Build = Build("interpreted", "core.native.loader.install() has not run")
_installed = False


def build_dir() -> Path:
    """Where ``make native`` writes and :func:`install` reads the compiled build."""
    configured = os.environ.get(ENV_DIR)
    return Path(configured) if configured else ROOT / "build" / "native"


def extension_suffix() -> str:
    """The file suffix this interpreter loads C extensions by (``.cpython-311-x86_64-linux-gnu.so``)."""
    return importlib.machinery.EXTENSION_SUFFIXES[0]


def source_path(module: str) -> Path:
    """The ``.py`` file of a ``core`` module (a package's ``__init__.py``)."""
    base = ROOT.joinpath(*module.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def digest(path: Path) -> str:
    """The SHA-256 of a file's bytes, in hex."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


class _Finder:
    """A meta path finder serving exactly the compiled modules from the build directory."""

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = files

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        file = self.files.get(fullname)
        if file is None:
            return None
        loader = importlib.machinery.ExtensionFileLoader(fullname, str(file))
        return importlib.util.spec_from_file_location(fullname, file, loader=loader)


def check(directory: Path) -> tuple[dict[str, Path] | None, str]:
    """The compiled modules' files if the build in ``directory`` matches this source and interpreter.

    Returns ``(files, reason)``: ``files`` maps module names (and the shared
    library's) to their extension files, or is ``None`` with ``reason``
    saying what did not match.
    """
    manifest_path = directory / MANIFEST
    try:
        manifest = orjson.loads(manifest_path.read_bytes())
    except FileNotFoundError:
        return None, f"no compiled build in {directory} (make native builds one)"
    except (OSError, orjson.JSONDecodeError) as exc:
        return None, f"unreadable {manifest_path}: {exc}"
    if not isinstance(manifest, dict):
        return None, f"unreadable {manifest_path}: not an object"
    if manifest.get("extension_suffix") != extension_suffix():
        return None, (
            f"built for {manifest.get('extension_suffix')}, this interpreter loads {extension_suffix()}"
        )
    modules = manifest.get("modules")
    if not isinstance(modules, dict) or sorted(modules) != sorted((*MODULES, SHARED_LIBRARY)):
        return None, "built from another list of modules (make native rebuilds)"
    sources = manifest.get("sources")
    if not isinstance(sources, dict) or not sources:
        return None, f"unreadable {manifest_path}: no sources"
    for relative, expected in sources.items():
        try:
            actual = digest(ROOT / relative)
        except OSError:
            return None, f"{relative} is gone since the build (make native rebuilds)"
        if actual != expected:
            return None, f"{relative} changed since the build (make native rebuilds)"
    extensions = manifest.get("extensions")
    if not isinstance(extensions, dict):
        return None, f"unreadable {manifest_path}: no extensions"
    files: dict[str, Path] = {}
    for module, relative in modules.items():
        file = directory / str(relative)
        try:
            actual = digest(file)
        except OSError:
            return None, f"{file} is missing (make native rebuilds)"
        if actual != extensions.get(str(relative)):
            return None, f"{file} is not the file built (make native rebuilds)"
        files[module] = file
    return files, f"built by mypy {manifest.get('mypy', '?')} from this source"


def install() -> Build:
    """Load the compiled build if it matches (see the module's docstring); set and return :data:`BUILD`.

    Must run before any module in :data:`MODULES` is imported; a second call
    returns the first answer. Raises :class:`NativeBuildError` under
    ``ESSAIM_NATIVE=require`` when the build cannot be used.
    """
    global BUILD, _installed
    if _installed:
        return BUILD
    mode = os.environ.get(ENV_MODE, "auto").strip().lower() or "auto"
    if mode not in ("auto", "off", "require"):
        raise NativeBuildError(f"{ENV_MODE}={mode!r}: expected auto, off or require")
    _installed = True
    if mode == "off":
        BUILD = Build("interpreted", f"{ENV_MODE}=off")
        return BUILD
    early = [module for module in MODULES if module in sys.modules]
    directory = build_dir()
    if early:
        files, reason = None, f"{early[0]} was imported before core.native.loader.install()"
    else:
        files, reason = check(directory)
    if files is None:
        if mode == "require":
            raise NativeBuildError(f"{ENV_MODE}=require, but {reason}")
        BUILD = Build("interpreted", reason)
        return BUILD
    sys.meta_path.insert(0, _Finder(files))
    BUILD = Build("mypyc", reason, directory)
    return BUILD
