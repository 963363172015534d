"""``python -m services new NAME``: a skeleton that lints, and whose own tests pass as written."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from services.new import render

ROOT = Path(__file__).resolve().parents[2]
# What the generated service and its tests need of the repository besides core/.
SUPPORT = (
    "pyproject.toml",
    "services/__init__.py",
    "tests/__init__.py",
    "tests/conftest.py",
    "tests/services/__init__.py",
    "tests/services/conftest.py",
)


def _run(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("name", ["", "Notes", "2fa", "notes_x", "notes/x", "a" * 64])
def test_a_name_the_registry_would_refuse_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="lower-case letters, digits and '-'"):
        render(name)


def test_the_skeleton_is_written_once_lints_and_passes_its_own_tests(tmp_path: Path) -> None:
    for path in SUPPORT:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / path, tmp_path / path)

    made = _run("-m", "services", "new", "field-notes", "--root", str(tmp_path), cwd=ROOT)
    assert made.returncode == 0, made.stderr
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert set(written) - set(SUPPORT) == {
        "config/field-notes.toml",
        "services/field_notes/__init__.py",
        "services/field_notes/__main__.py",
        "services/field_notes/service.py",
        "tests/services/test_field_notes.py",
    }
    assert 'Spec("field-notes", 3, "services.field_notes"' in made.stdout
    assert "python -m services policies" in made.stdout

    again = _run("-m", "services", "new", "field-notes", "--root", str(tmp_path), cwd=ROOT)
    assert again.returncode == 1
    assert "already there, nothing written" in again.stderr

    generated = [str(tmp_path / p) for p in written if p.endswith(".py") and p not in SUPPORT]
    ruff = str(Path(sys.executable).parent / "ruff")
    config = ["--config", str(ROOT / "pyproject.toml")]
    for check in (["check", *config], ["format", "--check", *config]):
        linted = subprocess.run([ruff, *check, *generated], capture_output=True, text=True)
        assert linted.returncode == 0, linted.stdout + linted.stderr

    # The new packages shadow the repository's: only the skeleton's own files run.
    env = os.environ | {"PYTHONPATH": str(tmp_path)}
    tested = _run(
        "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/services/test_field_notes.py",
        cwd=tmp_path, env=env,
    )  # fmt: skip
    assert tested.returncode == 0, tested.stdout[-3000:] + tested.stderr[-3000:]
    assert "7 passed" in tested.stdout
