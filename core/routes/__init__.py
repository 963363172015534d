"""The gateway's static route table: the model, its config format, the trie, its sources.

Public face:

- :class:`core.routes.table.RouteTable` (parse, match) and
  :class:`~core.routes.table.RouteError`;
- :mod:`core.routes.sources`: where tables come from (a file or configsvc),
  installed into whatever the caller hands in.

:mod:`core.routes.parse` (the format) and :mod:`core.routes.trie` (the
matching structure) are internal to the package.
"""
