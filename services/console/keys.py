"""The typed keys of the console's application: its hub, sources, audit trail and calls.

Set by the service's cleanup context (:func:`services.console.service.sources_ctx`)
before any request is served; a source whose URL was not given is absent.
"""

from __future__ import annotations

from aiohttp import web

from core.service.calls import Calls
from services.console.audit import Audit
from services.console.configs import Configs
from services.console.hub import Hub
from services.console.instances import Instances
from services.console.streams import Streams
from services.console.traffic import Traffic

__all__ = ["AUDIT", "CONFIGS", "HUB", "INSTANCES", "OWNER_CALLS", "POLLED", "STREAMS", "Polled"]

HUB = web.AppKey("console_hub", Hub)
INSTANCES = web.AppKey("console_instances", Instances)
CONFIGS = web.AppKey("console_configs", Configs)
AUDIT = web.AppKey("console_audit", Audit)
#: Calls to the services that own dead letters, by name (the user's token relayed).
OWNER_CALLS = web.AppKey("console_calls", Calls)
STREAMS = web.AppKey("console_streams", Streams)
Polled = Instances | Traffic | Streams
#: The sources read on a timer while watched (configsvc's is pushed only).
POLLED: web.AppKey[list[Polled]] = web.AppKey("console_polled")
