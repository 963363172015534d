"""The config directory: reading its TOML files and importing them into the store.

The directory holds one document per ``{name}.toml`` file directly inside it
(``application.toml``, ``billing.toml``, ``billing-prod.toml``); other files
and subdirectories are ignored. An import is all or nothing: when any file is
broken (bad TOML, a bad name, over the size limit, a rule of
:mod:`core.config.document` broken, a ``{cipher}`` value that doesn't decrypt
with the service's key) it reports every broken file with its line and
reason and writes nothing.

An import writes a document only when its *file* changed since the last
import (the store keeps each file's hash), so an edit made over the HTTP API
survives restarts and reloads until someone edits that file. A file that
disappeared deletes its document, unless the document was edited over the
API since it was imported.

When Redis lost the config (restarted empty), the :class:`Importer` first
restores it from the store's journal on disk (:meth:`ConfigStore.restore`),
then imports: the API's versions come back, and only files changed since
their last import become new versions.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import sqlite3
import time
from pathlib import Path
from typing import Any

from core import log
from core.config.crypto import Cipher, check_ciphers
from core.config.document import MAX_BYTES, NAME_RE, parse
from core.config.store import ConfigStore, Write
from core.errors import HTTPProblem
from core.redis import REDIS_ERRORS, Backoff

__all__ = [
    "DirectoryContents",
    "FileError",
    "ImportReport",
    "Importer",
    "import_directory",
    "read_directory",
]

logger = log.get("configsvc")


@dataclasses.dataclass(frozen=True, slots=True)
class FileError:
    """Why one file of the directory can't be imported."""

    file: str
    reason: str
    line: int | None = None
    column: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "column": self.column, "reason": self.reason}

    def __str__(self) -> str:
        where = f":{self.line}" if self.line is not None else ""
        where += f":{self.column}" if self.column is not None and self.line is not None else ""
        return f"{self.file}{where}: {self.reason}"


@dataclasses.dataclass(frozen=True, slots=True)
class FileDocument:
    """A document read from ``file``; ``file_hash`` is the SHA-256 of the file's bytes."""

    name: str
    file: str
    file_hash: str
    content: dict[str, Any]


@dataclasses.dataclass(frozen=True, slots=True)
class DirectoryContents:
    documents: dict[str, FileDocument]
    errors: list[FileError]


@dataclasses.dataclass(slots=True)
class ImportReport:
    """What an import did. With ``errors`` nothing was written."""

    directory: str
    written: list[str] = dataclasses.field(default_factory=list)
    unchanged: list[str] = dataclasses.field(default_factory=list)
    deleted: list[str] = dataclasses.field(default_factory=list)
    errors: list[FileError] = dataclasses.field(default_factory=list)
    rev: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "directory": self.directory,
            "written": self.written,
            "unchanged": self.unchanged,
            "deleted": self.deleted,
            "errors": [e.to_dict() for e in self.errors],
            "rev": self.rev,
        }


def read_directory(path: Path, *, cipher: Cipher | None = None) -> DirectoryContents:
    """Read and check every ``*.toml`` file directly in ``path`` (blocking file I/O).

    A file's ``{cipher}`` values must decrypt with ``cipher`` (any is an
    error without one): see :func:`core.config.crypto.check_ciphers`.
    """
    if not path.is_dir():
        return DirectoryContents({}, [FileError(str(path), "not a directory (or missing)")])
    documents: dict[str, FileDocument] = {}
    errors: list[FileError] = []
    for file in sorted(path.glob("*.toml")):
        if not file.is_file():
            continue
        name = file.stem
        if not NAME_RE.match(name):
            errors.append(
                FileError(file.name, "file name must be a document name: ^[a-z0-9][a-z0-9-]{0,62}$")
            )
            continue
        try:
            with file.open("rb") as f:
                raw = f.read(MAX_BYTES + 1)
        except OSError as exc:
            errors.append(FileError(file.name, f"cannot read: {exc.strerror}"))
            continue
        try:
            content = parse(raw, "toml", source=file.name)
            check_ciphers(content, cipher, source=file.name)
        except HTTPProblem as exc:
            errors.append(_file_error(file.name, exc))
            continue
        documents[name] = FileDocument(name, file.name, hashlib.sha256(raw).hexdigest(), content)
    return DirectoryContents(documents, errors)


def _file_error(file: str, exc: HTTPProblem) -> FileError:
    detail = exc.extra.get("errors", [{}])[0]
    line, column = detail.get("line"), detail.get("column")
    reason = str(detail.get("reason") or exc.detail)
    if exc.status == 413:
        reason = f"over the size limit of {MAX_BYTES} bytes"
    elif detail.get("field"):
        reason = exc.detail.removeprefix(f"{file}: ")
    return FileError(file, reason, line, column)


