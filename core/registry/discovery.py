"""Client side of discovery: :class:`Registration` and :class:`Watcher`.

The watcher reads Redis directly through :class:`core.registry.store.RegistryStore`
(the same key layout and scripts as the registry service; no HTTP hop). A
registration writes either there too (a process trusted with the registry's
Redis keys) or through the registry's HTTP API with a token
(:class:`core.registry.client.RegistryClient`), which the registry checks:
a service token may write its own service only, at an allowed target.

- :class:`Registration` keeps one instance registered: it registers, renews
  the TTL every TTL/3, registers again whenever a heartbeat finds the instance
  gone (expired, or Redis restarted empty), and deregisters on stop. Given
  the registry's Redis to watch, it heartbeats at once when a connection to
  it comes back, rather than at its next interval: a Redis restarted empty
  between two heartbeats gets the instance back as soon as it answers.
- :class:`Watcher` keeps an in-memory snapshot of every service's live
  instances, current through the change channel. It re-lists on a revision
  gap, after every (re)connect and every ``resync_interval``; while Redis is
  away it serves its last snapshot. The gateway's hot path reads it without
  awaiting anything.

Self-preservation (Eureka's idea): a re-list after a reconnect, or one whose
revision went backwards, may find instances missing only because Redis lost
its data (restarted empty) and they have not registered again yet. Those are
kept, as they were, for ``grace`` seconds (about one heartbeat interval plus
the registration's reconnect backoff); one that registers again meanwhile is
simply current again, one that does not is dropped when its grace ends. A
re-list on a connection that never broke trusts Redis: what is missing is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from core import log
from core.redis import REDIS_ERRORS, Backoff, Redis, Subscription
from core.registry.client import RegistrationRefused, RegistryClient, RegistryUnavailable
from core.registry.model import iso
from core.registry.store import CHANNEL, PREFIX, Event, Instance, RegistryStore
from core.tasks import TaskSet

logger = log.get("discovery")

__all__ = ["Event", "Instance", "Registration", "Watcher"]

#: The channel a :class:`Registration` subscribes to only to learn that its
#: connection broke and came back (nothing is published on it). It shares the
#: registry's hash tag, so on Cluster it lives on the shard holding the instances.
PRESENCE_CHANNEL = PREFIX + "presence"
#: Longest wait between two attempts while the registry or its Redis is away
#: (the registry's 503 says ``Retry-After: 1``).
RETRY_CAP = 1.0


class Registration:
    """Keeps ``instance`` registered while running. Start with :meth:`start`, end with :meth:`stop`.

    ``target`` is the registry's Redis, or a :class:`RegistryClient` (the
    registry's HTTP API and a token). ``registered`` is set while the
    registry is believed to hold the instance; ``registrations`` counts how
    many times it had to register; ``refusal`` is the registry's last reason
    for refusing it (a token for another service, a denied target), retried
    slowly and logged once, since it won't change by itself. The instance's
    ``registered_at`` is stamped once (unless given) and kept when it
    registers again after Redis lost it: watchers then see the same process
    coming back, not a new one (see :func:`core.upstream.upstream.generation`).

    ``redis``, the registry's Redis (the same client as ``target`` when that
    is one), is watched through a subscription that receives nothing: when
    its connection breaks and comes back, Redis may have restarted empty, so
    the registration heartbeats at once (:meth:`check_now`) instead of up to
    TTL/3 later, and a retry waiting out its backoff goes at once.
    """

    def __init__(
        self, target: Redis | RegistryClient, instance: Instance, *, redis: Redis | None = None
    ) -> None:
        self.store: RegistryStore | RegistryClient = (
            target if isinstance(target, RegistryClient) else RegistryStore(target)
        )
        self.refusal: str | None = None
        if not instance.registered_at:
            instance = dataclasses.replace(instance, registered_at=iso(time.time() * 1000))
        self.instance = instance
        self.registered = asyncio.Event()
        self.registrations = 0
        self._tasks = TaskSet("registration")
        self._wake = asyncio.Event()
        self.presence = (
            Subscription(redis, [PRESENCE_CHANNEL], _ignore, on_connect=self._on_redis,
                         name=f"registration:{instance.id}")
            if redis is not None else None
        )  # fmt: skip

    @property
    def interval(self) -> float:
        return self.instance.ttl / 3

    async def start(self, *, wait: float | None = None) -> None:
        """Start the heartbeat loop; with ``wait``, wait that long for the first registration.

        It does not fail when Redis is away: the loop keeps trying.
        """
        self._tasks.spawn(self._run(), self.instance.service)
        if self.presence is not None:
            self._tasks.spawn(self.presence.run(), "presence")
        if wait:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.registered.wait(), wait)

    def check_now(self) -> None:
        """Heartbeat (or retry) now rather than at the end of the current wait."""
        self._wake.set()

    async def _on_redis(self) -> None:
        assert self.presence is not None
        if self.presence.connections:  # a reconnection: Redis may have lost the instance
            self.check_now()

    async def _pause(self, seconds: float) -> None:
        """Wait ``seconds``, or until :meth:`check_now`."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
        self._wake.clear()

    async def _register(self) -> None:
        rev, _ = await self.store.register(self.instance)
        self.registrations += 1
        self.registered.set()
        logger.info(
            "registered %s/%s at %s (rev %d)",
            self.instance.service, self.instance.id, self.instance.url, rev,
        )  # fmt: skip

    async def _run(self) -> None:
        backoff = Backoff(base=0.1, cap=min(RETRY_CAP, self.interval))
        while True:
            try:
                if not self.registered.is_set():
                    await self._register()
                elif not await self.store.heartbeat(self.instance.service, self.instance.id):
                    logger.warning(
                        "%s/%s was no longer registered (expired or Redis emptied); registering again",
                        self.instance.service, self.instance.id,
                    )  # fmt: skip
                    await self._register()
                backoff.reset()
                self.refusal = None
                await self._pause(self.interval)
            except (*REDIS_ERRORS, RegistryUnavailable) as exc:
                if backoff.attempt == 0:
                    logger.warning(
                        "registration of %s: the registry is unavailable (%s)",
                        self.instance.id,
                        exc,
                    )
                await self._pause(backoff.next())
            except RegistrationRefused as exc:
                if self.refusal != exc.detail:
                    logger.error(
                        "the registry refuses %s/%s (%d): %s",
                        self.instance.service, self.instance.id, exc.status, exc.detail,
                    )  # fmt: skip
                self.refusal = exc.detail
                self.registered.clear()
                await asyncio.sleep(max(self.interval, 2.0))

    async def set_status(self, status: str) -> None:
        """Change the instance's status in the registry (e.g. OUT_OF_SERVICE before a drain)."""
        self.instance = dataclasses.replace(self.instance, status=status)
        await self.store.update(self.instance.service, self.instance.id, {"status": status})

    async def stop(self, *, deregister: bool = True) -> None:
        """Stop heartbeating and, unless told otherwise, deregister (best effort, bounded)."""
        if self.presence is not None:
            self.presence.stop()
        await self._tasks.stop()
        if deregister:
            try:
                await asyncio.wait_for(
                    self.store.deregister(self.instance.service, self.instance.id), 2.0
                )
            except (*REDIS_ERRORS, RegistryUnavailable, RegistrationRefused) as exc:
                logger.warning("could not deregister %s: %s", self.instance.id, exc)
        if isinstance(self.store, RegistryClient):
            await self.store.close()
        self.registered.clear()


