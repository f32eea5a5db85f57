"""Deliveries that share one reply are applied and logged as one grouped outbox event, and every
reader still sees one event (one log line) per recipient. Real LMDB and a real log file; the
manager runs with a fake worker link."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import orjson

from mta_engine.delivery.outcome import grouped
from mta_engine.obs.accounting import AccountingLog
from mta_engine.proc.webhooks import outbox_page
from mta_engine.sched.queue import Delivered, QueueWriter, Result, TickStats
from mta_engine.sched.retry import RetryPolicy
from mta_engine.spool import records
from mta_engine.spool.store import Spool
from tests.unit.sched import fakes

T0 = 1_700_000_000_000


def inject(spool: Spool, n: int, now_ms: int = T0) -> int:
    return fakes.inject(spool, n, now_ms)


def leased(spool: Spool, w: QueueWriter, msg: int) -> dict[int, bytes]:
    """The recipients' due entries (what the manager remembers while they are in flight)."""
    with spool.write() as txn, txn.cursor(db=spool.dbs["due"]) as cur:
        keys = {records.split_due_key(k)[2]: k for k in cur.iternext(values=False)}
        w.message(txn, msg)
    return keys


def writer(spool: Spool) -> QueueWriter:
    return QueueWriter(spool, retry=RetryPolicy(intervals_s=(60.0,), jitter=0.0), max_age_s=3600.0, lease_s=600.0)


def group(msg: int, dkeys: dict[int, bytes], idxs: list[int], attempts: int = 0) -> Delivered:
    return Delivered(msg, [(i, f"r{i}@y.test", attempts, dkeys[i]) for i in idxs], 250, "2.0.0", "ok", "payload",
                     "site", "mx.y.test", "127.0.0.1", {"version": "TLSv1.3", "cipher": "X", "verified": False})


def test_a_group_is_one_outbox_event_and_reads_back_as_the_full_path_events(spool: Spool) -> None:
    msg = inject(spool, 4)
    w = writer(spool)
    dkeys = leased(spool, w, msg)
    stats, events = TickStats(), []
    with spool.write() as txn:
        w.apply_delivered(txn, [group(msg, dkeys, [0, 1, 2])], T0 + 5, stats, events)
        spool.events_append(txn, events)
    assert len(events) == 1 and len(events[0][records.GROUP_MEMBERS]) == 3
    assert stats.delivered == 3 and stats.sites == {"site": [3, 0, 0]}
    with spool.read() as txn:
        expanded = [e for e in spool.events_after(txn, 0) if e["type"] == "Delivery"]  # after ingest's Reception
        assert spool.events_after(txn, 2)[0]["event_seq"] == 3  # a reader may stop inside a group
    assert [e["event_seq"] for e in expanded] == [2, 3, 4]
    # the same outcomes through the per-recipient path give the same events, key order included
    other = Spool(spool.path.parent / "other", map_size_mb=64)
    msg2 = inject(other, 4)
    w2 = writer(other)
    dkeys2 = leased(other, w2, msg2)
    full: list[dict] = []
    with other.write() as txn:
        w2.apply(txn, [Result(msg2, i, 250, "2.0.0", "ok", "payload", "site", "mx.y.test", "127.0.0.1",
                              tls={"version": "TLSv1.3", "cipher": "X", "verified": False}, dkey=dkeys2[i])
                       for i in range(3)],
                 T0 + 5, TickStats(), full)
        other.events_append(txn, full)
    other.close()
    assert msg2 == msg
    assert [list(e.items()) for e in expanded] == [list(e.items()) for e in full]
    st = spool.stat()
    assert (st["rcpt"], st["due"], st["inflight"], st["msg"]) == (1, 1, 0, 1)  # r3 still in flight


def test_a_single_delivery_is_a_plain_event_and_duplicates_log_nothing(spool: Spool) -> None:
    msg = inject(spool, 2)
    w = writer(spool)
    dkeys = leased(spool, w, msg)
    events: list[dict] = []
    with spool.write() as txn:
        w.apply_delivered(txn, [group(msg, dkeys, [0], attempts=2)], T0 + 5, TickStats(), events)
    assert records.GROUP_MEMBERS not in events[0]
    assert (events[0]["queue_id"], events[0]["recipient"], events[0]["attempt"]) == (f"{msg:016x}.0", "r0@y.test", 3)
    again: list[dict] = []
    stats = TickStats()
    with spool.write() as txn:
        w.apply_delivered(txn, [group(msg, dkeys, [0, 1])], T0 + 6, stats, again)
    assert stats.delivered == 1 and again[0]["recipient"] == "r1@y.test"  # r0 was final already
    st = spool.stat()
    assert st["rcpt"] == st["msg"] == st["body"] == st["due"] == st["inflight"] == 0


