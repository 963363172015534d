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

Public names: :class:`~core.workers.supervisor.Supervisor`,
:class:`~core.workers.handover.HandoverServer`,
:func:`~core.workers.handover.take_over`,
:func:`~core.workers.sockets.listen`.
"""
