"""A service's events over its HTTP API: dead letters to list, replay or discard; its outbox.

:mod:`core.service.scaffold` adds these routes to a service that handles events
(its consumer group is the service's name):

- ``GET /events/dead?after=ID&count=N``: the group's dead letters, oldest
  first (``count`` 1-1000, default 100; ``next_after`` pages on);
- ``POST /events/dead/replay``: body ``{"ids": [...]}``, or no body for every
  dead letter: they go back to this group only, with a fresh delivery count;
  answers ``{"replayed": N}``;
- ``POST /events/dead/discard``: body ``{"ids": [...]}``: deleted for good;
  answers ``{"discarded": N}``;

(replay and discard are admin actions: the scaffold gives them the
service's ``admin_access`` policy, ``roles:admin`` by default)

and to a service that emits events:

- ``GET /events/outbox?limit=N``: the newest events of its outbox (``limit``
  1-1000, default 20), with ``published_at`` (null while waiting for Redis).
"""

from __future__ import annotations

import sqlite3
from typing import Any

import orjson
from aiohttp import web

from core.errors import BadRequest
from core.events.bus import Event
from core.events.consumer import Consumer
from core.events.dead_letters import dead_letters, discard, is_stream_id, replay
from core.events.outbox import OutboxRelay
from core.http import json_response, read_json
from core.validation import Fields, query_int

__all__ = ["CONSUMER", "RELAY", "add_routes", "describe"]

BODY_LIMIT = 256 * 1024


#: The service's consumer and relay, set by :mod:`core.service.scaffold` when it has them.
CONSUMER = web.AppKey("consumer", Consumer)
RELAY = web.AppKey("relay", OutboxRelay)


async def list_dead(request: web.Request) -> web.Response:
    """``GET /events/dead``."""
    consumer = _consumer(request)
    count = query_int(request, "count", 100, 1, 1000)
    after = request.query.get("after") or None
    if after is not None and not is_stream_id(after):
        raise BadRequest(
            f"query parameter 'after' must be a dead letter id (like 1700000000000-0), "
            f"got {after[:40]!r}",
            errors=[{"field": "after", "reason": "expected a dead letter id"}],
        )
    letters = await dead_letters(consumer.redis, consumer.group, after=after, count=count)
    return json_response(
        {
            "group": consumer.group,
            "dead_letters": [letter.to_dict() for letter in letters],
            "next_after": letters[-1].id if len(letters) == count else None,
        }
    )


async def _ids(request: web.Request, *, required: bool) -> list[str] | None:
    body = await read_json(request, BODY_LIMIT, empty=None)
    if body is None and not required:
        return None
    fields = Fields(body, {"ids"})
    raw = fields.array("ids", max_items=10_000)
    ids: list[str] = []
    for i, value in enumerate(raw):
        if not isinstance(value, str):
            fields.type_errors.append({"field": f"ids[{i}]", "reason": "expected a string"})
        elif not is_stream_id(value):
            fields.fail(f"ids[{i}]", f"not a dead letter id (like 1700000000000-0): {value[:40]!r}")
        else:
            ids.append(value)
    fields.check()
    return ids


async def replay_dead(request: web.Request) -> web.Response:
    """``POST /events/dead/replay``."""
    consumer = _consumer(request)
    ids = await _ids(request, required=False)
    moved = await replay(consumer.redis, consumer.group, ids)
    return json_response({"replayed": moved})


async def discard_dead(request: web.Request) -> web.Response:
    """``POST /events/dead/discard``."""
    consumer = _consumer(request)
    ids = await _ids(request, required=True)
    assert ids is not None
    return json_response({"discarded": await discard(consumer.redis, consumer.group, ids)})


async def list_outbox(request: web.Request) -> web.Response:
    """``GET /events/outbox``."""
    relay = _relay(request)
    limit = query_int(request, "limit", 20, 1, 1000)

    def read(conn: sqlite3.Connection) -> list[tuple[str, str, float | None]]:
        return conn.execute(
            "SELECT fields, created_at, published_at FROM essaim_outbox ORDER BY seq DESC LIMIT ?",
            (limit,),
        ).fetchall()

    rows = await relay.db.run(read)
    events: list[dict[str, Any]] = []
    for fields, _, published_at in rows:
        doc = Event.from_fields(orjson.loads(fields)).to_dict()
        doc["published"] = published_at is not None
        events.append(doc)
    return json_response({"events": events, "pending": await relay.pending()})


def _consumer(request: web.Request) -> Consumer:
    return request.app[CONSUMER]


def _relay(request: web.Request) -> OutboxRelay:
    return request.app[RELAY]


def add_routes(app: web.Application, *, consumes: bool, emits: bool) -> None:
    """Add the dead-letter routes (``consumes``) and the outbox route (``emits``)."""
    if consumes:
        app.router.add_get("/events/dead", list_dead)
        app.router.add_post("/events/dead/replay", replay_dead)
        app.router.add_post("/events/dead/discard", discard_dead)
    if emits:
        app.router.add_get("/events/outbox", list_outbox)


async def describe(consumer: Consumer | None, relay: OutboxRelay | None) -> dict[str, Any]:
    """The events part of a ``/health`` page: the consumer's counters and the outbox's state."""
    doc: dict[str, Any] = {}
    if consumer is not None:
        doc["consumer"] = {
            "group": consumer.group,
            "consumer": consumer.consumer,
            "connected": consumer.connected.is_set(),
            "handled": consumer.handled,
            "duplicates": consumer.duplicates,
            "failures": consumer.failures,
            "dead_lettered": consumer.dead_lettered,
        }
    if relay is not None:
        try:
            pending: int | None = await relay.pending()
        except sqlite3.Error:
            pending = None
        doc["outbox"] = {
            "connected": relay.connected.is_set(),
            "published": relay.published,
            "pending": pending,
        }
    return doc