async def import_directory(
    store: ConfigStore, path: Path, *, cipher: Cipher | None = None
) -> ImportReport:
    """Import ``path`` into ``store`` atomically (see the module docstring and :func:`read_directory`)."""
    contents = await asyncio.to_thread(read_directory, path, cipher=cipher)
    report = ImportReport(str(path))
    if contents.errors:
        report.errors.extend(contents.errors)
        # Still mark this Redis as imported, so a broken directory is not
        # retried (and logged) on every check: an operator fixes and reloads.
        await store.write_many([], mark_imported=True)
        return report
    known = await store.files()
    writes: list[Write] = []
    for name, doc in sorted(contents.documents.items()):
        if known.get(name) == doc.file_hash:
            report.unchanged.append(name)
        else:
            writes.append(Write(name, doc.content, origin="file", file=doc.file_hash))
    gone = sorted(set(known) - set(contents.documents))
    origins = await store.origins(gone) if gone else {}
    for name in gone:
        if origins[name] == "file":
            writes.append(Write(name, None, origin="file", file="-"))
        else:
            # Edited over the API since (or already deleted): the API owns it now.
            writes.append(Write(name, None, origin="file", file="-", only_file=True))
    results = await store.write_many(writes, mark_imported=True)
    for w, result in zip(writes, results, strict=True):
        if w.only_file:
            continue
        if w.content is None:
            report.deleted.append(w.name)
        elif result.changed:
            report.written.append(w.name)
        else:
            report.unchanged.append(w.name)
    report.unchanged.sort()
    revs = [r.rev for r in results if r.rev]
    report.rev = max(revs) if revs else await store.rev()
    return report


class Importer:
    """Imports the config directory: at start, on reload, and when Redis lost it.

    Imports never run concurrently. ``last`` is the last import's report
    (None before the first one ran); its errors show in ``/health``. Every
    ``sync_interval`` seconds the checks also bring the store's journal up to
    what Redis holds (:meth:`ConfigStore.sync_journal`).
    """

    def __init__(
        self,
        store: ConfigStore,
        directory: Path,
        check_interval: float,
        *,
        cipher: Cipher | None = None,
        sync_interval: float = 5.0,
    ) -> None:
        self.store = store
        self.cipher = cipher
        self.directory = directory
        self.check_interval = check_interval
        self.last: ImportReport | None = None
        self.last_time: float | None = None
        self.imports = 0
        self.restores = 0
        self.sync_interval = sync_interval
        self._synced = 0.0
        self._lock = asyncio.Lock()

    async def run(self, reason: str) -> ImportReport:
        """Import the directory now (restoring an emptied Redis from the journal first).

        Raises the Redis errors when Redis is away.
        """
        async with self._lock:
            if not await self.store.imported():
                await self._restore()
            else:
                await self._sync()
            return await self._run(reason)

    async def ensure(self) -> None:
        """Restore and import now if Redis holds no import (it was emptied since the last check).

        Otherwise, every ``sync_interval``, record in the journal what Redis
        holds and it lacks.
        """
        async with self._lock:
            if not await self.store.imported():
                logger.warning("Redis no longer holds the config (emptied?): restoring it")
                await self._restore()
                await self._run("Redis emptied")
            elif time.monotonic() - self._synced >= self.sync_interval:
                await self._sync()

    async def _sync(self) -> None:
        self._synced = time.monotonic()
        recorded = await self.store.sync_journal()
        if recorded:
            logger.info("journal: recorded %d version(s) found in Redis", recorded)

    async def _restore(self) -> None:
        restored = await self.store.restore()
        self.restores += 1
        if restored:
            logger.warning(
                "restored %d document(s) from %s before importing the directory",
                len(restored), self.store.journal.path if self.store.journal else "-",
            )  # fmt: skip

    async def _run(self, reason: str) -> ImportReport:
        report = await import_directory(self.store, self.directory, cipher=self.cipher)
        self.last, self.last_time = report, time.time()
        self.imports += 1
        if report.errors:
            for error in report.errors:
                logger.error("config directory %s: %s", self.directory, error)
            logger.error(
                "%s: import of %s refused (%d broken file(s)); nothing changed",
                reason, self.directory, len(report.errors),
            )  # fmt: skip
        else:
            logger.info(
                "%s: imported %s: %d written, %d unchanged, %d deleted (rev %d)",
                reason, self.directory, len(report.written), len(report.unchanged),
                len(report.deleted), report.rev,
            )  # fmt: skip
        return report

    async def keep_imported(self, *, done_once: bool) -> None:
        """Import (unless ``done_once``), then again whenever Redis no longer holds the import.

        Redis being away is not an error: it waits and tries again.
        """
        backoff = Backoff(base=0.1, cap=self.check_interval)
        while True:
            try:
                if not done_once:
                    await self.run("start")
                    done_once = True
                else:
                    await self.ensure()
                backoff.reset()
                await asyncio.sleep(self.check_interval)
            except REDIS_ERRORS as exc:
                if backoff.attempt == 0:
                    logger.warning("import: Redis unavailable (%s); retrying", exc)
                await backoff.sleep()
            except sqlite3.Error as exc:
                # The journal on disk failed (disk full?): readiness says so; try again.
                logger.error("import: the journal failed: %s", exc)
                await asyncio.sleep(self.check_interval)

    def describe(self) -> dict[str, Any]:
        last = self.last
        return {
            "directory": str(self.directory),
            "imports": self.imports,
            "restores": self.restores,
            "last_import": self.last_time,
            "errors": [e.to_dict() for e in last.errors] if last else [],
        }
