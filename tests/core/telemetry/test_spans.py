"""The recorder (core/telemetry/spans.py): bounded, atomic, wakes its exporter per batch."""

from __future__ import annotations

import threading

import pytest

from core.telemetry.spans import Recorder, Span, active, install


def _span(n: int) -> Span:
    return Span("internal", f"s{n}", "1" * 32, f"{n + 1:016x}", None, n, n + 1, {})


def test_records_wait_in_order_and_past_the_limit_are_dropped_and_counted() -> None:
    woken: list[int] = []
    recorder = Recorder(limit=5, batch=3, wake=lambda: woken.append(len(recorder.pending)))
    for n in range(8):
        recorder.record(_span(n))
    assert woken == [3]  # once, when a batch was waiting
    assert recorder.dropped == 3
    first = recorder.take(3)
    assert [record[0](record).name for record in first] == ["s0", "s1", "s2"]
    assert [record[0](record).name for record in recorder.take(10)] == ["s3", "s4"]
    assert recorder.take(10) == []


def test_threads_record_concurrently_without_losing_or_duplicating() -> None:
    recorder = Recorder(limit=100_000, batch=100_000)

    def write(base: int) -> None:
        for n in range(5000):
            recorder.add((None, base + n))

    threads = [threading.Thread(target=write, args=(i * 10_000,)) for i in range(4)]
    taken: list[int] = []
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads) or recorder.pending:
        taken.extend(record[1] for record in recorder.take(1000))
    assert sorted(taken) == [i * 10_000 + n for i in range(4) for n in range(5000)]


def test_a_batch_larger_than_the_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="batch <= limit"):
        Recorder(limit=10, batch=11)


def test_the_process_recorder_is_none_until_installed() -> None:
    assert active() is None
    recorder = Recorder()
    install(recorder)
    try:
        assert active() is recorder
    finally:
        install(None)
    assert active() is None
