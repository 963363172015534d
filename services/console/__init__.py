"""The console: the whole system at a glance in a browser (``python -m services.console``).

A service like the others (:mod:`core.service.scaffold`), reached through the
gateway at ``/console/``. It serves a page of plain HTML, CSS and JavaScript
(:mod:`services.console.static`, no build step) and a JSON and Server-Sent
Events API that gathers what the control plane knows:

- :mod:`~services.console.instances`: the registry's services and instances,
  followed over the registry's SSE watch;
- :mod:`~services.console.traffic`: the gateway's routes in force and, per
  service, request rate, error rate, latency, breakers and ejections, from
  its admin API (merged across its workers);
- :mod:`~services.console.configs`: configsvc's documents and versions,
  followed over configsvc's SSE, their diffs and rollbacks;
- :mod:`~services.console.streams`: each event stream's consumer groups and
  the dead letters, from Redis;
- :mod:`~services.console.audit`: who did which action, kept in the
  console's own database and logged.

:mod:`~services.console.hub` holds each part as a JSON document and wakes the
browsers' streams when one changes; :mod:`~services.console.service` is the
HTTP API and the actions (admin role, each audited).
"""
