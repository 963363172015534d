"""Instructions per ``Heads.prepare`` of a request with a new path and query, under callgrind.

``PYTHONHASHSEED=0 valgrind --tool=callgrind python -m bench._prepare_cost N``
prepares N heads (``/bench/item/<i>?n=<i>``, same headers), after building
their targets; run it with N=0 and N=20000 and divide the difference of the
"Collected" counts by 20000. Deterministic where wall-clock CPU time on a
shared machine is not (docs/gateway.md).
"""

from __future__ import annotations

import sys

from core.proxy.head import Heads
from core.proxy.router import Router
from core.routes.table import RouteTable


def main(argv: list[str]) -> int:
    router = Router(None)
    table = {"routes": [{"id": "b", "prefix": "/bench", "urls": ["http://127.0.0.1:1"]}]}
    router.install(RouteTable.parse(table), source="bench", at=0.0)
    heads = Heads(
        router, peer=b"127.0.0.1", forwarded_for=b"x-forwarded-for: 127.0.0.1\r\n", max_body=100
    )
    headers = [(b"Host", b"127.0.0.1:8080"), (b"User-Agent", b"wrk"), (b"Accept", b"*/*")]
    urls = [b"/bench/item/%d?n=%d" % (i, i) for i in range(int(argv[0]))]
    prepare = heads.prepare
    for url in urls:
        prepare(b"GET", url, headers, False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
