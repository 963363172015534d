"""The config service's state in Redis: documents, their versions, the change channel.

Only :class:`ConfigStore` knows the key layout. Every write is one Lua script
that changes the document, appends its version to the history, bumps the
revision and publishes the change, atomically; a batch (a directory import)
is one script too, so readers never see half of it. Keys (``<n>`` a
document name); every key carries the hash tag ``{cfg}``, so on Redis Cluster
they share one slot and a batch may touch any of them::

    essaim:{cfg}:rev        counter, the revision of the last change (any document)
    essaim:{cfg}:names      set of the names of the current (not deleted) documents
    essaim:{cfg}:d:<n>      hash: version, hash, time (epoch ms), origin, content (JSON)
    essaim:{cfg}:h:<n>      list, newest first, of the last 50 versions (JSON, with content);
                            a DELETE is a version too (``deleted: true``)
    essaim:{cfg}:seq        hash name -> last version number given (outlives DELETE,
                            so that numbers only grow)
    essaim:{cfg}:files      hash name -> SHA-256 of the file last imported for it
    essaim:{cfg}:imported   set when the config directory was imported into this Redis
    essaim:{cfg}:changes    pub/sub channel (sharded on Cluster): {"rev": R, "document": N, "version": V}

The scripts receive every key they touch in ``KEYS``; the names are built here.

Writing content whose hash equals the current version's is not a change: no
version, no revision, no message.

With a :class:`~core.config.journal.Journal`, every version written is also
recorded on disk before :meth:`ConfigStore.write_many` returns, and
:meth:`ConfigStore.restore` puts the journal's documents back into an emptied
Redis; :meth:`ConfigStore.sync_journal` records versions the journal lacks
(written by another process, or before a crash).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import re
from collections import OrderedDict
from collections.abc import Awaitable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

import orjson

from core.config.document import canonical, content_hash
from core.config.journal import Journal, JournalEntry, entries_from_history
from core.config.merge import deep_merge
from core.redis import Redis, ReplicaWait, Script, publish_command, tag

__all__ = [
    "CHANNEL",
    "HISTORY_KEPT",
    "ConfigStore",
    "Merged",
    "NotImported",
    "Version",
    "Write",
    "WriteResult",
    "merged_version",
    "sources_of",
]

T = TypeVar("T")


PREFIX = "essaim:" + tag("cfg") + ":"
REV_KEY = PREFIX + "rev"
NAMES_KEY = PREFIX + "names"
SEQ_KEY = PREFIX + "seq"
FILES_KEY = PREFIX + "files"
IMPORTED_KEY = PREFIX + "imported"
CHANNEL = PREFIX + "changes"
HISTORY_KEPT = 50

_ORIGIN_RE = re.compile(r"^[a-z0-9:.-]{1,64}$")


def doc_key(name: str) -> str:
    return f"{PREFIX}d:{name}"


def history_key(name: str) -> str:
    return f"{PREFIX}h:{name}"


def iso(ms: int) -> str:
    """Epoch milliseconds as ISO 8601 UTC with milliseconds."""
    return (
        datetime.fromtimestamp(ms / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


# KEYS: imported, files, seq, names, rev, channel, then per document its
# doc key and its history key (KEYS[7 + 2j], KEYS[8 + 2j] for document j).
# ARGV: keep, mode, publish command (PUBLISH or SPUBLISH), then per document 7 values:
#   name, op ('put'|'del'|'file'), hash, origin, content JSON,
#   file ('' leave the file record, '-' forget it, else the file's hash),
#   expect ('' no condition, '*' it must exist, '!' it must not, else
#   'VERSION:HASH16' it must be at that version with that hash prefix)
# Returns {now, {status, version, rev, ...}}: status 2 created, 1 written, 0 unchanged,
# -1 unknown (del), -2 the condition failed (nothing written; version is the current one).
# Op 'file' changes the file record only. Mode '1': an import (marks Redis imported);
# '2': refuse ({now, {}, 0}) unless Redis is marked imported; '0': no condition.
# Names, hashes and origins are checked by the caller, so they are safe inside JSON text.
_WRITE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local keep = tonumber(ARGV[1])
if ARGV[2] == '1' then
  redis.call('SET', KEYS[1], now, 'NX')
elseif ARGV[2] == '2' and redis.call('EXISTS', KEYS[1]) == 0 then
  return {now, {}, 0}
end
local out = {}
for i = 4, #ARGV, 7 do
  local name, op, hash, origin, content, file = ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3], ARGV[i+4], ARGV[i+5]
  local expect = ARGV[i+6]
  local j = (i - 4) / 7
  local dkey, hkey = KEYS[7 + 2 * j], KEYS[8 + 2 * j]
  local cur = redis.call('HMGET', dkey, 'version', 'hash')
  local failed = false
  if expect == '*' then
    failed = not cur[1]
  elseif expect == '!' then
    failed = cur[1] and true or false
  elseif expect ~= '' then
    failed = not cur[1] or (cur[1] .. ':' .. string.sub(cur[2], 1, 16)) ~= expect
  end
  if failed then
    out[#out + 1] = -2
    out[#out + 1] = tonumber(cur[1] or '0')
    out[#out + 1] = 0
  else
    if file == '-' then
      redis.call('HDEL', KEYS[2], name)
    elseif file ~= '' then
      redis.call('HSET', KEYS[2], name, file)
    end
    if op == 'file' then
      out[#out + 1] = 0
      out[#out + 1] = tonumber(cur[1] or '0')
      out[#out + 1] = 0
    elseif op == 'put' and cur[2] == hash then
      out[#out + 1] = 0
      out[#out + 1] = tonumber(cur[1])
      out[#out + 1] = 0
    elseif op == 'del' and not cur[1] then
      out[#out + 1] = -1
      out[#out + 1] = 0
      out[#out + 1] = 0
    else
      local version = redis.call('HINCRBY', KEYS[3], name, 1)
      local entry
      local created = false
      if op == 'put' then
        redis.call('HSET', dkey, 'version', version, 'hash', hash, 'time', now,
                   'origin', origin, 'content', content)
        redis.call('SADD', KEYS[4], name)
        entry = '{"version":' .. version .. ',"hash":"' .. hash .. '","time":' .. now ..
                ',"origin":"' .. origin .. '","deleted":false,"content":' .. content .. '}'
        if not cur[1] then created = true end
      else
        redis.call('DEL', dkey)
        redis.call('SREM', KEYS[4], name)
        entry = '{"version":' .. version .. ',"hash":null,"time":' .. now ..
                ',"origin":"' .. origin .. '","deleted":true,"content":null}'
      end
      redis.call('LPUSH', hkey, entry)
      redis.call('LTRIM', hkey, 0, keep - 1)
      local rev = redis.call('INCR', KEYS[5])
      redis.call(ARGV[3], KEYS[6],
                 '{"rev":' .. rev .. ',"document":"' .. name .. '","version":' .. version .. '}')
      out[#out + 1] = created and 2 or 1
      out[#out + 1] = version
      out[#out + 1] = rev
    end
  end
end
return {now, out, 1}
"""


