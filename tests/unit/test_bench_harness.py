"""The bench harness: its accounting-log reader (counting only while the clock runs, parsing after,
gives what parsing every poll gives, and says so when it cannot), and where quick runs write."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from bench.run import LogTail


def _lines(events: list[dict[str, object]]) -> bytes:
    return b"".join(orjson.dumps(e) + b"\n" for e in events)


def test_lazy_tail_counts_while_running_and_parses_at_the_end(tmp_path: Path) -> None:
    log = tmp_path / "accounting.jsonl"
    first = [{"type": "Reception", "timestamp": 1.0, "queue_id": "1"},
             {"type": "Delivery", "timestamp": 2.0, "latency_s": 1.0, "recipient": "a@y.test"},
             {"type": "TransientFailure", "timestamp": 2.5}]
    second = [{"type": "Bounce", "timestamp": 3.0}, {"timestamp": 3.5, "type": "Delivery", "latency_s": 2.5}]
    data = _lines(first) + _lines(second)
    log.write_bytes(data[:len(_lines(first)) + 7])  # a poll may end inside a line
    eager, lazy = LogTail(log), LogTail(log, lazy=True)
    for tail in (eager, lazy):
        tail.poll()
    assert lazy.finals == eager.finals == 1 and lazy.delivery_ts == []
    log.write_bytes(data)
    for tail in (eager, lazy):
        tail.poll()
    assert lazy.finals == 2 and eager.finals == 3  # a line with its keys reordered is not counted...
    with pytest.raises(RuntimeError, match="begin with the type"):
        lazy.finish()  # ...and the final parse says so
    assert lazy.counts == eager.counts == {"Reception": 1, "Delivery": 2, "TransientFailure": 1, "Bounce": 1}
    assert lazy.delivered == 1 and eager.delivered == 2
    assert (lazy.final_ts, lazy.delivery_ts, lazy.latencies, lazy.first_reception) == \
        (eager.final_ts, eager.delivery_ts, eager.latencies, eager.first_reception) == \
        ([2.0, 3.0, 3.5], [2.0, 3.5], [1.0, 2.5], 1.0)


def test_quick_runs_write_beside_the_full_results() -> None:
    """--quick results go to bench/results/quick (ignored by git), never over the full runs'."""
    from bench.run import RESULTS, results_dir

    assert results_dir(False) == RESULTS
    assert results_dir(True) == RESULTS / "quick" and results_dir(True).is_dir()
