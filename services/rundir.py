"""The run directory: what one run of the launcher leaves for the commands that follow it.

The launcher (:mod:`services.launcher`) owns it while it runs; commands such
as ``python -m services token`` (:mod:`services.token`) read it. It holds:

- secrets, one per file (``NAME.token``, ``USER.password``,
  ``redis.password``), each created with mode 0600 so that no other user can
  read it at any moment (:meth:`RunDir.write_secret`);
- ``system.json``: where each component of the running system answers,
  written once the system is up and removed when it stops
  (:meth:`RunDir.write_system`, :meth:`RunDir.system`);
- the databases (``data/``), the logs (``logs/``), Redis's data (``redis/``)
  and one ``NAME.pid`` per process.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

__all__ = ["SYSTEM_FILE", "RunDir", "mask_password"]

#: Written when the system is up: ``{"launcher_pid": N, "urls": {component: url}, "users": [...]}``.
SYSTEM_FILE = "system.json"


def mask_password(url: str) -> str:
    """``url`` with the password of its user part replaced by ``***`` (for printing)."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, hostpart = rest.rpartition("@")
    if not sep or not at:
        return url
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{hostpart}"


class RunDir:
    """The run directory at ``path`` (which may not exist yet)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write_secret(self, name: str, value: str) -> Path:
        """``value`` in a new file ``name``, created readable and writable by its owner only.

        The file is created with mode 0600 in one call (``O_CREAT | O_EXCL``:
        the umask can only remove bits), so there is no moment when another
        user could open it. An existing file is replaced the same way.
        """
        path = self.path / name
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(value + "\n")
        return path

    def read_secret(self, name: str) -> str:
        """The secret in ``name``; ``OSError`` when it can't be read."""
        return (self.path / name).read_text(encoding="utf-8").strip()

    def write_system(self, launcher_pid: int, urls: dict[str, str], users: list[str]) -> None:
        """Record where the running system answers and its demo users (replaced atomically)."""
        body = json.dumps({"launcher_pid": launcher_pid, "urls": urls, "users": users}, indent=1)
        temporary = self.path / (SYSTEM_FILE + ".new")
        temporary.write_text(body + "\n", encoding="utf-8")
        temporary.replace(self.path / SYSTEM_FILE)

    def remove_system(self) -> None:
        with contextlib.suppress(OSError):
            (self.path / SYSTEM_FILE).unlink()

    def system(self) -> dict[str, Any] | None:
        """What :meth:`write_system` recorded, or None when no system is up from here.

        A file left by a launcher that died (its pid no longer runs) counts
        as no system.
        """
        try:
            recorded = json.loads((self.path / SYSTEM_FILE).read_text(encoding="utf-8"))
            pid = int(recorded["launcher_pid"])
            urls = recorded["urls"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass  # runs, as another user
        return recorded if isinstance(urls, dict) else None
