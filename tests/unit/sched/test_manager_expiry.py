"""Expiry on every path, with a fake clock: queued, in flight, suspended and throttled recipients
all expire on time (no recipient is stuck past max age). Real LMDB, a fake worker link, no sockets."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from mta_engine.config import from_dict
from mta_engine.ingest.commit import write_submissions
from mta_engine.ingest.inject import parse_request
from mta_engine.obs.accounting import AccountingLog
from mta_engine.sched.manager import Manager
from mta_engine.sched.signals import Rule
from mta_engine.spool.store import Spool
from tests.unit.sched.fakes import T0, Clock, Link, Resolver

MAX_AGE = 600.0


@pytest.fixture
def world(tmp_path: Path):
    cfg = from_dict({"spool": {"path": str(tmp_path / "spool"), "map_size_mb": 64},
                     "log": {"accounting": str(tmp_path / "acct.jsonl")},
                     "delivery": {"workers": 1},
                     "queue": {"max_age_s": MAX_AGE, "lease_s": 120.0, "retry_intervals_s": [60.0]},
                     "dsn": {"enabled": False}})
    spool = Spool(cfg.spool.path, map_size_mb=64)
    clock = Clock()
    acct = AccountingLog(cfg.log.accounting)
    mgr = Manager(cfg, spool, Resolver(), acct, clock=clock)
    link = Link()
    yield cfg, spool, clock, mgr, link, acct
    acct.close()
    spool.close()


def inject(spool: Spool, clock: Clock, rcpts: list[str]) -> None:
    sub = parse_request({"envelope_sender": "s@x.test", "content": "From: s@x.test\n\nx", "recipients": rcpts},
                        now_s=clock.now, boundary="b")
    write_submissions(spool, [sub], int(clock.now * 1000))


def run_until(mgr: Manager, clock: Clock, until: float, step: float = 5.0) -> None:
    async def go() -> None:
        while clock.now < until:
            await mgr.tick()
            clock.now += step
        await mgr.tick()
    asyncio.run(go())


def finals(acct: AccountingLog) -> dict[str, dict[str, Any]]:
    import json

    with open(acct.path, "rb") as f:
        evs = [json.loads(line) for line in f if line.strip()]
    return {e["recipient"]: e for e in evs if e["type"] in ("Delivery", "Bounce", "Expiration")}


def test_recipients_on_every_path_expire_by_max_age(world) -> None:
    """In flight (worker never answers), suspended, throttled and plain queued recipients all expire."""
    cfg, spool, clock, mgr, link, acct = world
    mgr.on_frame(link, {"t": "hello", "shard": 0, "pid": 1})  # type: ignore[arg-type]
    inject(spool, clock, ["a@inflight.test", "b@held.test", "z@slow.test"])
    mgr.suspend("domain", "held.test")
    run_until(mgr, clock, T0 + 1)
    sent = {r[1] for j in link.jobs() for r in j["rcpts"]}
    assert sent == {"a@inflight.test", "z@slow.test"}  # in flight from now on: the worker never answers
    slow = mgr.sites["mx.slow.test"]
    rule = Rule.from_dict({"name": "long-backoff", "code": [421], "backoff_s": 10 * MAX_AGE,
                           "concurrency_factor": 0.05, "rate_factor": 0.5})
    slow.throttle(clock.now, rule)  # BACKOFF: one session for longer than max age; z holds it
    inject(spool, clock, ["c@slow.test", "d@slow.test"])
    run_until(mgr, clock, T0 + MAX_AGE + cfg.queue.lease_s + 30)
    got = finals(acct)
    assert {r: got[r]["type"] for r in got} == {r: "Expiration" for r in
                                                ("a@inflight.test", "b@held.test", "z@slow.test", "c@slow.test",
                                                 "d@slow.test")}
    assert all(e["timestamp"] <= T0 + MAX_AGE + cfg.queue.lease_s + 30 for e in got.values())
    assert {r[1] for j in link.jobs() for r in j["rcpts"]} >= {"a@inflight.test"}
    assert not {"c@slow.test", "d@slow.test"} & {r[1] for j in link.jobs() for r in j["rcpts"]}  # throttled
    assert spool.stat()["rcpt"] == 0  # nothing stuck
    assert not mgr._taken and len(mgr.ready) == 0  # no key left behind by the sweep, the stage or a lease


def test_expiry_is_not_early(world) -> None:
    """A held recipient is still queued just before max age, and expired just after it."""
    cfg, spool, clock, mgr, link, acct = world
    mgr.on_frame(link, {"t": "hello", "shard": 0, "pid": 1})  # type: ignore[arg-type]
    mgr.suspend("tenant", "t1")
    sub = parse_request({"envelope_sender": "s@x.test", "content": "From: s@x.test\n\nx", "tenant": "t1",
                         "recipients": ["q@wait.test"]}, now_s=clock.now, boundary="b")
    write_submissions(spool, [sub], int(clock.now * 1000))
    run_until(mgr, clock, T0 + MAX_AGE - 20)
    assert "q@wait.test" not in finals(acct) and spool.stat()["rcpt"] == 1
    run_until(mgr, clock, T0 + MAX_AGE + 20)
    assert finals(acct)["q@wait.test"]["type"] == "Expiration"
    assert link.jobs() == []  # a suspended tenant never got a job


def test_suspensions_survive_a_manager_restart(world, tmp_path: Path) -> None:
    """A suspension is saved with the next round and restored by the next manager."""
    cfg, spool, clock, mgr, link, acct = world
    mgr.suspend("campaign", "spring")
    asyncio.run(mgr.tick())
    again = Manager(cfg, spool, Resolver(), acct, clock=clock)
    again.recover()
    assert again.suspensions["campaign"] == {"spring"}
    again.resume("campaign", "spring")
    asyncio.run(again.tick())
    third = Manager(cfg, spool, Resolver(), acct, clock=clock)
    third.recover()
    assert third.suspensions["campaign"] == set()
