"""An upstream service as its own process, for gateway tests that kill one.

``python -m tests.upstream_server --port N --name NAME [--delay SECONDS]``
answers every path with ``{"instance": NAME, "path": ...}`` after ``delay``
seconds (so that requests are in flight when it is killed), and ``/health``
at once.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from aiohttp import web


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.upstream_server")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args(argv)

    async def answer(request: web.Request) -> web.Response:
        if args.delay:
            await asyncio.sleep(args.delay)
        return web.json_response({"instance": args.name, "path": request.path_qs})

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "UP"})

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_route("*", "/{tail:.*}", answer)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
