"""Security: signed tokens, key sets, route policies and rate limits.

Owns what the gateway and the services need to decide who may do what,
with nothing shared between them and the auth service but public keys.

Public face:

- key sets (:class:`core.security.jwks.KeySet`)
  and token verification (:mod:`core.security.tokens`);
- route policies (:mod:`core.security.access`);
- token-bucket rate limits (:mod:`core.security.ratelimit`, exact; and
  :mod:`core.security.synced`, decided locally and reconciled every few
  milliseconds) over a small pipelined RESP connection
  (:mod:`core.security.resp`).
"""
