"""The scaffold every business service is built on.

Public face:

- :mod:`core.service.scaffold`: :class:`~core.service.scaffold.Service`
  and :func:`~core.service.scaffold.run_service` (settings, database,
  config, registry, calls, events, routes, health, metrics);
- :mod:`core.validation`: request body validation and pagination;
- :mod:`core.service.calls`: calls to other services by name.

This is the top layer: nothing in ``core`` imports it.
"""