# KEYS: seq, files, names, rev, channel, the document's doc key and history key.
# ARGV: publish command, name, seq, file ('' none), then the current version's version
# ('' when the document is deleted), hash, time, origin, content, then its history
# entries (JSON), newest first. Replaces what Redis holds of the document and publishes
# the change, unless Redis already holds that version or a later one (returns 0 then).
_RESTORE = """
local name, seq, file = ARGV[2], ARGV[3], ARGV[4]
-- Another process restored it (or wrote it) already, from a journal at least as recent.
if tonumber(redis.call('HGET', KEYS[1], name) or '0') >= tonumber(seq) then
  return 0
end
local dkey, hkey = KEYS[6], KEYS[7]
redis.call('DEL', dkey, hkey)
redis.call('HSET', KEYS[1], name, seq)
if file ~= '' then
  redis.call('HSET', KEYS[2], name, file)
else
  redis.call('HDEL', KEYS[2], name)
end
if ARGV[5] ~= '' then
  redis.call('HSET', dkey, 'version', ARGV[5], 'hash', ARGV[6], 'time', ARGV[7],
             'origin', ARGV[8], 'content', ARGV[9])
  redis.call('SADD', KEYS[3], name)
else
  redis.call('SREM', KEYS[3], name)
end
for i = 10, #ARGV do
  redis.call('RPUSH', hkey, ARGV[i])
end
local rev = redis.call('INCR', KEYS[4])
redis.call(ARGV[1], KEYS[5],
           '{"rev":' .. rev .. ',"document":"' .. name .. '","version":' .. seq .. '}')
return rev
"""


