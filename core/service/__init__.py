"""The scaffold every business service is built on.

Public face:

- :mod:`core.service.scaffold`: :class:`~core.service.scaffold.Service`
  and :func:`~core.service.scaffold.run_service` (settings, database,
  config, registry, calls, events, routes, health, metrics);
- :mod:`core.validation`: request body validation and pagination;
- :mod:`core.service.calls`: calls to other services by name;
- :mod:`core.service.policies`: does the gateway agree with a service on
  each route's policy?

This is the top layer: nothing in ``core`` imports it.
"""
