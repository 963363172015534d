"""py-eureka-client (PyPI, not ours) in its own process, driven by the test through stdin.

``python -m tests.eureka_py_client EUREKA_URL APP PORT`` registers APP at
127.0.0.1:PORT with a 1 s renewal interval and a 3 s lease, prints
``registered``, then for each line read from stdin:

- ``call APP PATH``: ``do_service`` (the client's own discovery and load
  balancing) and print the answer's body on one line (``error: ...`` on failure);
- ``stop``: deregister as the client does at shutdown, print ``stopped`` and exit.
"""

from __future__ import annotations

import asyncio
import sys

import py_eureka_client.eureka_client as eureka_client


async def main(url: str, app: str, port: int) -> int:
    client = await eureka_client.init_async(
        eureka_server=url,
        app_name=app,
        instance_host="127.0.0.1",
        instance_ip="127.0.0.1",
        instance_port=port,
        renewal_interval_in_secs=1,
        duration_in_secs=3,
        metadata={"language": "python"},
    )
    print("registered", flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).split()
        if not line or line[0] == "stop":
            await client.stop()
            print("stopped", flush=True)
            return 0
        if line[0] == "call":
            try:
                body = await client.do_service(line[1], line[2], timeout=3)
                print(str(body).replace("\n", " "), flush=True)
            except Exception as exc:
                print(f"error: {type(exc).__name__}: {exc}", flush=True)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]))))
