"""Steady load through the gateway, every request's outcome recorded, for fault benchmarks.

:class:`Traffic` sends requests at a constant rate (open loop: request *i*
is due at *i* / rate seconds whatever the answers do, so a stalled system
does not slow the load down and hide its outage) from one aiohttp session:
idempotent ``GET``s cycling over :class:`Target`\\ s and, when asked,
``POST /billing/bills``. Each request ends as an :class:`Outcome`: its send
and answer times (monotonic), its status, the instance that answered
(``X-Instance-ID``) and, when it failed, how:

- ``refused``: the connection could not be made (nothing listened);
- ``reset``: the connection broke before a whole answer came back;
- ``5xx``: an answer with a 5xx status;
- ``timeout``: no whole answer within the request's timeout;
- ``other``: any other unexpected status (a 4xx).

:func:`outage` and :func:`first_served` turn the outcomes into the figures
of a case: from when requests fail to the moment after which they all
succeed, and when an instance answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import aiohttp

__all__ = ["KINDS", "Outcome", "Target", "Traffic", "first_served", "outage", "tally"]

#: How a request can fail, in the order the reports print them.
KINDS = ("refused", "reset", "5xx", "timeout", "other")


@dataclasses.dataclass(frozen=True)
class Target:
    """One idempotent ``GET`` of the mix: ``service`` names what answers it."""

    service: str
    path: str
    auth: bool = False


@dataclasses.dataclass
class Outcome:
    what: str  # the target's service, or "bill" for a POST /billing/bills
    sent: float
    done: float
    status: int  # 0: no answer
    failure: str  # "" when it succeeded, else one of KINDS
    instance: str
    bill: int | None = None  # the id of an accepted bill

    @property
    def ok(self) -> bool:
        return not self.failure


class Traffic:
    """Requests through ``gateway`` while the ``async with`` block runs.

    ``get_rate`` GETs a second over ``targets`` in turn, and ``bill_rate``
    bills a second (one unit of ``product`` for customer 1; 0: none), each
    with ``timeout`` seconds to be answered whole. Leaving the block stops
    sending and waits for the requests in flight (at most ``timeout``).
    """

    def __init__(
        self,
        gateway: str,
        headers: dict[str, str],
        targets: Sequence[Target],
        *,
        get_rate: float,
        bill_rate: float = 0.0,
        product: int = 0,
        timeout: float = 5.0,
        connections: int = 64,
    ) -> None:
        self.gateway = gateway
        self.headers = headers
        self.targets = tuple(targets)
        self.get_rate = get_rate
        self.bill_rate = bill_rate
        self.bill_body = json.dumps(
            {"customer_id": 1, "lines": [{"product_id": product, "quantity": 1}]}
        ).encode()
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.connections = connections
        self.outcomes: list[Outcome] = []
        self._session: aiohttp.ClientSession | None = None
        self._loops: list[asyncio.Task[None]] = []
        self._inflight: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Traffic:
        connector = aiohttp.TCPConnector(limit=self.connections)
        self._session = aiohttp.ClientSession(connector=connector, timeout=self.timeout)
        self._loops.append(asyncio.ensure_future(self._paced(self.get_rate, self._get)))
        if self.bill_rate > 0:
            self._loops.append(asyncio.ensure_future(self._paced(self.bill_rate, self._bill)))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        if self._inflight:
            await asyncio.wait(self._inflight)
        assert self._session is not None
        await self._session.close()

    async def _paced(self, rate: float, send: Any) -> None:
        start = time.monotonic()
        for n in itertools.count():
            delay = start + n / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.ensure_future(send(n))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def _get(self, n: int) -> None:
        target = self.targets[n % len(self.targets)]
        headers = self.headers if target.auth else {}
        await self._request(target.service, "GET", target.path, headers, None, 200)

    async def _bill(self, n: int) -> None:
        headers = {**self.headers, "Content-Type": "application/json"}
        await self._request("bill", "POST", "/billing/bills", headers, self.bill_body, 202)

    async def _request(
        self,
        what: str,
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytes | None,
        expected: int,
    ) -> None:
        assert self._session is not None
        sent = time.monotonic()
        status, failure, instance, bill = 0, "", "", None
        try:
            async with self._session.request(
                method, self.gateway + path, data=body, headers=headers
            ) as response:
                raw = await response.read()
                status = response.status
                instance = response.headers.get("X-Instance-ID", "")
                if status >= 500:
                    failure = "5xx"
                elif status != expected:
                    failure = "other"
                elif what == "bill":
                    bill = int(json.loads(raw)["id"])
        except TimeoutError:
            failure = "timeout"
        except aiohttp.ClientConnectorError:
            failure = "refused"
        except aiohttp.ClientError:
            failure = "reset"
        self.outcomes.append(Outcome(what, sent, time.monotonic(), status, failure, instance, bill))


def tally(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """``sent``, ``failed`` and failures by kind (:data:`KINDS`), and the statuses of the failed."""
    kinds = Counter(o.failure for o in outcomes if not o.ok)
    statuses = Counter(str(o.status) for o in outcomes if not o.ok and o.status)
    return {
        "sent": len(outcomes),
        "failed": sum(kinds.values()),
        "by_kind": {kind: kinds.get(kind, 0) for kind in KINDS},
        "statuses": dict(sorted(statuses.items())),
    }


def outage(outcomes: Sequence[Outcome], since: float) -> tuple[float, float] | None:
    """From the first failed request sent after ``since`` to the moment after which all succeed.

    The end is the send time of the first request that succeeded after the
    last failed one (every request sent from then on succeeded). ``None``
    when none failed.
    """
    failed = [o for o in outcomes if not o.ok and o.done >= since]
    if not failed:
        return None
    first = min(o.sent for o in failed)
    last = max(o.sent for o in failed)
    after = [o.sent for o in outcomes if o.ok and o.sent > last]
    with contextlib.suppress(ValueError):
        return first, min(after)
    return first, float("inf")


def first_served(outcomes: Sequence[Outcome], instance: str, since: float) -> float | None:
    """When the first request sent after ``since`` that ``instance`` answered successfully was sent."""
    sends = [o.sent for o in outcomes if o.ok and o.instance == instance and o.sent > since]
    return min(sends) if sends else None
