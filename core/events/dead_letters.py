"""Dead letters: messages a consumer group gave up on, to list, replay or discard.

A :class:`~core.events.consumer.Consumer` moves a message to its group's
dead-letter stream (``essaim:events:dead:{group}``) after ``max_deliveries``
failed deliveries, or at once when it is not a valid envelope. Each entry
keeps where the message came from, why it failed, and the original fields
(prefixed ``e.``). :func:`replay` moves entries to the group's retry stream,
which only that group reads, so the other groups that handled the event
never see it again; the services expose these functions over HTTP.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from core.events.bus import PREFIX, Event, Keys, now_iso
from core.redis import Redis

__all__ = ["DeadLetter", "dead_fields", "dead_letters", "discard", "is_stream_id", "replay"]

STREAM_ID_RE = re.compile(r"^\d+-\d+$")
_MAX_PART = 2**64 - 1


def is_stream_id(value: str) -> bool:
    """Whether ``value`` is an id Redis accepts: ``MS-SEQ``, each part a 64-bit unsigned number.

    The pattern alone lets through ``1-99999999999999999999``, which Redis
    refuses with an error (it was answered 503, as if Redis were away).
    """
    if not STREAM_ID_RE.match(value):
        return False
    ms, _, seq = value.partition("-")
    return int(ms) <= _MAX_PART and int(seq) <= _MAX_PART


# Moves dead letters (ARGV: entry ids) to the retry stream, atomically, so that
# two concurrent replays can't both move one. Original fields carry an "e." prefix.
_REPLAY = """
local moved = 0
for _, id in ipairs(ARGV) do
  local entries = redis.call('XRANGE', KEYS[1], id, id)
  if #entries > 0 then
    local flat = entries[1][2]
    local out = {}
    for i = 1, #flat, 2 do
      if string.sub(flat[i], 1, 2) == 'e.' then
        out[#out + 1] = string.sub(flat[i], 3)
        out[#out + 1] = flat[i + 1]
      end
    end
    if #out > 0 then redis.call('XADD', KEYS[2], '*', unpack(out)) end
    redis.call('XDEL', KEYS[1], id)
    moved = moved + 1
  end
end
return moved
"""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that a group gave up on: where it came from, why, and its fields.

    ``event`` is ``None`` when the fields are not a valid envelope.
    """

    id: str
    group: str
    stream: str
    message_id: str
    deliveries: int
    error: str
    failed_at: str
    fields: Mapping[str, str]

    @property
    def event(self) -> Event | None:
        try:
            return Event.from_fields(self.fields)
        except ValueError:
            return None

    @classmethod
    def from_entry(cls, entry_id: str, flat: Mapping[str, str]) -> DeadLetter:
        """The dead letter stored as entry ``entry_id`` with fields ``flat``."""
        return cls(
            id=entry_id,
            group=flat.get("group", ""),
            stream=flat.get("stream", ""),
            message_id=flat.get("message_id", ""),
            deliveries=int(flat.get("deliveries", "0")),
            error=flat.get("error", ""),
            failed_at=flat.get("failed_at", ""),
            fields={k[2:]: v for k, v in flat.items() if k.startswith("e.")},
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the dead letter with its event (CloudEvents JSON) or raw fields."""
        event = self.event
        return {
            "id": self.id,
            "group": self.group,
            "stream": self.stream,
            "message_id": self.message_id,
            "deliveries": self.deliveries,
            "error": self.error,
            "failed_at": self.failed_at,
            "event": event.to_dict() if event is not None else None,
            "fields": dict(self.fields),
        }


def dead_fields(
    group: str, stream: str, message_id: str, deliveries: int, error: str, fields: Mapping[str, str]
) -> dict[str, str]:
    """A dead-letter entry: where the message came from, why it failed, its fields as ``e.*``."""
    return {
        "group": group,
        "stream": stream,
        "message_id": message_id,
        "deliveries": str(deliveries),
        "error": error[:2000],
        "failed_at": now_iso(),
        **{f"e.{k}": v for k, v in fields.items()},
    }


def _check_ids(ids: Iterable[str]) -> list[str]:
    checked = list(ids)
    for entry_id in checked:
        if not is_stream_id(entry_id):
            raise ValueError(f"invalid dead letter id {entry_id!r}")
    return checked


async def dead_letters(
    redis: Redis, group: str, *, after: str | None = None, count: int = 100, prefix: str = PREFIX
) -> list[DeadLetter]:
    """The dead letters of ``group``, oldest first: at most ``count``, after id ``after``."""
    start = "-" if after is None else "(" + _check_ids([after])[0]
    entries: Any = await redis.xrange(Keys(prefix).dead(group), start, "+", count=count)
    return [DeadLetter.from_entry(entry_id, flat) for entry_id, flat in entries or []]


async def replay(
    redis: Redis, group: str, ids: Iterable[str] | None = None, *, prefix: str = PREFIX
) -> int:
    """Send dead letters back to ``group`` (all of them when ``ids`` is None); how many moved.

    They go to the group's retry stream, so no other group sees them again, and
    start over with a fresh delivery count. Unknown ids are skipped.
    """
    keys = Keys(prefix)
    if ids is None:
        entries: Any = await redis.xrange(keys.dead(group), "-", "+")
        ids = [entry_id for entry_id, _ in entries or []]
    checked = _check_ids(ids)
    moved = 0
    for i in range(0, len(checked), 500):
        moved += int(
            await redis.eval(_REPLAY, 2, keys.dead(group), keys.retry(group), *checked[i : i + 500])
        )
    return moved


async def discard(redis: Redis, group: str, ids: Iterable[str], *, prefix: str = PREFIX) -> int:
    """Delete dead letters for good; how many existed."""
    checked = _check_ids(ids)
    if not checked:
        return 0
    return int(await redis.xdel(Keys(prefix).dead(group), *checked))
