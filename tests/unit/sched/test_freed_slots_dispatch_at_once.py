"""A job report that frees a site's window slot sends that site's next staged job at once, from
the report itself, instead of waiting for the next round (which first waits for its commit)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.unit.sched import fakes


def _report(job: dict[str, object]) -> dict[str, object]:
    return {"id": job["id"], "results": [[[r[0] for r in job["rcpts"]], 250, "2.0.0", "ok", "payload", False]],
            "mx": "mx.y.test", "ip": "127.0.0.1", "kind": "delivered", "tls": None}


def test_a_report_refills_the_window_before_the_next_round(tmp_path: Path) -> None:
    mgr, spool, clock, link, acct = fakes.connected_manager(tmp_path)
    fakes.inject(spool, 500, int(clock.now * 1000))  # 5 jobs of 100 at one site, window starts at 2
    asyncio.run(mgr.tick())
    first = link.jobs()
    assert len(first) == 2 and mgr.ready.has_jobs(first[0]["site"])
    mgr.on_frame(link, {"t": "outcomes", "items": [_report(first[0])]})  # type: ignore[arg-type]
    sent = link.jobs()[2:]
    assert len(sent) == 2  # the freed slot and the one slow start added: no tick in between
    assert not {r[0] for j in sent for r in j["rcpts"]} & {r[0] for j in first for r in j["rcpts"]}
    asyncio.run(mgr.tick())  # the round commits the report; the staged rest is not sent twice
    answered = {first[0]["id"]}
    for _ in range(10):  # answer whatever is out (answers send more), then a round
        for job in [j for j in link.jobs() if j["id"] not in answered]:
            answered.add(job["id"])
            mgr.on_frame(link, {"t": "outcomes", "items": [_report(job)]})  # type: ignore[arg-type]
        asyncio.run(mgr.tick())
    indexes = [r[0] for j in link.jobs() for r in j["rcpts"]]
    assert sorted(indexes) == list(range(500))  # each recipient sent once
    assert mgr.totals.delivered == 500 and spool.stat()["rcpt"] == 0
    acct.close()
    spool.close()


def test_no_dispatch_from_reports_while_draining(tmp_path: Path) -> None:
    mgr, spool, clock, link, acct = fakes.connected_manager(tmp_path)
    fakes.inject(spool, 500, int(clock.now * 1000))
    asyncio.run(mgr.tick())
    first = link.jobs()
    mgr.drain()
    mgr.on_frame(link, {"t": "outcomes", "items": [_report(first[0])]})  # type: ignore[arg-type]
    assert len(link.jobs()) == 2
    acct.close()
    spool.close()
