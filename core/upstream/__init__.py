"""The upstream mechanisms shared by the gateway and service-to-service calls.

Public face:

- :class:`core.upstream.upstream.Upstream` and its
  :class:`~core.upstream.upstream.UpstreamPolicy`: one upstream service's
  endpoints and their health, tying together
- :mod:`core.upstream.balancer` (round robin, least outstanding, weighted),
  :mod:`core.upstream.outlier` (passive ejection),
  :mod:`core.upstream.breaker` (Resilience4j's states) and
  :mod:`core.upstream.retry` (retry policy and budget).

Nothing here knows of the proxy or the service scaffold.
"""