def test_log_lines_of_a_group_are_the_json_of_its_expanded_events(tmp_path: Path) -> None:
    ev = {"type": "Delivery", "timestamp": 1.5, "queue_id": "000000000000002a", "sender": "s@x.test",
          "campaign": "c", "tenant": None, "site": "site", "mx": None, "code": 250, "response": "ok \"quoted\"",
          "latency_s": 0.25, "event_seq": 10,
          records.GROUP_MEMBERS: [[0, "a@y.test", 1], [7, "b\u00e9@y.test", 2], [9, "c@y.test", 1]]}
    path = tmp_path / "acct.jsonl"
    log = AccountingLog(str(path))
    log.write([{"type": "Delivery", "event_seq": i} for i in range(1, 11)])  # 10 is already written
    assert log.write([ev]) == 12
    log.close()
    lines = path.read_bytes().splitlines()[10:]
    want = [{k: v for k, v in e.items() if v is not None} for e in records.expand_group(ev)][1:]
    assert lines == [orjson.dumps(e) for e in want]
    assert [json.loads(x)["queue_id"] for x in lines] == ["000000000000002a.7", "000000000000002a.9"]


def test_webhook_pages_expand_groups(spool: Spool) -> None:
    with spool.write() as txn:
        spool.events_append(txn, [{"type": "Bounce", "timestamp": 1.0},
                                  {"type": "Delivery", "timestamp": 1.0, "queue_id": "0000000000000001",
                                   records.GROUP_MEMBERS: [[0, "a@y.test", 1], [1, "b@y.test", 1]]},
                                  {"type": "Bounce", "timestamp": 1.0}])
    page = outbox_page(spool, 2, 100)
    assert [(e["event_seq"], e["type"], e.get("recipient")) for e in page] == [
        (3, "Delivery", "b@y.test"), (4, "Bounce", None)]


def test_manager_groups_consecutive_deliveries_with_the_same_reply(tmp_path: Path) -> None:
    mgr, spool, clock, link, acct = fakes.connected_manager(tmp_path)
    msg = inject(spool, 6, int(clock.now * 1000))
    asyncio.run(mgr.tick())
    (job,) = link.jobs()
    replies = [[250, "2.0.0", "ok"], [250, "2.0.0", "ok"], [250, "2.0.0", "ok"], [550, "5.1.1", "no such user"],
               [250, "2.0.0", "ok"], [250, "2.0.0", "queued 2"]]
    mgr.on_frame(link, {"t": "outcomes", "items": [  # type: ignore[arg-type]
        {"id": job["id"], "results": [[r[0], *replies[r[0]], "payload", False] for r in job["rcpts"]],
         "mx": "mx.y.test", "ip": "127.0.0.1", "kind": "delivered", "tls": None}]})
    assert [[m[0] for m in g.members] for g in mgr._delivered] == [[0, 1, 2], [4], [5]]
    asyncio.run(mgr.tick())
    acct.close()
    lines = [json.loads(x) for x in (tmp_path / "acct.jsonl").read_bytes().splitlines()]
    finals = [(e["type"], e["queue_id"], e["response"]) for e in lines if e["type"] in ("Delivery", "Bounce")]
    assert sorted(finals, key=lambda f: f[1]) == [
        ("Delivery", f"{msg:016x}.{i}", replies[i][2]) if i != 3 else ("Bounce", f"{msg:016x}.3", "no such user")
        for i in range(6)]
    seqs = [e["event_seq"] for e in lines]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert mgr.totals.delivered == 5 and mgr.totals.bounced == 1
    assert spool.stat()["rcpt"] == 0
    spool.close()


def test_manager_takes_a_worker_report_grouped_by_reply(tmp_path: Path) -> None:
    """The worker's form (``outcome.grouped``): entries of index lists; each recipient is applied
    once, the refused one as a bounce, the rest as one grouped delivery per reply."""
    mgr, spool, clock, link, acct = fakes.connected_manager(tmp_path)
    inject(spool, 5, int(clock.now * 1000))
    asyncio.run(mgr.tick())
    (job,) = link.jobs()
    out = [(r[0], *((550, "5.1.1", "no such user") if r[0] == 2 else (250, "2.0.0", "ok")), "payload", False)
           for r in job["rcpts"]]
    mgr.on_frame(link, {"t": "outcomes", "items": [  # type: ignore[arg-type]
        {"id": job["id"], "results": [list(e) for e in grouped(out)], "mx": "mx.y.test", "ip": "127.0.0.1",
         "kind": "delivered", "tls": None}]})
    assert [[m[0] for m in g.members] for g in mgr._delivered] == [[0, 1], [3, 4]]
    assert [(r.index, r.code) for r in mgr._results] == [(2, 550)]
    asyncio.run(mgr.tick())
    acct.close()
    assert mgr.totals.delivered == 4 and mgr.totals.bounced == 1
    assert spool.stat()["rcpt"] == 0 and not mgr._taken
    spool.close()
