"""OpenAPI 3.1 documents for Essaim's HTTP APIs, declared beside the routes they describe.

Each component builds a :class:`~core.openapi.spec.Spec`, declares one
operation per route (parameters, request body, responses with their JSON
schemas, problem details for errors) and serves the document at
``GET /openapi.json``. :func:`~core.openapi.spec.drift` compares a document
with an application's routes, so a test can fail when a route is added
without being described, or described without existing.

Public face: :class:`core.openapi.spec.Spec`, :func:`core.openapi.spec.drift`
and the schema helpers of :mod:`core.openapi.schemas` (``PROBLEM``,
``problem``, ``json``, ``obj``, ``array_of``, ...).
"""