# KEYS: imported, rev, then the doc key of each document. Returns {imported, rev,
# {version, hash, time, origin, content}...} (fields false/None for an absent
# document): one command instead of a MULTI pipeline.
_READ = """
local out = {redis.call('EXISTS', KEYS[1]), redis.call('GET', KEYS[2])}
for i = 3, #KEYS do
  out[#out + 1] = redis.call('HMGET', KEYS[i],
                             'version', 'hash', 'time', 'origin', 'content')
end
return out
"""


@dataclasses.dataclass(frozen=True, slots=True)
class Version:
    """One version of a document. A deletion is a version with ``deleted`` and no content."""

    name: str
    version: int
    hash: str | None
    time: int
    origin: str
    deleted: bool = False
    content: Mapping[str, Any] | None = None

    def meta(self) -> dict[str, Any]:
        """The version without its content, as served by the history and config endpoints."""
        doc: dict[str, Any] = {
            "version": self.version,
            "hash": self.hash,
            "time": iso(self.time),
            "origin": self.origin,
        }
        if self.deleted:
            doc["deleted"] = True
        return doc


@dataclasses.dataclass(frozen=True, slots=True)
class Write:
    """One document change for :meth:`ConfigStore.write_many`; ``content=None`` deletes it.

    ``file`` records the hash of the file it was imported from (``"-"`` to
    forget the file, ``""`` to leave the record alone); with ``only_file``
    the document itself is left alone. ``expect`` makes the write
    conditional, checked atomically with it: ``"*"`` the document exists,
    ``"!"`` it does not, ``"VERSION:HASH16"`` it is at that version (and its
    hash starts so); else nothing is written and the result says
    ``precondition_failed``.
    """

    name: str
    content: Mapping[str, Any] | None
    origin: str = "api"
    file: str = ""
    only_file: bool = False
    expect: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class WriteResult:
    """What a write did: ``changed`` False when the content was already current.

    ``created`` when the document did not exist (or was deleted) before;
    ``rev`` is 0 when nothing changed; ``found`` is False for the deletion of
    a document that does not exist; ``precondition_failed`` when the write's
    ``expect`` did not hold (nothing written; ``version`` is the current one,
    0 for none).
    """

    name: str
    changed: bool
    version: int
    rev: int
    time: int
    found: bool = True
    created: bool = False
    precondition_failed: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Merged:
    """The merged config of one app and profile, read atomically at revision ``rev``.

    ``layers`` are the sources' contents, lowest precedence first (shared with
    the store's cache: never mutate them); ``config`` merges them.
    ``imported`` is False when Redis holds no import of the config directory.
    """

    app: str
    profile: str
    rev: int
    version: str
    sources: tuple[Version, ...]
    layers: tuple[Mapping[str, Any], ...] = ()
    imported: bool = True

    @property
    def config(self) -> dict[str, Any]:
        return deep_merge(*self.layers)

    def to_dict(self) -> dict[str, Any]:
        return {
            "app": self.app,
            "profile": self.profile,
            "version": self.version,
            "sources": [{"name": s.name, **s.meta()} for s in self.sources],
            "config": self.config,
        }


def sources_of(app: str, profile: str) -> list[str]:
    """The document names merged for ``app`` and ``profile``, lowest precedence first."""
    names: list[str] = []
    for name in ("application", app, f"{app}-{profile}"):
        if name not in names:
            names.append(name)
    return names


