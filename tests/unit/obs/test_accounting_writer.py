"""The accounting process's catch-up: every outbox event once, in order, across restarts, in bounded
batches. Real LMDB and a real log file; no processes."""

from __future__ import annotations

import json
from pathlib import Path

from mta_engine.obs.accounting import AccountingLog
from mta_engine.proc import accounting
from mta_engine.spool.store import Spool


def append(spool: Spool, n: int, start: int) -> None:
    with spool.write() as txn:
        spool.events_append(txn, [{"type": "Delivery", "recipient": f"r{start + i}@d.test"} for i in range(n)])


def logged(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def test_catch_up_writes_every_event_once_across_restarts_in_bounded_batches(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(accounting, "BATCH_EVENTS", 7)
    spool = Spool(tmp_path / "spool", map_size_mb=64)
    path = tmp_path / "acct.jsonl"
    for k in range(5):
        append(spool, 4, 4 * k)  # 5 outbox records of 4 events
    acct = AccountingLog(str(path))
    assert accounting.catch_up(spool, acct) == 20
    assert accounting.catch_up(spool, acct) == 0  # nothing new: nothing written
    acct.close()
    append(spool, 3, 20)
    acct = AccountingLog(str(path))  # a restarted process learns its position from the file
    assert accounting.catch_up(spool, acct) == 3
    acct.close()
    lines = logged(path)
    assert [e["event_seq"] for e in lines] == list(range(1, 24))
    assert [e["recipient"] for e in lines] == [f"r{i}@d.test" for i in range(23)]
    spool.close()


def test_events_after_with_a_limit_stops_at_whole_outbox_records(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", map_size_mb=64)
    for k in range(3):
        append(spool, 4, 4 * k)
    with spool.read() as txn:
        assert [e["event_seq"] for e in spool.events_after(txn, 0, limit=5)] == list(range(1, 9))
        assert [e["event_seq"] for e in spool.events_after(txn, 6, limit=1)] == [7, 8]
        assert len(spool.events_after(txn, 0)) == 12
    spool.close()


def test_a_batch_longer_than_one_write_chunk_is_written_whole_and_in_order(tmp_path: Path, monkeypatch) -> None:
    from mta_engine.obs import accounting as acct_mod

    monkeypatch.setattr(acct_mod, "WRITE_LINES", 4)
    path = tmp_path / "acct.jsonl"
    acct = AccountingLog(str(path))
    events = [{"type": "Delivery", "event_seq": i, "recipient": f"r{i}@d.test", "mx": None} for i in range(1, 11)]
    assert acct.write(events) == 10
    assert acct.write(events[:5]) == 10  # already in the file: skipped
    acct.close()
    lines = logged(path)
    assert [e["event_seq"] for e in lines] == list(range(1, 11))
    assert all("mx" not in e for e in lines)  # None fields are left out
    assert path.read_bytes().endswith(b"}\n")
