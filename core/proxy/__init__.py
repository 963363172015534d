"""The gateway's data plane: HTTP/1.1 proxying on asyncio protocols.

Layers, from the client inwards:

- :mod:`core.proxy.server`: :class:`~core.proxy.server.ClientConnection`, one
  per client TCP connection: parses requests with httptools, enforces the
  limits (head size, body size, slow clients), answers pipelined requests in
  order.
- :mod:`core.proxy.exchange`: :class:`~core.proxy.exchange.Exchange`, one per
  proxied request: chooses an endpoint, writes the request upstream, retries,
  streams the response back, accounts the outcome.
- :mod:`core.proxy.pool`: upstream connections and the per-endpoint pool of
  idle keep-alive connections.
- :mod:`core.proxy.wire`: request and response heads as bytes, hop-by-hop and
  forwarded headers, problem-details responses.
- :mod:`core.proxy.stats`: plain-int counters exported to Prometheus at
  scrape time.

Nothing here awaits Redis or configsvc: the control plane
(:mod:`core.proxy.control`) hands the data plane in-memory snapshots.
"""
