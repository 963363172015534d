"""One admin view out of every worker's: Prometheus text summed, JSON documents merged.

Why not prometheus-client's multiprocess mode: it shares ``Counter`` and
``Histogram`` *objects* through memory-mapped files, one file per process and
metric, and the gateway counts in plain ints that a collector turns into
metric families at scrape time (a Prometheus object per request would cost
more than proxying it). Its gauges also need a mode per metric, and a dead
worker's files must be cleaned by hand. Asking each worker for its own
``/metrics`` over a private Unix socket at scrape time and summing the
samples costs the data plane nothing, keeps each worker's code as it was,
and gives the same sums (counters, histogram buckets, sums and counts, and
gauges such as open connections, add up across processes).

The JSON merge follows one rule per kind of value, so that fields added later
merge sensibly without a change here:

- counters (names in :data:`SUMMED`, and every number inside ``failures``)
  are summed; ``MAXED`` numbers (times left, rates, the latest time
  something happened) take the largest and
  ``MINNED`` the smallest;
- ``null`` defers to the other workers' values (a table rejected by one
  worker and not yet read by the other shows the rejection);
- booleans are true when true in any worker;
- lists of objects with a ``name`` or ``key`` are merged by it; lists of
  strings are united;
- any other value is kept when the workers agree, else becomes
  ``{value: number of workers}`` (a breaker ``OPEN`` in one worker and
  ``CLOSED`` in another reads ``{"CLOSED": 1, "OPEN": 1}``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

__all__ = ["MAXED", "MINNED", "SUMMED", "merge_documents", "merge_metrics"]

SUMMED = frozenset(
    {
        "outstanding", "requests", "failures", "ejections", "ejected_total",
        "buffered_calls", "failed_buffered_calls", "half_open_permits_used",
        "successful_calls", "failed_calls", "not_permitted_calls", "opened",
        "balance", "retries", "exhausted", "open", "idle", "connects", "reuses",
        "connections", "active", "applied", "rejected", "dependency_failures", "probes",
    }
)  # fmt: skip
MAXED = frozenset(
    {
        "ejected_for",
        "consecutive_failures",
        "retry_after",
        "wait_duration_in_open_state",
        "preserved",
        "failure_rate",
        "last_sync",
        "rev",
        "at",
        "installed_at",
    }
)
MINNED = frozenset({"eligible"})

#: Samples that are not amounts: the earliest start, the largest limit, a constant 1.
_SAMPLE_MIN = frozenset({"process_start_time_seconds"})
_SAMPLE_MAX = frozenset({"process_max_fds", "python_info"})


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def merge_metrics(texts: Sequence[tuple[str, str]], *, per_worker: bool = False) -> bytes:
    """Prometheus text of ``(worker, text)`` pairs, as one scrape.

    Samples with the same name and labels are summed (the process's CPU
    seconds and memory too: the whole gateway's), but for the earliest
    ``process_start_time_seconds`` and the largest ``process_max_fds``; with
    ``per_worker`` each keeps its own value with a ``worker`` label instead.
    """
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for worker, text in texts:
        for family in text_string_to_metric_families(text):
            into = families.get(family.name)
            if into is None:
                into = families[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
                values[family.name] = {}
            samples = values[family.name]
            for sample in family.samples:
                labels = dict(sample.labels)
                if per_worker:
                    labels["worker"] = worker
                key = (sample.name, tuple(sorted(labels.items())))
                seen = samples.get(key)
                if seen is None:
                    samples[key] = sample.value
                elif sample.name in _SAMPLE_MIN:
                    samples[key] = min(seen, sample.value)
                elif sample.name in _SAMPLE_MAX:
                    samples[key] = max(seen, sample.value)
                else:
                    samples[key] = seen + sample.value
    for name, family in families.items():
        family.samples = [
            Sample(sample_name, dict(labels), value, None, None)
            for (sample_name, labels), value in values[name].items()
        ]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(list(families.values())))
    return generate_latest(registry)


def merge_documents(docs: Sequence[Any], key: str | None = None) -> Any:
    """The workers' ``docs`` (same shape) merged by the rules of the module doc."""
    # A worker with nothing to say (null: no rejection yet) defers to the others.
    docs = [d for d in docs if d is not None]
    if not docs:
        return None
    first = docs[0]
    if isinstance(first, dict) and all(isinstance(d, dict) for d in docs):
        out: dict[str, Any] = {}
        names = _ordered(k for d in docs for k in d)
        for name in names:
            present = [d[name] for d in docs if name in d]
            if name == "failures" and all(isinstance(v, dict) for v in present):
                out[name] = _sum_all(present)
            else:
                out[name] = merge_documents(present, name)
        return out
    if isinstance(first, list) and all(isinstance(d, list) for d in docs):
        return _merge_lists(docs)
    if all(isinstance(d, bool) for d in docs):
        return any(docs)
    if all(isinstance(d, int | float) and not isinstance(d, bool) for d in docs):
        if key in SUMMED:
            return sum(docs)
        if key in MAXED:
            return max(docs)
        if key in MINNED:
            return min(docs)
    return _agreed(docs)


def _merge_lists(lists: Sequence[list[Any]]) -> Any:
    items = [item for lst in lists for item in lst]
    if not items:
        return []
    if all(isinstance(i, str) for i in items):
        return sorted(set(items))
    if all(isinstance(i, dict) for i in items):
        ident = (
            "name"
            if all("name" in i for i in items)
            else "key"
            if all("key" in i for i in items)
            else None
        )
        if ident is not None:
            groups: dict[Any, list[Any]] = {}
            for item in items:
                groups.setdefault(_hashable(item[ident]), []).append(item)
            return [merge_documents(group) for group in groups.values()]
    return _agreed(lists)


def _agreed(values: Sequence[Any]) -> Any:
    distinct: dict[Any, int] = {}
    for value in values:
        h = _hashable(value)
        distinct[h] = distinct.get(h, 0) + 1
    if len(distinct) == 1:
        return values[0]
    return {str(v): n for v, n in distinct.items()}


def _sum_all(dicts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v if isinstance(v, int | float) else v
    return out


def _ordered(names: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(names))


def _hashable(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    return value
