"""Suppression at the door: the group commit refuses listed recipients; the queue writer lists bounced ones."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from mta_engine.ingest.commit import GroupCommitter, write_submissions
from mta_engine.ingest.http import make_app
from mta_engine.ingest.inject import parse_request
from mta_engine.sched.queue import QueueWriter, Result, TickStats
from mta_engine.sched.retry import RetryPolicy
from mta_engine.spool import records, suppress
from mta_engine.spool.records import Message, Recipient
from mta_engine.spool.store import Spool

T0 = 1_700_000_000_000


@pytest.fixture
def spool(tmp_path: Path):
    s = Spool(tmp_path / "spool", map_size_mb=64)
    yield s
    s.close()


def sub(rcpts, tenant=None, **kw):
    body = {"envelope_sender": "s@x.test", "content": "From: s@x.test\n\nx", "recipients": rcpts, **kw}
    if tenant:
        body["tenant"] = tenant
    return parse_request(body, now_s=T0 / 1000, boundary="b")


def test_write_submissions_refuses_suppressed(spool):
    """Suppressed recipients are not written, are reported per submission, and keep DSN params in step."""
    with spool.write() as txn:
        suppress.add(txn, spool, "acme", "b@y.test", reason="invalid_recipient", source="q", added_at_s=1)
        suppress.add(txn, spool, None, "z@y.test", reason="invalid_recipient", source="q", added_at_s=1)
    s1 = sub([{"email": "a@y.test", "notify": "NEVER"}, {"email": "B@y.test", "notify": "SUCCESS"},
              {"email": "c@y.test"}, "bad"], tenant="acme")
    s2 = sub(["b@y.test"], tenant="acme")
    s3 = sub(["b@y.test", "z@y.test"])  # default tenant: b is fine, z is suppressed
    s4 = sub(["z@y.test"])
    ids = write_submissions(spool, [s1, s2, s3, s4], T0)
    assert ids[1] is None and ids[3] is None and ids[2] == ids[0] + 1
    assert [a for a, _, _ in s1.recipients] == ["a@y.test", "c@y.test"]
    assert s1.dsn_params == [("NEVER", None), (None, None)]
    assert s1.failed == ["bad", "B@y.test"] and "suppression list" in s1.errors[1]
    assert s2.recipients == [] and s2.failed == ["b@y.test"]
    assert [a for a, _, _ in s3.recipients] == ["b@y.test"] and s3.failed == ["z@y.test"]
    with spool.read() as txn:
        m = Message.decode(txn.get(records.u64(ids[0]), db=spool.dbs["msg"]))
        r1 = Recipient.decode(txn.get(records.rcpt_key(ids[0], 1), db=spool.dbs["rcpt"]))
        evs = spool.events_after(txn, 0)
    assert (m.n_rcpt, m.remaining) == (2, 2) and r1.address == "c@y.test"
    assert spool.stat()["msg"] == 2 and spool.stat()["rcpt"] == 3 and spool.stat()["due"] == 3
    assert [e["recipient_count"] for e in evs] == [2, 1]


def test_http_answer_lists_suppressed(spool):
    """The inject answer lists suppressed recipients in failed_recipients with a reason; none queued when all are."""
    with spool.write() as txn:
        suppress.add(txn, spool, "", "b@y.test", reason="invalid_recipient: 550 5.1.1", source="q", added_at_s=1)

    async def go():
        committer = GroupCommitter(spool)
        async with TestClient(TestServer(make_app(committer))) as client:
            r = await client.post("/api/inject/v1", json={"envelope_sender": "s@x.test",
                                  "content": "From: s@x.test\n\nx", "recipients": ["a@y.test", "b@y.test"]})
            one = await r.json()
            r = await client.post("/api/inject/v1", json={"envelope_sender": "s@x.test",
                                  "content": "From: s@x.test\n\nx", "recipients": ["B@y.test"]})
            two = await r.json()
        committer.close()
        return one, two

    one, two = asyncio.run(go())
    assert one["success_count"] == 1 and one["fail_count"] == 1 and one["failed_recipients"] == ["b@y.test"]
    assert "suppression list" in one["errors"][0] and len(one["queue_ids"]) == 1
    assert two == {"success_count": 0, "fail_count": 1, "failed_recipients": ["B@y.test"],
                   "errors": [two["errors"][0]], "queue_ids": []}


def test_queue_bounce_suppresses_and_next_submission_refused(spool):
    """B03/B04: only the 550 5.1.1 suppresses (not mailbox full, blocklist, DMARC); the next submission to it is refused."""
    (msg,) = write_submissions(spool, [sub(["a@y.test", "b@y.test", "c@y.test", "d@y.test"], tenant="acme")], T0)
    w = QueueWriter(spool, retry=RetryPolicy(intervals_s=(60.0,), jitter=0.0), max_age_s=3600.0, lease_s=600.0)
    stats, events = TickStats(), []
    with spool.write() as txn:
        w.apply(txn, [Result(msg, 0, 550, "5.1.1", "no such user", "rcpt", "site"),
                      Result(msg, 1, 552, "5.2.2", "mailbox full", "rcpt", "site"),
                      Result(msg, 2, 554, "5.7.1", "Service unavailable; client host blocked using Spamhaus", "rcpt", "site"),
                      Result(msg, 3, 550, "5.7.26", "Unauthenticated email is not accepted (DMARC)", "data", "site")],
                T0 + 1000, stats, events)
        spool.events_append(txn, events)
    sup = [e for e in events if e["type"] == "Suppressed"]
    assert sup == [{"type": "Suppressed", "timestamp": T0 / 1000 + 1, "tenant": "acme", "recipient": "a@y.test",
                    "reason": "invalid_recipient: 550 5.1.1 no such user", "source": f"{records.queue_id(msg)}.0",
                    "event_seq": sup[0]["event_seq"]}]
    s = sub(["A@Y.test", "b@y.test", "c@y.test", "d@y.test"], tenant="acme")
    write_submissions(spool, [s], T0 + 2000)
    assert s.failed == ["A@Y.test"]
    s = sub(["a@y.test"], tenant="other")
    assert write_submissions(spool, [s], T0 + 2000)[0] is not None
