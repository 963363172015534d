"""The gateway's hot path as C extensions built by mypyc, loaded only when they match the source.

Public face:

- :mod:`core.native.loader`: which build runs (:data:`~core.native.loader.BUILD`),
  and :func:`~core.native.loader.install`, which :mod:`core` calls before
  anything else is imported;
- :mod:`core.native.build`: ``python -m core.native.build`` (``make native``)
  compiles :data:`~core.native.loader.MODULES` into ``build/native/``.

This package imports nothing else from ``core``: it runs first.
"""
