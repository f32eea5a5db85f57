"""Leases live in the manager's memory: handing a job to a worker writes nothing, the recipients
keep their due entries, the due scan skips them until their outcome is committed, and a new
manager (after a crash) finds them due at once. Real LMDB, a fake worker link and clock."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from mta_engine.sched import manager as manager_mod
from mta_engine.spool import records
from tests.unit.sched.fakes import Link, Resolver, connected_manager, inject


def due_entries(spool: Any) -> list[bytes]:
    with spool.read() as txn, txn.cursor(db=spool.dbs["due"]) as cur:
        return list(cur.iternext(values=False))


def sent_to(link: Link) -> list[str]:
    return [r[1] for j in link.jobs() for r in j["rcpts"]]


def test_a_job_going_out_writes_nothing_and_is_not_sent_twice(tmp_path: Path) -> None:
    mgr, spool, clock, link, acct = connected_manager(tmp_path)
    inject(spool, 3, int(clock.now * 1000))
    before = due_entries(spool)

    async def rounds() -> None:
        await mgr.tick()
        for _ in range(3):  # later rounds, one of them a full scan from the start of the index
            clock.now += manager_mod.FULL_SCAN_S + 1
            await mgr.tick()

    asyncio.run(rounds())
    assert sorted(sent_to(link)) == ["r0@y.test", "r1@y.test", "r2@y.test"]  # once each
    assert due_entries(spool) == before and spool.stat()["inflight"] == 0
    assert mgr.status()["queue"]["in_flight"] == 3
    acct.close()
    spool.close()


def test_outcomes_end_the_lease_and_a_new_manager_sends_what_was_in_flight(tmp_path: Path) -> None:
    mgr, spool, clock, link, acct = connected_manager(tmp_path)
    inject(spool, 2, int(clock.now * 1000))
    asyncio.run(mgr.tick())
    (job,) = link.jobs()
    a, b = job["rcpts"]
    mgr.on_frame(link, {"t": "outcomes", "items": [  # type: ignore[arg-type]
        {"id": job["id"], "results": [[a[0], 250, "2.0.0", "ok", "payload", False]], "mx": "m", "ip": "127.0.0.1",
         "tls": None, "partial": True}]})
    asyncio.run(mgr.tick())
    assert len(due_entries(spool)) == 1 and mgr._taken == {records.rcpt_key(job["msg"], b[0])}
    acct.close()
    # the manager dies with b in flight; its successor sends b at once, with no attempt counted
    from mta_engine.obs.accounting import AccountingLog
    from mta_engine.sched.manager import Manager

    acct2 = AccountingLog(mgr.cfg.log.accounting)
    mgr2, link2 = Manager(mgr.cfg, spool, Resolver(), acct2, clock=clock), Link()
    mgr2.recover()
    mgr2.on_frame(link2, {"t": "hello", "shard": 0, "pid": 2})  # type: ignore[arg-type]
    asyncio.run(mgr2.tick())
    assert sent_to(link2) == [b[1]]
    assert link2.jobs()[0]["rcpts"][0][0] == b[0]
    acct2.close()
    spool.close()


def test_a_lost_worker_returns_its_recipients_due_now(tmp_path: Path) -> None:
    mgr, spool, clock, link, acct = connected_manager(tmp_path)
    inject(spool, 2, int(clock.now * 1000))
    asyncio.run(mgr.tick())
    mgr.on_lost(link, None)  # type: ignore[arg-type]
    link2 = Link()
    mgr.on_frame(link2, {"t": "hello", "shard": 0, "pid": 2})  # type: ignore[arg-type]
    clock.now += 1

    async def rounds() -> None:
        await mgr.tick()  # commits the return (the scan still skips them in this round)
        await mgr.tick()

    asyncio.run(rounds())
    assert sorted(sent_to(link2)) == ["r0@y.test", "r1@y.test"]
    assert len(due_entries(spool)) == 2  # one entry each: the returned ones were replaced
    assert mgr.totals.returned == 2
    acct.close()
    spool.close()


def test_an_unanswered_job_is_sent_again_after_lease_s_keeping_its_slot(tmp_path: Path) -> None:
    mgr, spool, clock, link, acct = connected_manager(tmp_path, queue={"lease_s": 60.0})
    inject(spool, 1, int(clock.now * 1000))
    asyncio.run(mgr.tick())
    (job,) = link.jobs()

    async def rounds() -> None:
        for _ in range(4):
            clock.now += 30
            await mgr.tick()

    asyncio.run(rounds())
    assert sent_to(link) == ["r0@y.test", "r0@y.test"]  # once more after the lease ran out
    late = {"id": job["id"], "results": [[0, 250, "2.0.0", "ok", "payload", False]], "mx": "m", "ip": "127.0.0.1",
            "kind": "delivered", "tls": None}
    mgr.on_frame(link, {"t": "outcomes", "items": [late]})  # type: ignore[arg-type]
    asyncio.run(mgr.tick())
    assert mgr.totals.delivered == 1 and spool.stat()["rcpt"] == 0  # the late report still counts, once
    acct.close()
    spool.close()
