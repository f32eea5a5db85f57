"""Recipient transitions in a real LMDB spool: deliver, bounce, defer, expire, return. A recipient in
flight keeps its due entry (the manager holds the lease in memory): the outcome names it (``dkey``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mta_engine.obs.accounting import AccountingLog
from mta_engine.sched.queue import QueueWriter, Result, TickStats
from mta_engine.sched.retry import RetryPolicy
from mta_engine.spool import records
from mta_engine.spool.store import Spool
from tests.unit.sched import fakes

T0 = 1_700_000_000_000


def inject(spool: Spool, n: int, now_ms: int = T0) -> int:
    return fakes.inject(spool, n, now_ms)


def due_items(spool: Spool) -> list[tuple[bytes, int, int]]:
    with spool.read() as txn, txn.cursor(db=spool.dbs["due"]) as cur:
        return [(k, *records.split_due_key(k)[1:]) for k in cur.iternext(values=False)]


def due_keys(spool: Spool) -> dict[int, bytes]:
    """Recipient index -> its due entry (what the manager remembers for a recipient in flight)."""
    return {i: k for k, _, i in due_items(spool)}


def step(spool: Spool, w: QueueWriter, results: list[Result], now_ms: int):
    stats, events = TickStats(), []
    with spool.write() as txn:
        w.apply(txn, results, now_ms, stats, events)
        spool.events_append(txn, events)
    return stats, events


def test_outcomes_move_recipients_to_their_states(spool: Spool) -> None:
    """250 deletes, 550 bounces, 451 defers with a new due time; one event each; message removed at the end."""
    msg = inject(spool, 3)
    w = QueueWriter(spool, retry=RetryPolicy(intervals_s=(60.0,), jitter=0.0), max_age_s=3600.0, lease_s=600.0)
    with spool.write() as txn:
        w.message(txn, msg)
    k = due_keys(spool)
    stats, events = step(spool, w, [Result(msg, 0, 250, "2.0.0", "ok", "data", "site", dkey=k[0]),
                                    Result(msg, 1, 550, "5.1.1", "no", "rcpt", "site", dkey=k[1]),
                                    Result(msg, 2, 451, "4.3.0", "later", "rcpt", "site", dkey=k[2])], T0 + 1000)
    assert [e["type"] for e in events] == ["Delivery", "Bounce", "Suppressed", "TransientFailure"]
    assert (stats.delivered, stats.bounced, stats.deferred) == (1, 1, 1)
    assert spool.stat()["rcpt"] == 1
    ((_, m, i),) = due_items(spool)  # the deferred one, at its retry time; the others' entries are gone
    assert records.split_due_key(due_items(spool)[0][0])[0] == T0 + 1000 + 60_000 and i == 2
    stats, events = step(spool, w, [Result(msg, 2, 250, None, "ok", "data", "site", dkey=due_keys(spool)[2])],
                         T0 + 70_000)
    assert [e["type"] for e in events] == ["Delivery"] and events[0]["attempt"] == 2
    st = spool.stat()
    assert st["rcpt"] == 0 and st["msg"] == 0 and st["body"] == 0 and st["due"] == 0


def test_deferral_past_max_age_expires(spool: Spool) -> None:
    """A transient failure at or after max age is a final Expiration, not another retry."""
    msg = inject(spool, 1)
    w = QueueWriter(spool, retry=RetryPolicy(intervals_s=(60.0,), jitter=0.0), max_age_s=100.0, lease_s=600.0)
    with spool.write() as txn:
        w.message(txn, msg)
    _, events = step(spool, w, [Result(msg, 0, 451, "4.4.1", "down", "connect")], T0 + 100_000)
    assert [e["type"] for e in events] == ["Expiration"]
    assert spool.stat()["rcpt"] == 0


def test_returned_recipient_is_due_now_without_an_attempt(spool: Spool) -> None:
    """Code 0 (worker died or drained) re-queues the recipient now and counts no attempt, logs nothing."""
    msg = inject(spool, 1)
    w = QueueWriter(spool, retry=RetryPolicy(intervals_s=(60.0,), jitter=0.0), max_age_s=3600.0, lease_s=600.0)
    with spool.write() as txn:
        w.message(txn, msg)
    stats, events = step(spool, w, [Result(msg, 0, 0, dkey=due_keys(spool)[0])], T0 + 5)
    assert events == [] and stats.returned == 1
    assert [records.split_due_key(k)[0] for k, *_ in due_items(spool)] == [T0 + 5]  # one entry, due now
    with spool.read() as txn:
        rec = records.Recipient.decode(txn.get(records.rcpt_key(msg, 0), db=spool.dbs["rcpt"]))
    assert rec.attempts == 0


def test_requeue_inflight_after_manager_restart(spool: Spool) -> None:
    """Leases a manager of an older version wrote to the ``inflight`` table are due at once."""
    inject(spool, 2)
    with spool.write() as txn:  # as that version leased them: due entry moved to the expiry, one inflight entry
        for dkey, m, i in due_items(spool):
            txn.delete(dkey, db=spool.dbs["due"])
            txn.put(records.due_key(T0 + 600_000, m, i), b"", db=spool.dbs["due"])
            txn.put(records.rcpt_key(m, i), records.u64(T0 + 600_000), db=spool.dbs["inflight"])
    with spool.write() as txn:
        assert QueueWriter(spool, retry=RetryPolicy(intervals_s=(60.0,), jitter=0.0), max_age_s=3600.0, lease_s=600.0).requeue_inflight(txn, T0 + 9) == 2
    assert [records.split_due_key(k)[0] for k, *_ in due_items(spool)] == [T0 + 9, T0 + 9]
    assert spool.stat()["inflight"] == 0


def test_accounting_log_skips_events_already_written(tmp_path: Path) -> None:
    """Events replayed from the outbox after a crash are not written twice (exactly once)."""
    path = str(tmp_path / "acct.jsonl")
    log = AccountingLog(path)
    log.write([{"type": "Delivery", "event_seq": 1}, {"type": "Delivery", "event_seq": 2}])
    log.close()
    with open(path, "ab") as f:
        f.write(b'{"type": "Deliv')  # a line cut short by a crash
    log = AccountingLog(path)
    assert log.written_seq == 2
    log.write([{"type": "Delivery", "event_seq": 2}, {"type": "Bounce", "event_seq": 3}])
    log.close()
    import json

    with open(path, "rb") as f:
        lines = [json.loads(x) for x in f.read().split(b"\n") if x.startswith(b"{") and x.endswith(b"}")]
    assert [e["event_seq"] for e in lines] == [1, 2, 3]


def test_fast_path_delivery_matches_the_full_path(spool: Spool) -> None:
    """A delivery reported with its due entry removes record and entry, as one without it does."""
    msg = inject(spool, 2)
    w = QueueWriter(spool, retry=RetryPolicy(intervals_s=(60.0,), jitter=0.0), max_age_s=3600.0, lease_s=600.0)
    with spool.write() as txn:
        w.message(txn, msg)
    k = due_keys(spool)
    _, events = step(spool, w, [Result(msg, 0, 250, "2.0.0", "ok", "data", "s", address="r0@y.test", attempts=0,
                                       dkey=k[0]),
                                Result(msg, 1, 250, "2.0.0", "ok", "data", "s", dkey=k[1])], T0 + 5)
    assert [(e["recipient"], e["attempt"]) for e in events] == [("r0@y.test", 1), ("r1@y.test", 1)]
    st = spool.stat()
    assert st["rcpt"] == st["due"] == st["inflight"] == st["msg"] == 0
    _, again = step(spool, w, [Result(msg, 0, 250, address="r0@y.test", dkey=k[0])], T0 + 6)
    assert again == []  # a duplicate report logs nothing


@pytest.mark.parametrize("policy, expected", [("retry", "TransientFailure"), ("delivered", "Delivery")])
def test_unknown_outcome_policy(spool: Spool, policy: str, expected: str) -> None:
    """No reply after the final dot: retried (possible duplicate) or counted delivered, as configured."""
    msg = inject(spool, 1)
    w = QueueWriter(spool, retry=RetryPolicy(intervals_s=(60.0,), jitter=0.0), max_age_s=3600.0, lease_s=600.0,
                    unknown_policy=policy)
    with spool.write() as txn:
        w.message(txn, msg)
    _, events = step(spool, w, [Result(msg, 0, 451, "4.4.2", "lost after the dot", "data", unknown=True,
                                       dkey=due_keys(spool)[0])], T0 + 5)
    assert [e["type"] for e in events] == [expected] and events[0]["unknown"] is True
