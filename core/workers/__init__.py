"""Running a server as several processes on one port: the gateway's workers.

- :mod:`core.workers.sockets`: listening sockets shared with ``SO_REUSEPORT``,
  a check that a port is free, passing sockets between processes;
- :mod:`core.workers.handover`: a running process hands its listening sockets
  to its successor over a Unix socket and stops once the successor is ready
  (a restart or upgrade that refuses no connection);
- :mod:`core.workers.supervisor`: a parent that starts, supervises, replaces
  one by one (``SIGHUP``) and stops worker processes;
- :mod:`core.workers.merge`: one admin view out of every worker's
  (Prometheus text summed, JSON documents merged).

Public face: :class:`core.workers.supervisor.Supervisor` (with
:class:`~core.workers.supervisor.WorkerSpec` and
:func:`~core.workers.supervisor.notify_ready`, the worker's side),
:class:`core.workers.handover.HandoverServer` and
:func:`core.workers.handover.take_over`, :func:`core.workers.sockets.listen`
and :func:`~core.workers.sockets.ensure_free`,
:func:`core.workers.admin.build_admin`. The package imports only the
foundation: it knows nothing of the gateway but the shape of its admin
documents (:mod:`core.workers.merge`).
"""
