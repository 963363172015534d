"""Configuration: the config service's storage and the client every component uses.

Owns the config documents (versions, history, rollback), their import from
a TOML directory, the deep merge, ``{cipher}`` secrets, and the client side
(fetch, subscribe, validate, apply).

Public face:

- :class:`core.config.client.ConfigClient` and its options: what a process
  uses to follow its config;
- :mod:`core.config.typed`: typed dataclass views of a config table;
- :func:`core.config.merge.deep_merge`, :func:`core.config.merge.thaw`;
- the server side (:mod:`core.config.store`, :mod:`core.config.files`,
  :mod:`core.config.document`, :mod:`core.config.reads`,
  :mod:`core.config.crypto`) is used by ``configsvc.py`` only (and
  :func:`core.config.files.read_directory` by the launcher, to check the
  directory before it starts anything);
- ``python -m core.config.watch``: print a document's changes as they come.
"""
