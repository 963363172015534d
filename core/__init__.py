"""Essaim's shared mechanisms, one package per concern over a flat foundation.

The foundation, flat here and imported by everything: :mod:`core.settings`,
:mod:`core.errors`, :mod:`core.log`, :mod:`core.redis`, :mod:`core.tasks`,
:mod:`core.runner`, :mod:`core.http`, :mod:`core.validation`, :mod:`core.trace`,
:mod:`core.metrics`, :mod:`core.db` and :mod:`core.testing`. It imports
none of the packages.

The packages, lowest first (a package imports only the foundation and the
packages above it in this list; ``tests/test_layering.py`` checks it):

- :mod:`core.openapi`: OpenAPI documents for every HTTP API;
- :mod:`core.config`: the config service's storage and the config client;
- :mod:`core.registry`: the registry's storage, API and the discovery client;
- :mod:`core.security`: key sets, tokens, route policies, rate limits;
- :mod:`core.events`: the event bus on Redis Streams, the outbox;
- :mod:`core.upstream`: balancer, outlier ejection, breaker, retries;
- :mod:`core.routes`: the gateway's static route table;
- :mod:`core.proxy`: the gateway's data plane;
- :mod:`core.service`: the scaffold every business service is built on.

Each mechanism lives here once (DESIGN.md principle 4): the gateway and the
services use the same balancer, breaker, watcher and retry policy.
"""

from core.native.loader import install

# Before any module of the hot path is imported: the compiled build of it,
# where one matches the source (core/native/loader.py), else the source itself.
install()