async def _ignore(channel: str, data: str) -> None:
    """Nothing is published on :data:`PRESENCE_CHANNEL`."""


ChangeCallback = Callable[[set[str]], Awaitable[None] | None]


class Watcher:
    """An in-memory, event-fed snapshot of the registry.

    ``instances(service)`` returns the live ``UP`` instances as a tuple
    recomputed only on change, so readers on the hot path pay a dict lookup.
    Callbacks added with :meth:`on_change` get the set of services that changed.
    Counters: ``relists`` (full re-reads) and ``gaps`` (revision gaps seen).
    ``grace`` is how long an instance missing from a re-list after a reconnect
    is kept (see the module doc); ``preserved`` holds those, with when their
    grace ends (monotonic clock).
    """

    def __init__(self, redis: Redis, *, resync_interval: float = 30.0, grace: float = 5.0) -> None:
        self.store = RegistryStore(redis)
        self.redis = redis
        self.resync_interval = resync_interval
        self.grace = grace
        self.preserved: dict[tuple[str, str], float] = {}
        self.preserved_total = 0
        self._preserve_wake = asyncio.Event()
        self.rev = 0
        self.services: dict[str, dict[str, Instance]] = {}
        self._up: dict[str, tuple[Instance, ...]] = {}
        self._parsed: dict[str, Instance] = {}
        self._callbacks: list[ChangeCallback] = []
        self._lock = asyncio.Lock()
        self._changed = asyncio.Condition()
        self.relists = 0
        self.gaps = 0
        self.last_sync = 0.0
        self.subscription = Subscription(
            redis, [CHANNEL], self._on_message, on_connect=self._on_connect, name="watcher"
        )
        self._tasks = TaskSet("watcher")

    # -- reading -----------------------------------------------------------------

    def instances(self, service: str) -> tuple[Instance, ...]:
        """The live ``UP`` instances of ``service`` (empty when unknown)."""
        return self._up.get(service, ())

    def all_instances(self, service: str) -> list[Instance]:
        """Every live instance of ``service`` whatever its status."""
        return list(self.services.get(service, {}).values())

    def known(self, service: str) -> bool:
        return service in self.services

    @property
    def connected(self) -> bool:
        return self.subscription.connected.is_set()

    def on_change(self, callback: ChangeCallback) -> None:
        self._callbacks.append(callback)

    async def wait_for(self, predicate: Callable[[Watcher], bool], timeout: float = 5.0) -> None:
        """Wait until ``predicate(self)`` holds; ``TimeoutError`` after ``timeout`` seconds."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: predicate(self)), timeout)

    # -- lifecycle ---------------------------------------------------------------

    async def start(self, *, wait: float | None = None) -> None:
        """Start following; with ``wait``, wait that long for the first full listing.

        Redis being away is not an error: the watcher keeps trying and serves
        an empty snapshot until it can read one.
        """
        self._tasks.spawn(self.subscription.run(), "subscription")
        self._tasks.spawn(self._periodic(), "resync")
        self._tasks.spawn(self._end_graces(), "grace")
        if wait:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.subscription.connected.wait(), wait)

    async def stop(self) -> None:
        self.subscription.stop()
        await self._tasks.stop()

    # -- keeping current -------------------------------------------------------------

    async def relist(self, *, reconnected: bool = False) -> None:
        """Replace the snapshot by a full, atomic read of the registry.

        With ``reconnected`` (the connection broke since the last read), or
        when the revision went backwards, instances missing from the read are
        preserved for :attr:`grace` rather than dropped.
        """
        async with self._lock:
            started = time.perf_counter()
            rev, services = await self.store.snapshot(self._parsed)
            self._preserve(services, lost=reconnected or rev < self.rev)
            changed = {
                name
                for name in services.keys() | self.services.keys()
                if services.get(name) != self.services.get(name)
            }
            self.services = services
            self.rev = rev
            self.relists += 1
            self.last_sync = time.time()
            self._up = {name: self._live_up(insts) for name, insts in services.items()}
            logger.debug(
                "relisted %d services at rev %d in %.1f ms",
                len(services), rev, (time.perf_counter() - started) * 1000,
            )  # fmt: skip
        await self._notify(changed)

    async def _on_connect(self) -> None:
        await self.relist(reconnected=self.relists > 0)

    def _preserve(self, services: dict[str, dict[str, Instance]], *, lost: bool) -> None:
        """Add to ``services`` (a fresh read) the known instances it lacks that are in their grace.

        With ``lost``, instances missing now start a grace period. An
        instance present in the read is current again: its grace ends.
        """
        now = time.monotonic()
        preserved = self.preserved
        for key in [k for k in preserved if k[1] in services.get(k[0], {})]:
            del preserved[key]
        started = 0
        for name, insts in self.services.items():
            found = services.get(name, {})
            for iid, inst in insts.items():
                if iid in found:
                    continue
                key = (name, iid)
                if key not in preserved:
                    if not lost:
                        continue
                    preserved[key] = now + self.grace
                    started += 1
                elif preserved[key] <= now:
                    del preserved[key]
                    continue
                services.setdefault(name, {})[iid] = inst
        if started:
            self.preserved_total += started
            logger.warning(
                "%d instance(s) missing after Redis came back (emptied?): kept for %.1fs "
                "while they register again", started, self.grace,
            )  # fmt: skip
            self._preserve_wake.set()

    async def _end_graces(self) -> None:
        """Drop preserved instances whose grace ended and that did not register again."""
        while True:
            due = min(self.preserved.values(), default=math.inf)
            wait = None if due == math.inf else max(0.0, due - time.monotonic())
            self._preserve_wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._preserve_wake.wait(), wait)
            now = time.monotonic()
            gone = [key for key, until in self.preserved.items() if until <= now]
            if not gone:
                continue
            changed: set[str] = set()
            async with self._lock:
                for key in gone:
                    if self.preserved.get(key, math.inf) > now:
                        continue  # registered again, or given a new grace meanwhile
                    del self.preserved[key]
                    name, iid = key
                    insts = dict(self.services.get(name, {}))
                    if insts.pop(iid, None) is not None:
                        self.services[name] = insts
                        self._up[name] = self._live_up(insts)
                        changed.add(name)
            if changed:
                logger.warning(
                    "dropped %d instance(s) that did not register again within %.1fs",
                    len(gone), self.grace,
                )  # fmt: skip
            await self._notify(changed)

    async def _periodic(self) -> None:
        while True:
            await asyncio.sleep(self.resync_interval)
            if not self.connected:
                continue
            try:
                await self.relist()
            except REDIS_ERRORS as exc:
                logger.warning("periodic resync failed: %s", exc)

    async def _on_message(self, channel: str, data: str) -> None:
        event = Event.parse(data)
        async with self._lock:
            if event.rev <= self.rev:
                return  # already in the snapshot we listed
            gap = event.rev != self.rev + 1
            if not gap:
                self._apply(event)
                self.rev = event.rev
        if gap:
            self.gaps += 1
            logger.info("revision gap (have %d, got %d): relisting", self.rev, event.rev)
            await self.relist()
        else:
            await self._notify({event.service})

    def _apply(self, event: Event) -> None:
        self.preserved.pop((event.service, event.instance.id), None)
        insts = dict(self.services.get(event.service, {}))
        if event.type in ("register", "update"):
            insts[event.instance.id] = event.instance
        else:
            insts.pop(event.instance.id, None)
        self.services[event.service] = insts
        self._up[event.service] = self._live_up(insts)

    @staticmethod
    def _live_up(insts: Mapping[str, Instance]) -> tuple[Instance, ...]:
        return tuple(i for _, i in sorted(insts.items()) if i.status == "UP")

    async def _notify(self, changed: set[str]) -> None:
        async with self._changed:
            self._changed.notify_all()
        if not changed:
            return
        for callback in self._callbacks:
            try:
                result = callback(changed)
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                logger.exception("watcher change callback failed")

    def describe(self) -> dict[str, Any]:
        """State for ``/health`` pages: revision, connection, counters."""
        return {
            "rev": self.rev,
            "connected": self.connected,
            "services": len(self.services),
            "instances": sum(len(v) for v in self.services.values()),
            "relists": self.relists,
            "gaps": self.gaps,
            "preserved": len(self.preserved),
            "grace": self.grace,
            "last_sync": self.last_sync,
        }
