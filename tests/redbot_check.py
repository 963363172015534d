"""REDbot over many URLs at once: ``python -m tests.redbot_check URL...`` prints JSON.

REDbot (an HTTP linter, from PyPI) fetches each URL and probes it further
(conditional requests, ranges, compression, HEAD) and grades what it sees:
GOOD, INFO, WARN or BAD. Its command line checks one URL a run, about 5 s
each on a busy machine; this runs them all in one event loop (REDbot's own,
thor), so it lives in its own process. Output: ``{url: {"status": N,
"notes": [{"id", "level", "summary"}...]}}``, subnotes flattened.
"""

from __future__ import annotations

import json
import sys
from configparser import ConfigParser
from typing import Any

import thor
from redbot.resource import HttpResource


def _flatten(note: Any) -> list[dict[str, str]]:
    out = [{"id": type(note).__name__, "level": note.level.name, "summary": note.summary}]
    for sub in note.subnotes or ():
        out.extend(_flatten(sub))
    return out


def main(urls: list[str]) -> int:
    parser = ConfigParser()
    # The URLs are this machine's own components: REDbot refuses loopback unless told.
    parser.read_dict({"redbot": {"enable_local_access": "True"}})
    config = parser["redbot"]
    pending = set(urls)
    resources: dict[str, HttpResource] = {}
    for url in urls:
        resource = HttpResource(config)
        resource.set_request(url)
        resources[url] = resource

        @thor.events.on(resource)
        def check_done(url: str = url) -> None:
            pending.discard(url)
            if not pending:
                thor.stop()

    for resource in resources.values():
        resource.check()
    thor.schedule(120, thor.stop)  # never hang the suite
    thor.run()
    report = {}
    for url, resource in resources.items():
        notes = [n for note in resource.response.notes for n in _flatten(note)]
        report[url] = {"status": resource.response.status_code, "notes": notes,
                       "done": url not in pending}  # fmt: skip
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
