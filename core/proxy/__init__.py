"""The gateway's data plane: HTTP/1.1 proxying on asyncio protocols.

Public face: :class:`core.proxy.server.ProxyServer` and
:class:`core.proxy.contract.Limits` (the listener and its limits),
:class:`core.proxy.router.Router` (fed by the control plane) and
:class:`core.proxy.stats.Stats`; the rest is internal to the package.

Layers, from the client inwards:

- :mod:`core.proxy.server`: :class:`~core.proxy.server.ClientConnection`, one
  per client TCP connection: parses requests with httptools, enforces the
  limits (head size, body size, slow clients), answers pipelined requests in
  order.
- :mod:`core.proxy.head`: :func:`~core.proxy.head.prepare`, a request head
  checked, routed and made ready to send upstream.
- :mod:`core.proxy.exchange`: :class:`~core.proxy.exchange.Exchange`, one per
  proxied request: chooses an endpoint, writes the request upstream, retries,
  times out, accounts the outcome; :mod:`core.proxy.response` is its half that
  receives and streams the upstream's answer.
- :mod:`core.proxy.contract`: what an exchange needs from its connection and
  its server, as protocols, so the modules import one way (server ->
  exchange -> contract) and ``Limits``.
- :mod:`core.proxy.pool`: upstream connections and the per-endpoint pool of
  idle keep-alive connections.
- :mod:`core.proxy.wire`: request and response heads as bytes, hop-by-hop and
  forwarded headers, problem-details responses.
- :mod:`core.proxy.stats`: plain-int counters exported to Prometheus at
  scrape time.
- :mod:`core.proxy.router`: the routing decision and the upstreams, fed by
  the control plane.

Nothing here awaits Redis or configsvc: the control plane (``gateway.py``,
:mod:`core.routes.sources`) hands the router in-memory snapshots.
"""
