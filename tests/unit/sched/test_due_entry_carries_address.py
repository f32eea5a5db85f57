"""A recipient queued by ingest for a shared body, without DSN parameters, has its address in its
due entry, and the scan takes it from there without reading the recipient record; every other due
entry is empty and the scan reads the record (rendered bodies, DSN parameters, any recipient
after an attempt or a return)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from mta_engine.ingest.commit import write_submissions
from mta_engine.ingest.inject import parse_request
from mta_engine.spool import records
from mta_engine.spool.records import QueuedAddress, Recipient
from mta_engine.spool.store import Spool
from tests.unit.sched import fakes


def _submit(spool: Spool, now_s: float, content: Any, recipients: list[Any]) -> int:
    sub = parse_request({"envelope_sender": "s@x.test", "content": content, "recipients": recipients},
                        now_s=now_s, boundary="b")
    (msg_id,) = write_submissions(spool, [sub], int(now_s * 1000))
    return msg_id


def _due_values(spool: Spool) -> dict[int, bytes]:
    with spool.read() as txn, txn.cursor(db=spool.dbs["due"]) as cur:
        return {records.split_due_key(k)[2]: bytes(v) for k, v in cur.iternext()}


def test_ingest_writes_the_address_only_where_the_due_entry_can_stand_alone(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", map_size_mb=64)
    _submit(spool, fakes.T0, "From: s@x.test\n\nsame for all",
            ["a@y.test", {"email": "b@y.test", "notify": "never"}, {"email": "ü@y.test", "name": "Ü"}])
    assert _due_values(spool) == {0: b"a@y.test", 1: b"", 2: "ü@y.test".encode()}
    spool.close()
    rendered = Spool(tmp_path / "rendered", map_size_mb=64)
    _submit(rendered, fakes.T0, {"subject": "Hi", "from": "s@x.test", "text_body": "Dear {{ first }}"},
            [{"email": "a@y.test", "substitutions": {"first": "A"}}])
    assert _due_values(rendered) == {0: b""}
    rendered.close()


def test_scan_takes_fresh_recipients_from_the_due_entry_and_others_from_their_record(tmp_path: Path) -> None:
    mgr, spool, clock, link, acct = fakes.connected_manager(tmp_path)
    _submit(spool, clock.now, "From: s@x.test\n\nsame for all",
            ["a@y.test", {"email": "b@y.test", "notify": "failure", "orcpt": "rfc822;b@old.test"}])
    due = mgr._scan_due(int(clock.now * 1000) + 1, 100, clock.now)
    kinds = {d.index: (type(d.rec), d.rec.address, d.rec.attempts, d.domain) for d in due}
    assert kinds == {0: (QueuedAddress, "a@y.test", 0, "y.test"), 1: (Recipient, "b@y.test", 0, "y.test")}
    asyncio.run(mgr.tick())
    (job,) = link.jobs()
    assert job["rcpts"] == [[0, "a@y.test"], [1, "b@y.test", None, None, "FAILURE", "rfc822;b@old.test"]]
    # a deferral rewrites the due entry empty: the next scan reads the record and its attempt count
    mgr.on_frame(link, {"t": "outcomes", "items": [  # type: ignore[arg-type]
        {"id": job["id"], "results": [[[0, 1], 451, "4.2.1", "try later", "rcpt", False]], "mx": "mx.y.test",
         "ip": "127.0.0.1", "kind": "delivered", "tls": None}]})
    asyncio.run(mgr.tick())
    assert set(_due_values(spool).values()) == {b""}
    later = mgr._scan_due(int(clock.now * 1000) + 10**9, 100, clock.now + 10**6)
    assert sorted((type(d.rec), d.rec.attempts) for d in later) == [(Recipient, 1), (Recipient, 1)]
    acct.close()
    spool.close()


def test_a_returned_recipient_is_read_from_its_record_again(tmp_path: Path) -> None:
    mgr, spool, clock, link, acct = fakes.connected_manager(tmp_path)
    _submit(spool, clock.now, "From: s@x.test\n\nsame for all", ["a@y.test"])
    asyncio.run(mgr.tick())
    (job,) = link.jobs()
    mgr.on_frame(link, {"t": "outcomes", "items": [  # type: ignore[arg-type]
        {"id": job["id"], "results": [[[0], 0, None, "returned: worker draining", "queue", False]],
         "mx": None, "ip": None, "kind": "delivered", "tls": None}]})
    asyncio.run(mgr.tick())
    assert _due_values(spool) == {0: b""}
    (again,) = mgr._scan_due(int(clock.now * 1000) + 1, 100, clock.now)
    assert type(again.rec) is Recipient and again.rec.attempts == 0 and again.rec.address == "a@y.test"
    acct.close()
    spool.close()
