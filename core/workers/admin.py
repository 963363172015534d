"""The parent's admin application: one view of every worker, asked over their Unix sockets.

Each worker serves its own admin application on a private Unix socket (in
the parent's temporary directory, mode 0700). The parent's handlers ask every
ready worker at once and merge the answers (:mod:`core.workers.merge`):

- ``GET /metrics``: the sum of the workers' samples, plus the parent's own
  (``gateway_workers``, ``gateway_worker_restarts_total``,
  ``gateway_worker_reloads_total``, and its ``process_*`` series added to
  theirs: the whole gateway's CPU and memory); ``?per_worker=1`` keeps one
  series per worker with a ``worker`` label instead;
- ``GET /upstreams``, ``GET /routes``: the workers' documents merged;
  ``?per_worker=1`` lists each worker's own;
- ``GET /health``: ``UP`` when every worker is ready and says ``UP``; 503
  when no worker is ready;
- ``GET /health/live``: 200 while the parent answers;
- ``GET /health/ready``: 200 when every configured worker is ready and
  answers its own ``/health/ready`` with 200; else 503 with each worker's
  answer (``failing`` names the checks that fail in any, ``checks`` shows a
  failing worker's detail of each, else one worker's);
- ``GET /workers``: slots, pids, states, restarts and reloads.

A worker that does not answer within a second is left out of the merge and
named under ``unanswered``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from prometheus_client.exposition import generate_latest

from core.http import json_response, live
from core.metrics import new_registry
from core.proxy import openapi
from core.workers.merge import merge_documents, merge_metrics
from core.workers.supervisor import Supervisor, Worker

__all__ = ["SUPERVISOR", "build_admin"]

SUPERVISOR = web.AppKey("supervisor", Supervisor)
PROCESS = web.AppKey("process", CollectorRegistry)

_TIMEOUT = aiohttp.ClientTimeout(total=1.0)


async def _ask(worker: Worker, path: str) -> tuple[int, str]:
    connector = aiohttp.UnixConnector(path=worker.admin)
    async with (
        aiohttp.ClientSession(connector=connector, timeout=_TIMEOUT) as session,
        session.get(f"http://worker{path}") as response,
    ):
        return response.status, await response.text()


async def _ask_all(
    supervisor: Supervisor, path: str
) -> tuple[list[tuple[Worker, int, str]], list[dict[str, Any]]]:
    workers = supervisor.ready_workers()
    results = await asyncio.gather(*(_ask(w, path) for w in workers), return_exceptions=True)
    answered: list[tuple[Worker, int, str]] = []
    unanswered: list[dict[str, Any]] = []
    for worker, result in zip(workers, results, strict=True):
        if isinstance(result, BaseException):
            unanswered.append({"slot": worker.slot, "pid": worker.pid, "error": repr(result)})
        else:
            answered.append((worker, *result))
    return answered, unanswered


def _per_worker(request: web.Request) -> bool:
    return request.query.get("per_worker", "") not in ("", "0", "false")


async def metrics(request: web.Request) -> web.Response:
    supervisor = request.app[SUPERVISOR]
    answered, _ = await _ask_all(supervisor, "/metrics")
    texts = [(str(w.slot), text) for w, status, text in answered if status == 200]
    texts.append(("parent", _own_metrics(supervisor)))
    texts.append(("parent", generate_latest(request.app[PROCESS]).decode()))
    body = merge_metrics(texts, per_worker=_per_worker(request))
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _own_metrics(supervisor: Supervisor) -> str:
    return (
        "# HELP gateway_workers worker processes ready\n"
        "# TYPE gateway_workers gauge\n"
        f"gateway_workers {len(supervisor.ready_workers())}\n"
        "# HELP gateway_worker_restarts workers started again after a crash\n"
        "# TYPE gateway_worker_restarts counter\n"
        f"gateway_worker_restarts_total {supervisor.restarts}\n"
        "# HELP gateway_worker_reloads reloads done (every worker replaced)\n"
        "# TYPE gateway_worker_reloads counter\n"
        f"gateway_worker_reloads_total {supervisor.reloads}\n"
    )


async def _merged_json(request: web.Request, path: str) -> web.Response:
    supervisor = request.app[SUPERVISOR]
    answered, unanswered = await _ask_all(supervisor, path)
    docs = [(w, json.loads(text)) for w, status, text in answered if status == 200]
    if _per_worker(request):
        out: dict[str, Any] = {
            "workers": [{"slot": w.slot, "pid": w.pid, **doc} for w, doc in docs],
        }
    else:
        merged = merge_documents([doc for _, doc in docs]) or {}
        out = {"workers": len(docs), **merged}
    if unanswered:
        out["unanswered"] = unanswered
    return json_response(out)


async def upstreams(request: web.Request) -> web.Response:
    return await _merged_json(request, "/upstreams")


async def routes(request: web.Request) -> web.Response:
    return await _merged_json(request, "/routes")


async def health(request: web.Request) -> web.Response:
    supervisor = request.app[SUPERVISOR]
    answered, unanswered = await _ask_all(supervisor, "/health")
    statuses = []
    workers = []
    for worker, _, text in answered:
        doc = json.loads(text)
        statuses.append(doc.get("status", "UNKNOWN"))
        workers.append({"slot": worker.slot, "pid": worker.pid, **doc})
    every = len(supervisor.slots)
    up = bool(statuses) and all(s == "UP" for s in statuses) and len(statuses) == every
    # The workers' own fields (registry, routes, proxy) merged, as one process shows them.
    body: dict[str, Any] = (
        merge_documents([{k: v for k, v in w.items() if k not in ("slot", "pid")} for w in workers])
        or {}
    )
    body.update(
        {
            "status": "UP" if up else "DEGRADED" if statuses else "DOWN",
            "workers_ready": len(statuses),
            "workers_configured": every,
            "workers": workers,
        }
    )
    if unanswered:
        body["unanswered"] = unanswered
    return json_response(body, status=200 if statuses else 503)


async def ready(request: web.Request) -> web.Response:
    supervisor = request.app[SUPERVISOR]
    answered, unanswered = await _ask_all(supervisor, "/health/ready")
    workers = []
    failing: set[str] = set()
    checks: dict[str, Any] = {}
    for worker, status, text in answered:
        doc = json.loads(text)
        failing.update(doc.get("failing", ()))
        workers.append({"slot": worker.slot, "pid": worker.pid, "ready": status == 200, **doc})
        for name, check in doc.get("checks", {}).items():
            # One worker's failing detail says more than another's success.
            if name not in checks or check.get("status") != "UP":
                checks[name] = check
    every = len(supervisor.slots)
    up = len(workers) == every and all(w["ready"] for w in workers)
    if len(workers) < every:
        failing.add("workers")
    body: dict[str, Any] = {"status": "UP" if up else "DOWN"}
    if not up:
        body["failing"] = sorted(failing)
    body["checks"] = checks
    body.update({"workers_ready": len(workers), "workers_configured": every, "workers": workers})
    if unanswered:
        body["unanswered"] = unanswered
    return json_response(body, status=200 if up else 503)


async def workers(request: web.Request) -> web.Response:
    return json_response(request.app[SUPERVISOR].describe())


def build_admin(
    supervisor: Supervisor, middlewares: list[Any], *, health_path: str = "/-/health"
) -> web.Application:
    """The parent's admin application over ``supervisor``'s workers.

    ``health_path``: the workers' traffic health path (``--health-path``), for
    the traffic port's document.
    """
    app = web.Application(middlewares=middlewares)
    app[SUPERVISOR] = supervisor
    app[PROCESS] = new_registry()  # the parent's own process_* series, added to the workers'
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/upstreams", upstreams)
    app.router.add_get("/routes", routes)
    app.router.add_get("/health", health)
    app.router.add_get("/health/live", live)
    app.router.add_get("/health/ready", ready)
    app.router.add_get("/workers", workers)
    app.router.add_get("/openapi.json", openapi.build(workers=True).handle)
    app.router.add_get("/openapi-traffic.json", openapi.traffic(health_path).handle)
    return app
