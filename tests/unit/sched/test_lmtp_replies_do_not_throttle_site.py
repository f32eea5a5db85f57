"""LMTP replies after the data are per recipient (RFC 2033 §4.2): one recipient's 451 "try again later"
must not put the whole LMTP site into backoff, while the same reply to SMTP DATA does (it speaks for
the message and the site). Real LMTP routing config, real LMDB, a fake worker link and clock."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from mta_engine.config import from_dict
from mta_engine.ingest.commit import write_submissions
from mta_engine.ingest.inject import parse_request
from mta_engine.obs.accounting import AccountingLog
from mta_engine.sched.manager import Manager
from mta_engine.sched.site import Mode
from mta_engine.spool.store import Spool
from tests.unit.sched.fakes import Clock, Link, Resolver

THROTTLE = (451, "4.7.1", "rate limited, try again later")


def run(tmp_path: Path, domain: str) -> Mode:
    cfg = from_dict({"spool": {"path": str(tmp_path / "spool"), "map_size_mb": 64},
                     "log": {"accounting": str(tmp_path / "acct.jsonl")},
                     "delivery": {"workers": 1}, "dsn": {"enabled": False},
                     "lmtp": {"routes": {"mailstore.test": "127.0.0.1:2400"}}})
    spool = Spool(cfg.spool.path, map_size_mb=64)
    clock = Clock()
    acct = AccountingLog(cfg.log.accounting)
    mgr = Manager(cfg, spool, Resolver(), acct, clock=clock)
    link = Link()
    mgr.on_frame(link, {"t": "hello", "shard": 0, "pid": 1})  # type: ignore[arg-type]
    sub = parse_request({"envelope_sender": "s@x.test", "content": "From: s@x.test\n\nx",
                         "recipients": [f"a@{domain}", f"b@{domain}"]}, now_s=clock.now, boundary="b")
    write_submissions(spool, [sub], int(clock.now * 1000))

    async def go() -> Mode:
        await mgr.tick()
        (job,) = link.jobs()
        (a, _), (b, _) = [(r[0], r[1]) for r in job["rcpts"]]
        results: list[Any] = [[a, 250, "2.1.5", "ok", "payload", False], [b, *THROTTLE, "payload", False]]
        mgr.on_frame(link, {"t": "outcomes", "items": [  # type: ignore[arg-type]
            {"id": job["id"], "results": results, "mx": "m", "ip": "127.0.0.1", "kind": "delivered", "tls": None}]})
        clock.now += 0.5
        await mgr.tick()
        st = mgr.sites[job["site"]]
        st.tick(clock.now)
        return st.mode

    try:
        return asyncio.run(go())
    finally:
        acct.close()
        spool.close()


def test_lmtp_per_recipient_451_leaves_the_site_normal(tmp_path: Path) -> None:
    assert run(tmp_path, "mailstore.test") is Mode.NORMAL


def test_smtp_data_451_rate_limit_backs_the_site_off(tmp_path: Path) -> None:
    assert run(tmp_path, "d.test") is Mode.BACKOFF
