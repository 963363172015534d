"""core.native: the compiled build is loaded only when it matches this source exactly."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

import core.proxy.server
from core.native import loader as native
from core.native.build import dependencies

ROOT = Path(__file__).resolve().parents[3]


def test_the_build_in_force_is_the_one_the_run_asked_for() -> None:
    """make test runs the source (off); make test-native the compiled build (require)."""
    mode = os.environ.get(native.ENV_MODE, "auto")
    compiled = core.proxy.server.__file__.endswith(native.extension_suffix())
    if mode == "require":
        assert native.BUILD.name == "mypyc"
        assert compiled
        assert native.BUILD.reason.startswith("built by mypy")
    elif mode == "off":
        assert native.Build("interpreted", "ESSAIM_NATIVE=off") == native.BUILD
        assert core.proxy.server.__file__.endswith(".py")
    else:
        assert native.BUILD.name == ("mypyc" if compiled else "interpreted")


def test_the_manifest_covers_every_core_module_the_compiled_ones_import() -> None:
    deps = dependencies()
    assert set(native.MODULES) <= set(deps)
    # The package inits run on import; the models the compiled code reads and inlines
    # constants from (interpreted themselves) count too.
    for module in (
        "core",
        "core.native.loader",
        "core.proxy",
        "core.routes.model",
        "core.upstream.breaker",
    ):
        assert module in deps
    assert "core.service" not in deps  # not imported by the hot path


def fake_build(directory: Path, *, sources: dict[str, str] | None = None) -> dict[str, object]:
    """A manifest as make native writes it, over empty stand-ins for the extensions."""
    suffix = native.extension_suffix()
    modules = {}
    for name in (*native.MODULES, native.SHARED_LIBRARY):
        file = Path(*name.split(".")).with_name(name.split(".")[-1] + suffix)
        (directory / file).parent.mkdir(parents=True, exist_ok=True)
        (directory / file).write_bytes(b"")
        modules[name] = str(file)
    if sources is None:
        sources = {
            str(native.source_path(m).relative_to(ROOT)): native.digest(native.source_path(m))
            for m in dependencies()
        }
    manifest: dict[str, object] = {
        "extension_suffix": suffix,
        "mypy": "test",
        "modules": modules,
        "extensions": {file: native.digest(directory / file) for file in modules.values()},
        "sources": sources,
    }
    write(directory, manifest)
    return manifest


def write(directory: Path, manifest: dict[str, object]) -> None:
    (directory / native.MANIFEST).write_bytes(orjson.dumps(manifest))


def test_a_build_of_this_source_is_accepted_with_every_extension(tmp_path: Path) -> None:
    fake_build(tmp_path)
    files, reason = native.check(tmp_path)
    assert files is not None, reason
    assert set(files) == {*native.MODULES, native.SHARED_LIBRARY}
    assert files["core.proxy.server"] == tmp_path / "core" / "proxy" / (
        "server" + native.extension_suffix()
    )
    assert reason == "built by mypy test from this source"


def test_a_source_edited_since_the_build_turns_the_whole_build_away(tmp_path: Path) -> None:
    manifest = fake_build(tmp_path)
    sources = manifest["sources"]
    assert isinstance(sources, dict)
    sources["core/upstream/breaker.py"] = "0" * 64  # interpreted, but imported by compiled code
    write(tmp_path, manifest)
    assert native.check(tmp_path) == (
        None,
        "core/upstream/breaker.py changed since the build (make native rebuilds)",
    )


@pytest.mark.parametrize(
    ("spoil", "reason"),
    [
        (
            lambda d, m: (d / native.MANIFEST).unlink(),
            "no compiled build in {d} (make native builds one)",
        ),
        (
            lambda d, m: (d / native.MANIFEST).write_bytes(b"{not json"),
            "unreadable {d}/manifest.json",
        ),
        (
            lambda d, m: (d / native.MANIFEST).write_bytes(b"[]"),
            "unreadable {d}/manifest.json: not an object",
        ),
        (
            lambda d, m: write(d, {**m, "extension_suffix": ".cpython-39-x.so"}),
            "built for .cpython-39-x.so, this interpreter loads {suffix}",
        ),
        (
            lambda d, m: write(d, {**m, "modules": {"core.proxy.server": "x.so"}}),
            "built from another list of modules (make native rebuilds)",
        ),
        (
            lambda d, m: write(d, {**m, "sources": {"core/nosuch.py": "0" * 64}}),
            "core/nosuch.py is gone since the build (make native rebuilds)",
        ),
        (
            lambda d, m: (d / "core" / "proxy" / ("head" + native.extension_suffix())).unlink(),
            "{d}/core/proxy/head{suffix} is missing (make native rebuilds)",
        ),
        (
            lambda d, m: (d / "core" / "proxy" / ("wire" + native.extension_suffix())).write_bytes(
                b"x"
            ),
            "{d}/core/proxy/wire{suffix} is not the file built (make native rebuilds)",
        ),
        (
            lambda d, m: write(d, {k: v for k, v in m.items() if k != "extensions"}),
            "unreadable {d}/manifest.json: no extensions",
        ),
    ],
    ids=[
        "no-manifest",
        "bad-json",
        "not-object",
        "other-python",
        "other-modules",
        "gone",
        "missing-so",
        "other-so",
        "no-extensions",
    ],
)
def test_a_build_that_does_not_match_is_refused_with_the_reason(
    tmp_path: Path, spoil: object, reason: str
) -> None:
    manifest = fake_build(tmp_path)
    spoil(tmp_path, manifest)  # type: ignore[operator]
    files, said = native.check(tmp_path)
    assert files is None
    assert said.startswith(reason.format(d=tmp_path, suffix=native.extension_suffix()))


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("ESSAIM_NATIVE")}
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**full, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_require_fails_the_process_with_the_reason_and_auto_runs_the_source(tmp_path: Path) -> None:
    """A stale build: require stops the process, auto says why it runs interpreted."""
    manifest = fake_build(tmp_path)
    sources = manifest["sources"]
    assert isinstance(sources, dict)
    sources["core/proxy/wire.py"] = "0" * 64
    write(tmp_path, manifest)
    code = "import core.native.loader as n, core.proxy.server as s; print(n.BUILD.name, s.__file__)"
    refused = run_python(code, ESSAIM_NATIVE="require", ESSAIM_NATIVE_DIR=str(tmp_path))
    assert refused.returncode == 1
    assert (
        "NativeBuildError: ESSAIM_NATIVE=require, but core/proxy/wire.py changed since the build"
        in refused.stderr
    )
    auto = run_python(code, ESSAIM_NATIVE_DIR=str(tmp_path))
    assert auto.returncode == 0, auto.stderr
    assert auto.stdout.split() == ["interpreted", str(ROOT / "core" / "proxy" / "server.py")]


def test_an_unknown_mode_is_refused() -> None:
    done = run_python("import core", ESSAIM_NATIVE="fast")
    assert done.returncode == 1
    assert "ESSAIM_NATIVE='fast': expected auto, off or require" in done.stderr


def test_a_real_build_serves_compiled_modules_and_stops_at_an_edit(tmp_path: Path) -> None:
    """Against make native's build (run by make test-native): a copy loads; edit the copy's record, it does not."""
    built = native.build_dir()
    if native.BUILD.name != "mypyc":
        # make test runs the source: this test then checks that nothing compiled leaked in.
        assert core.proxy.server.__file__ == str(ROOT / "core" / "proxy" / "server.py")
        return
    copy = tmp_path / "native"
    shutil.copytree(built, copy)
    code = (
        "import core.native.loader as n, core.proxy.server as s, core.proxy.access as a;"
        "print(n.BUILD.name, s.__file__, a.__file__)"
    )
    loaded = run_python(code, ESSAIM_NATIVE="require", ESSAIM_NATIVE_DIR=str(copy))
    assert loaded.returncode == 0, loaded.stderr
    name, server, access = loaded.stdout.split()
    assert name == "mypyc"
    assert server == str(copy / "core" / "proxy" / ("server" + native.extension_suffix()))
    assert access == str(ROOT / "core" / "proxy" / "access.py")  # not compiled: from the source
    manifest = orjson.loads((copy / native.MANIFEST).read_bytes())
    manifest["sources"]["core/proxy/router.py"] = "0" * 64
    write(copy, manifest)
    stale = run_python(code, ESSAIM_NATIVE_DIR=str(copy))
    assert stale.returncode == 0, stale.stderr
    assert stale.stdout.split()[:2] == ["interpreted", str(ROOT / "core" / "proxy" / "server.py")]