def merged_version(sources: Sequence[Version]) -> str:
    """The identity of a merged result: changes whenever any source's version or content does.

    16 hex digits of SHA-256 over each source's name, version and hash, so a
    version number reused after Redis was emptied still gives a new identity
    when the content differs.
    """
    text = "|".join(f"{s.name}:{s.version}:{s.hash}" for s in sources)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class NotImported(Exception):
    """A conditional write found Redis without the config directory's import."""


class ConfigStore:
    """Every read and write of the config service's Redis state.

    Methods raise the Redis client's errors when Redis is unreachable; the
    HTTP service answers 503 then. Parsed document contents are cached by
    hash (content never changes for a given hash), so serving a merged config
    parses each version once.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        keep: int = HISTORY_KEPT,
        cache_size: int = 512,
        concurrency: int = 32,
        replica_wait: float = 1.0,
        journal: Journal | None = None,
    ) -> None:
        self.redis = redis
        self.keep = keep
        self.journal = journal
        self._limit = asyncio.Semaphore(concurrency)
        self.publish = publish_command(redis)
        #: Behind Sentinel a write waits for one replica.
        self.replica_wait = ReplicaWait(redis, timeout=replica_wait)
        self._write = Script(redis, _WRITE)
        self._read = Script(redis, _READ)
        self._restore = Script(redis, _RESTORE)
        self._parsed: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._rendered: OrderedDict[str, bytes] = OrderedDict()
        self._cache_size = cache_size

    async def _call(self, command: Awaitable[T]) -> T:
        """Await one Redis command or pipeline, at most ``concurrency`` at a time.

        A burst of requests (every client refetching after a change) then
        queues here instead of exhausting the client's connection pool, which
        fails with "Too many connections" past its limit.
        """
        async with self._limit:
            return await command

    # -- writing -----------------------------------------------------------------

    async def write(
        self,
        name: str,
        content: Mapping[str, Any],
        origin: str = "api",
        *,
        if_imported: bool = False,
        expect: str = "",
    ) -> WriteResult:
        """Make ``content`` the current version of ``name`` (no new version when identical).

        ``expect``: a condition checked atomically with the write (see :class:`Write`).
        """
        writes = [Write(name, content, origin, expect=expect)]
        return (await self.write_many(writes, if_imported=if_imported))[0]

    async def delete(
        self, name: str, origin: str = "api", *, if_imported: bool = False, expect: str = ""
    ) -> WriteResult:
        """Delete ``name`` (recorded as a version); ``found`` False when it did not exist."""
        writes = [Write(name, None, origin, expect=expect)]
        return (await self.write_many(writes, if_imported=if_imported))[0]

    async def write_many(
        self, writes: Sequence[Write], *, mark_imported: bool = False, if_imported: bool = False
    ) -> list[WriteResult]:
        """Apply ``writes`` atomically, in order; one result per write.

        ``mark_imported`` records that this is a directory import. With
        ``if_imported`` nothing is written and :class:`NotImported` raised
        when Redis holds no import (it was emptied): the caller imports first,
        so that the import can't overwrite this write.
        """
        mode = "1" if mark_imported else "2" if if_imported else "0"
        args: list[str | int | bytes] = [self.keep, mode, self.publish]
        keys = [IMPORTED_KEY, FILES_KEY, SEQ_KEY, NAMES_KEY, REV_KEY, CHANNEL]
        texts: list[tuple[str | None, bytes | None]] = []
        for w in writes:
            keys += [doc_key(w.name), history_key(w.name)]
            if not _ORIGIN_RE.match(w.origin):
                raise ValueError(f"invalid origin {w.origin!r}")
            if w.only_file:
                args += [w.name, "file", "", w.origin, "", w.file, w.expect]
                texts.append((None, None))
            elif w.content is None:
                args += [w.name, "del", "", w.origin, "", w.file, w.expect]
                texts.append((None, None))
            else:
                hash_, text = content_hash(w.content), canonical(w.content)
                args += [w.name, "put", hash_, w.origin, text, w.file, w.expect]
                texts.append((hash_, text))
        if self.replica_wait.wanted():
            # Behind Sentinel: acknowledge once a replica has the write too
            # (WAIT applies to the writes of its own connection: one pipeline).
            async with self.redis.pipeline(transaction=False) as pipe:
                await self._write(keys=keys, args=args, client=cast(Any, pipe))
                pipe.execute_command(*self.replica_wait.args())
                (now, flat, done), replicas = await self._call(pipe.execute())
            self.replica_wait.done(int(replicas), "config write")
        else:
            now, flat, done = await self._call(self._write(keys=keys, args=args))
        if not int(done):
            raise NotImported("Redis holds no import of the config directory")
        results = []
        for i, w in enumerate(writes):
            status, version, rev = (int(x) for x in flat[3 * i : 3 * i + 3])
            results.append(
                WriteResult(
                    w.name,
                    changed=status >= 1,
                    version=version,
                    rev=rev,
                    time=int(now),
                    found=status != -1,
                    created=status == 2,
                    precondition_failed=status == -2,
                )
            )
        if self.journal is not None:
            entries = [
                JournalEntry(
                    w.name,
                    r.version,
                    hash_,
                    r.time,
                    w.origin,
                    w.content is None,
                    None if text is None else text.decode(),
                )
                for w, r, (hash_, text) in zip(writes, results, texts, strict=True)
                if r.changed and not w.only_file
            ]
            files = {w.name: (None if w.file == "-" else w.file) for w in writes if w.file}
            await self.journal.record(entries, files)
        return results

    # -- the durable copy --------------------------------------------------------

    async def restore(self) -> list[str]:
        """Put every document of the journal back into Redis (after Redis was emptied).

        One script per document: its current version, history, version
        counter and file record, and a change published; a document Redis
        already holds at that version or later is left alone. The import flag
        is left alone: the caller imports the directory next. Returns the
        names found in the journal.
        """
        journal = self.journal
        if journal is None:
            return []
        documents = await journal.documents()
        files = await journal.files()
        for name, entries in sorted(documents.items()):
            newest = entries[0]
            current: list[str | int] = (
                ["", "", "", "", ""]
                if newest.deleted or newest.content is None
                else [newest.version, newest.hash or "", newest.time, newest.origin, newest.content]
            )
            keys = [
                SEQ_KEY,
                FILES_KEY,
                NAMES_KEY,
                REV_KEY,
                CHANNEL,
                doc_key(name),
                history_key(name),
            ]
            args: list[str | int | bytes] = [
                self.publish,
                name,
                newest.version,
                files.get(name, ""),
                *current,
            ]
            args += [e.to_json() for e in entries[: self.keep]]
            await self._call(self._restore(keys=keys, args=args))
        return sorted(documents)

    async def sync_journal(self) -> int:
        """Record in the journal the versions Redis holds and it lacks; how many were written.

        Versions written by another config service process on the same
        Redis, or lost between Redis and the disk by a crash, so that a
        restore never goes back before them.
        """
        journal = self.journal
        if journal is None:
            return 0
        seq = await self._call(self.redis.hgetall(SEQ_KEY))
        known = await journal.summary()
        entries: list[JournalEntry] = []
        for raw_name, raw_last in seq.items():
            name, last = str(raw_name), int(raw_last)
            # Versions are numbered 1, 2, ... with none skipped: the journal is
            # complete when it holds the newest and as many as are retained.
            top, count = known.get(name, (0, 0))
            if top >= last and count >= min(last, self.keep):
                continue
            raw = await self._call(self.redis.lrange(history_key(name), 0, -1))
            entries += entries_from_history(name, map(str, raw))
        redis_files = await self.files()
        if redis_files != await journal.files():
            await journal.replace_files(redis_files)
        return await journal.record(entries)

    # -- reading -----------------------------------------------------------------

    async def get(self, name: str) -> Version | None:
        """The current version of ``name`` with its content; None when absent or deleted."""
        # decode_responses: replies are str.
        fields: dict[str, str] = await self._call(self.redis.hgetall(doc_key(name)))  # type: ignore[arg-type]
        return self._version(name, fields)

    async def history(self, name: str) -> list[Version]:
        """The retained versions of ``name``, newest first (with content)."""
        raw = await self._call(self.redis.lrange(history_key(name), 0, -1))
        return [self._entry(name, str(item)) for item in raw]

    async def version(self, name: str, number: int) -> Version | None:
        """Version ``number`` of ``name`` if it is still retained."""
        for entry in await self.history(name):
            if entry.version == number:
                return entry
        return None

    async def names(self) -> list[str]:
        """The names of the current documents, sorted."""
        return sorted(str(n) for n in await self._call(self.redis.smembers(NAMES_KEY)))

    async def rev(self) -> int:
        return int(await self._call(self.redis.get(REV_KEY)) or 0)

    async def files(self) -> dict[str, str]:
        """Document name -> hash of the file it was last imported from."""
        return {
            str(k): str(v) for k, v in (await self._call(self.redis.hgetall(FILES_KEY))).items()
        }

    async def origins(self, names: Sequence[str]) -> dict[str, str | None]:
        """The origin of each current document in ``names`` (None when absent)."""
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.hget(doc_key(name), "origin")
        return dict(zip(names, await self._call(pipe.execute()), strict=True))

    async def imported(self) -> bool:
        """Whether a directory import ever ran against this Redis (False after it was emptied)."""
        return bool(await self._call(self.redis.exists(IMPORTED_KEY)))

    async def merged(self, app: str, profile: str) -> Merged:
        """The deep merge ``application < app < app-profile``, read at one revision.

        One round trip; the contents are parsed once per hash (cached).
        """
        names = sources_of(app, profile)
        imported, rev_raw, *docs = await self._call(
            self._read(keys=[IMPORTED_KEY, REV_KEY, *map(doc_key, names)])
        )
        sources: list[Version] = []
        layers: list[Mapping[str, Any]] = []
        for name, (version, hash_, at, origin, content) in zip(names, docs, strict=True):
            if version is not None:
                sources.append(Version(name, int(version), hash_, int(at), origin or "api"))
                layers.append(self._content(hash_, content))
        return Merged(
            app=app,
            profile=profile,
            rev=int(rev_raw or 0),
            version=merged_version(sources),
            sources=tuple(sources),
            layers=tuple(layers),
            imported=bool(imported),
        )

    def render(self, merged: Merged) -> bytes:
        """The JSON of ``merged`` as served (``Merged.to_dict``), cached per app, profile and version.

        Every client of an app asks for the same version after a change: it
        is merged and serialised once.
        """
        key = f"{merged.app}/{merged.profile}/{merged.version}"
        body = self._rendered.get(key)
        if body is None:
            body = orjson.dumps(merged.to_dict())
            self._rendered[key] = body
            if len(self._rendered) > self._cache_size:
                self._rendered.popitem(last=False)
        else:
            self._rendered.move_to_end(key)
        return body

    # -- decoding ----------------------------------------------------------------

    def _version(
        self, name: str, fields: Mapping[str, str], *, content: bool = True
    ) -> Version | None:
        if not fields or "version" not in fields:
            return None
        return Version(
            name=name,
            version=int(fields["version"]),
            hash=fields["hash"],
            time=int(fields["time"]),
            origin=fields.get("origin", "api"),
            content=self._content(fields["hash"], fields["content"]) if content else None,
        )

    def _entry(self, name: str, raw: str) -> Version:
        doc = orjson.loads(raw)
        return Version(
            name=name,
            version=int(doc["version"]),
            hash=doc["hash"],
            time=int(doc["time"]),
            origin=str(doc["origin"]),
            deleted=bool(doc["deleted"]),
            content=doc["content"],
        )

    def _content(self, hash_: str, raw: str) -> dict[str, Any]:
        """The parsed content for ``hash_`` (cached; callers must not mutate it)."""
        cached = self._parsed.get(hash_)
        if cached is not None:
            self._parsed.move_to_end(hash_)
            return cached
        parsed: dict[str, Any] = orjson.loads(raw)
        self._parsed[hash_] = parsed
        if len(self._parsed) > self._cache_size:
            self._parsed.popitem(last=False)
        return parsed
