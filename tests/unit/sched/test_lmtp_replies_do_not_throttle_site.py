"""LMTP replies after the data are per recipient (RFC 2033 §4.2): one recipient's 451 "try again later"
must not put the whole LMTP site into backoff, while the same reply to SMTP DATA does (it speaks for
the message and the site). Real LMTP routing config, real LMDB, a fake worker link and clock."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from mta_engine.sched.site import Mode
from tests.unit.sched.fakes import connected_manager, inject

THROTTLE = (451, "4.7.1", "rate limited, try again later")


def run(tmp_path: Path, domain: str) -> Mode:
    mgr, spool, clock, link, acct = connected_manager(tmp_path, lmtp={"routes": {"mailstore.test": "127.0.0.1:2400"}})
    inject(spool, 2, int(clock.now * 1000), domain)

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
