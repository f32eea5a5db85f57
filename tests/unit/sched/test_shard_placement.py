"""Site -> worker placement: a busy site stays on its worker; an idle site goes to the least loaded one.
Real LMDB, fake worker links, a fake clock, no sockets."""

from __future__ import annotations

from pathlib import Path

import pytest

from mta_engine.config import from_dict
from mta_engine.obs.accounting import AccountingLog
from mta_engine.sched.manager import Manager
from mta_engine.spool.store import Spool
from tests.unit.sched.fakes import T0, Clock, Link, Resolver
from tests.unit.sched.test_manager_expiry import inject, run_until


@pytest.fixture
def two_workers(tmp_path: Path):
    cfg = from_dict({"spool": {"path": str(tmp_path / "spool"), "map_size_mb": 64},
                     "log": {"accounting": str(tmp_path / "acct.jsonl")},
                     "delivery": {"workers": 2}, "dsn": {"enabled": False}})
    spool = Spool(cfg.spool.path, map_size_mb=64)
    clock = Clock()
    acct = AccountingLog(cfg.log.accounting)
    mgr = Manager(cfg, spool, Resolver(), acct, clock=clock)
    links = [Link(), Link()]
    for shard, link in enumerate(links):
        mgr.on_frame(link, {"t": "hello", "shard": shard, "pid": 100 + shard})  # type: ignore[arg-type]
    yield mgr, spool, clock, links
    acct.close()
    spool.close()


def shard_of_jobs(links: list[Link]) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {}
    for shard, link in enumerate(links):
        for job in link.jobs():
            out.setdefault(job["site"], set()).add(shard)
    return out


def test_big_site_gets_a_worker_and_small_sites_go_to_the_other(two_workers) -> None:
    """One site with 300 recipients in flight: the next sites are placed on the other worker."""
    mgr, spool, clock, links = two_workers
    inject(spool, clock, [f"u{i}@big.test" for i in range(300)])
    run_until(mgr, clock, T0 + 1, step=0.5)
    (big_shard,) = shard_of_jobs(links)["mx.big.test"]
    inject(spool, clock, [f"a@s{i}.test" for i in range(6)])
    run_until(mgr, clock, T0 + 2, step=0.5)
    placed = shard_of_jobs(links)
    small = [placed[f"mx.s{i}.test"] for i in range(6)]
    assert all(s == {1 - big_shard} for s in small), small
    assert placed["mx.big.test"] == {big_shard}  # in flight: never split across workers


def test_busy_site_is_sticky_idle_site_may_move(two_workers) -> None:
    mgr, spool, clock, links = two_workers
    inject(spool, clock, ["a@one.test"])
    run_until(mgr, clock, T0 + 1, step=0.5)
    first = mgr.shard_of("mx.one.test", clock.now)
    mgr.workers[first].inflight += 10_000  # its worker gets busy with other work
    assert mgr.shard_of("mx.one.test", clock.now) == first  # the site still has a job in flight
    mgr.sites["mx.one.test"].in_flight = 0
    mgr.sites["mx.one.test"]._warm.clear()  # idle, and no pooled session is warm any more
    clock.now += 1
    assert mgr.shard_of("mx.one.test", clock.now) == 1 - first


def test_site_of_a_lost_worker_is_placed_on_a_live_one(two_workers) -> None:
    """A worker that disconnects leaves its sites to the others (no KeyError, no waiting for it)."""
    mgr, spool, clock, links = two_workers
    inject(spool, clock, ["a@one.test"])
    run_until(mgr, clock, T0 + 1, step=0.5)
    first = mgr.shard_of("mx.one.test", clock.now)
    mgr.on_lost(mgr.workers[first].proto, None)  # type: ignore[arg-type]
    assert first not in mgr.workers
    clock.now += 1
    assert mgr.shard_of("mx.one.test", clock.now) == 1 - first
