"""Discovery: the registry's storage, its HTTP API and its client side.

Owns the instance model, the Redis key layout and its Lua scripts, the
change stream (SSE), expiry, and the two client mechanisms every process
uses.

Public face:

- :class:`core.registry.discovery.Registration` (register, heartbeat,
  re-register, deregister) and :class:`core.registry.discovery.Watcher` (an
  in-memory snapshot fed by change events);
- :class:`core.registry.model.Instance` and the name rules
  (``SERVICE_RE``, ``HOSTNAME_RE``), re-exported by :mod:`core.registry.store`;
- the server side (:mod:`core.registry.api`, :mod:`core.registry.events`,
  :mod:`core.registry.expiry`, :mod:`core.registry.store`) is used by
  ``registry.py`` only.
"""
