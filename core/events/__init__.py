"""The event bus on Redis Streams: publishing, consuming, the outbox, dead letters.

Public face:

- :mod:`core.events.bus`: the :class:`~core.events.bus.Event` envelope
  (CloudEvents' names) and :class:`~core.events.bus.EventBus`;
- :mod:`core.events.outbox`: events written in the producer's own
  transaction and relayed to the bus;
- :mod:`core.events.consumer`: idempotent consumer groups, claiming, dead
  letters after N deliveries;
- :mod:`core.events.dead_letters` and :mod:`core.events.http`: dead letters
  to list, replay or discard, over HTTP.
"""
