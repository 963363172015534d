"""Files that hold secrets: created owner-only, with no moment when others could read them.

Every component runs with the umask :data:`PRIVATE_UMASK` (set by
:func:`core.runner.configure` and by the launcher), so whatever it creates
(databases and their ``-wal``/``-shm`` files, config copies, logs, Redis's
data) is owner-only from its first byte. The helpers here make the same
guarantee explicit for code that may run under another umask (tests, an
embedding application), and tighten what an older run left readable.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

__all__ = ["PRIVATE_UMASK", "private_dir", "private_file"]

#: Files 0600 and directories 0700: nobody but the owner reads or lists them.
PRIVATE_UMASK = 0o077


def _tighten(path: Path, mode: int) -> None:
    """Take away group and other bits from ``path`` when we own it."""
    with contextlib.suppress(OSError):
        info = path.stat()
        if info.st_uid == os.geteuid() and stat.S_IMODE(info.st_mode) & 0o077:
            path.chmod(stat.S_IMODE(info.st_mode) & mode)


def private_dir(path: Path) -> Path:
    """``path`` as a directory only its owner can enter (0700), with any missing parents.

    Missing directories are created 0700 (the umask can only remove bits);
    an existing ``path`` of ours is tightened to 0700.
    """
    missing = []
    current = path
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            directory.mkdir(mode=0o700)
    _tighten(path, 0o700)
    return path


def private_file(path: Path) -> Path:
    """``path`` as a file only its owner can read (0600), created empty when missing.

    Created with ``os.open(..., 0o600)``, so it is never readable by others;
    an existing file of ours is tightened to 0600.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.close(fd)
    _tighten(path, 0o600)
    return path
