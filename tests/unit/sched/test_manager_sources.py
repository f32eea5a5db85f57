"""The manager with egress sources and fleet-wide rates: it picks each job's source in turn among
the lanes with room, keeps every lane's window, leases shared tokens in one round trip per round,
and falls back to local limits when the shared store fails. Real LMDB, a fake worker link and a
fake rate store (the Lua script runs against a real Redis in tests/integration)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from mta_engine.config import Config, from_dict
from mta_engine.ingest.commit import write_submissions
from mta_engine.ingest.inject import parse_request
from mta_engine.obs.accounting import AccountingLog
from mta_engine.sched.manager import Manager
from mta_engine.spool.store import Spool
from tests.unit.sched.fakes import Clock, Link, Resolver

A, B = "192.0.2.10", "192.0.2.11"


class FakeStore:
    """The shared buckets in memory, with the Lua script's arithmetic; ``fail``/``hang`` on demand."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.calls: list[list[tuple[str, float, float, int]]] = []
        self.buckets: dict[str, list[float]] = {}
        self.fail = False
        self.hang = False
        self.closed = False

    async def take(self, requests: Sequence[tuple[str, float, float, int]]) -> list[tuple[int, float]]:
        self.calls.append(list(requests))
        if self.hang:
            await asyncio.Event().wait()
        if self.fail:
            raise ConnectionError("Connection refused")
        out = []
        for key, rate, burst, want in requests:
            tokens, ts = self.buckets.get(key, [burst, self.clock.now])
            tokens = min(burst, tokens + (self.clock.now - ts) * rate)
            grant = int(min(want, math.floor(tokens + 1e-9)))
            tokens -= grant
            self.buckets[key] = [tokens, self.clock.now]
            out.append((grant, 0.0 if tokens >= 1 else (1 - tokens) / rate))
        return out

    async def close(self) -> None:
        self.closed = True


def config(tmp: Path, **extra: Any) -> Config:
    data: dict[str, Any] = {"spool": {"path": str(tmp / "spool"), "map_size_mb": 64},
                            "log": {"accounting": str(tmp / "acct.jsonl")},
                            "delivery": {"workers": 1}, "queue": {"lease_s": 600.0}, "dsn": {"enabled": False}}
    for section, body in extra.items():
        data.setdefault(section, {}).update(body)
    return from_dict(data)


def make(tmp: Path, cfg: Config, store: FakeStore | None = None) -> tuple[Manager, Spool, Clock, Link, AccountingLog]:
    spool = Spool(cfg.spool.path, map_size_mb=64)
    clock = store.clock if store is not None else Clock()
    acct = AccountingLog(cfg.log.accounting)
    mgr = Manager(cfg, spool, Resolver(), acct, clock=clock, rate_store=store)
    link = Link()
    mgr.on_frame(link, {"t": "hello", "shard": 0, "pid": 1})  # type: ignore[arg-type]
    return mgr, spool, clock, link, acct


def inject(spool: Spool, clock: Clock, rcpts: list[str]) -> None:
    """One message per recipient (so each is its own job)."""
    subs = [parse_request({"envelope_sender": "s@x.test", "content": "From: s@x.test\n\nx", "recipients": [r]},
                          now_s=clock.now, boundary="b") for r in rcpts]
    write_submissions(spool, subs, int(clock.now * 1000))


def deliver(mgr: Manager, link: Link, job: dict[str, Any]) -> None:
    """The worker reports the job delivered."""
    mgr.on_frame(link, {"t": "outcomes", "items": [  # type: ignore[arg-type]
        {"id": job["id"], "results": [[r[0], 250, "2.0.0", "ok", "data", False] for r in job["rcpts"]],
         "mx": "mx", "ip": "127.0.0.1", "kind": "delivered", "tls": None}]})


async def settle(mgr: Manager) -> None:
    """Run a round, then let a shared-store round trip it started finish (no timing involved)."""
    await mgr.tick()
    for _ in range(20):
        if mgr.shared is None or mgr.shared._task is None:
            return
        await asyncio.sleep(0)


def test_jobs_take_sources_in_turn_and_each_lane_keeps_its_window(tmp_path: Path) -> None:
    """Two sources, 2 connections per site: 4 jobs at once (2 per source, alternating), and a
    finished job frees a slot on its own source only."""
    cfg = config(tmp_path, delivery={"sources": [{"ip": A, "ehlo_name": "a.test"}, {"ip": B}]},
                 sched={"defaults": {"max_connections": 2, "initial_connections": 2}})
    mgr, spool, clock, link, acct = make(tmp_path, cfg)
    inject(spool, clock, [f"u{i}@one.test" for i in range(10)])
    asyncio.run(mgr.tick())
    jobs = link.jobs()
    assert [j["source"] for j in jobs] == [A, B, A, B]
    assert all(j["conns"] == 2 for j in jobs)
    deliver(mgr, link, jobs[1])
    clock.now += 1
    asyncio.run(mgr.tick())
    assert [j["source"] for j in link.jobs()[4:]] == [B]
    brief = mgr._site_brief("mx.one.test")
    assert brief["window_limit"] == 4 and brief["in_flight_jobs"] == 4
    assert [(s["source"], s["in_flight_jobs"]) for s in brief["sources"]] == [(A, 2), (B, 2)]
    acct.close()
    spool.close()


def test_sites_start_their_turn_on_different_sources(tmp_path: Path) -> None:
    """Four sites with one job each spread over both sources, not all on the first."""
    cfg = config(tmp_path, delivery={"sources": [{"ip": A}, {"ip": B}]})
    mgr, spool, clock, link, acct = make(tmp_path, cfg)
    inject(spool, clock, [f"u@s{i}.test" for i in range(4)])
    asyncio.run(mgr.tick())
    assert sorted(j["source"] for j in link.jobs()) == [A, A, B, B]
    acct.close()
    spool.close()


def test_source_override_lowers_one_lane(tmp_path: Path) -> None:
    """A [[sched.site]] source entry gives that source's lane its own window."""
    cfg = config(tmp_path, delivery={"sources": [{"ip": A}, {"ip": B}]},
                 sched={"defaults": {"max_connections": 3, "initial_connections": 3},
                        "site": [{"domain": "one.test", "source": B, "max_connections": 1}]})
    mgr, spool, clock, link, acct = make(tmp_path, cfg)
    inject(spool, clock, [f"u{i}@one.test" for i in range(10)])
    asyncio.run(mgr.tick())
    assert sorted(j["source"] for j in link.jobs()) == [A, A, A, B]
    assert {j["source"]: j["conns"] for j in link.jobs()} == {A: 3, B: 1}
    acct.close()
    spool.close()


def test_without_sources_jobs_name_no_source(tmp_path: Path) -> None:
    """No [delivery] sources: one lane per site, and the jobs are as before (no "source")."""
    cfg = config(tmp_path, sched={"defaults": {"max_connections": 2, "initial_connections": 2}})
    mgr, spool, clock, link, acct = make(tmp_path, cfg)
    inject(spool, clock, [f"u{i}@one.test" for i in range(10)])
    asyncio.run(mgr.tick())
    assert len(link.jobs()) == 2 and not any("source" in j for j in link.jobs())
    assert "sources" not in mgr._site_brief("mx.one.test")
    acct.close()
    spool.close()


def shared_config(tmp: Path, **redis: Any) -> Config:
    return config(tmp, redis={"url": "redis://127.0.0.1:1/0", "fleet_size": 2, "retry_s": 5.0, **redis},
                  sched={"defaults": {"initial_connections": 20},
                         "site": [{"domain": ["one.test", "two.test"], "messages_per_minute": 600,
                                   "shared": True}]})


def test_shared_rate_is_leased_in_batches(tmp_path: Path) -> None:
    """Nothing goes out before the fleet grants tokens; two shared sites share one round trip;
    then the lanes send what they were granted (10/s: a batch of 10), not more."""
    clock = Clock()
    store = FakeStore(clock)
    mgr, spool, _, link, acct = make(tmp_path, shared_config(tmp_path), store)
    inject(spool, clock, [f"u{i}@one.test" for i in range(30)] + [f"u{i}@two.test" for i in range(30)])

    async def go() -> None:
        await settle(mgr)
        assert link.jobs() == [] and len(store.calls) == 1
        assert sorted(k for k, *_ in store.calls[0]) == ["rate:mx.one.test", "rate:mx.two.test"]
        assert {r[3] for r in store.calls[0]} == {10}
        await settle(mgr)
        assert len(link.jobs()) == 20  # 10 per site
        assert len(store.calls) == 2  # asked again once (both keys), not per message
        for _ in range(5):  # time stands still: the buckets are empty, no more goes out
            await settle(mgr)
        assert len(link.jobs()) == 20
        clock.now += 1.0
        await settle(mgr)
        await settle(mgr)
        assert len(link.jobs()) == 40
        mgr.drain()
        await mgr.tick()
        await mgr.shared.close()  # type: ignore[union-attr]

    asyncio.run(go())
    assert store.closed
    acct.close()
    spool.close()


def test_store_failure_falls_back_to_local_share_then_recovers(tmp_path: Path) -> None:
    """Redis down: a warning, then each instance sends at rate / fleet_size from its local bucket
    (mail keeps flowing); after retry_s a probe finds it back and the shared rate returns."""
    clock = Clock()
    store = FakeStore(clock)
    store.fail = True
    mgr, spool, _, link, acct = make(tmp_path, shared_config(tmp_path), store)
    inject(spool, clock, [f"u{i}@one.test" for i in range(40)])

    async def go() -> None:
        with capture_logs() as logs:
            await settle(mgr)
            await settle(mgr)
        assert [e["event"] for e in logs if e["event"].startswith("shared_limits")] == ["shared_limits_unavailable"]
        assert mgr.shared is not None and not mgr.shared.up
        assert len(link.jobs()) == 5  # the local bucket at 600/min / 2: a burst of 5
        assert mgr.status()["shared_limits"]["up"] is False
        calls = len(store.calls)
        clock.now += 1.0
        await settle(mgr)
        assert len(link.jobs()) == 10 and len(store.calls) == calls  # no probe before retry_s
        store.fail = False
        clock.now += 5.0
        with capture_logs() as logs:
            await settle(mgr)
        assert [e["event"] for e in logs if e["event"].startswith("shared_limits")] == ["shared_limits_restored"]
        assert mgr.shared.up and len(store.calls) == calls + 1
        await settle(mgr)
        assert 10 < len(link.jobs()) <= 20  # from the shared bucket's batch again

    asyncio.run(go())
    acct.close()
    spool.close()


def test_hanging_store_times_out_and_mail_goes_on(tmp_path: Path) -> None:
    """A store that never answers costs one timeout_s, never a stalled manager loop."""
    clock = Clock()
    store = FakeStore(clock)
    store.hang = True
    mgr, spool, _, link, acct = make(tmp_path, shared_config(tmp_path, timeout_s=0.05), store)
    inject(spool, clock, [f"u{i}@one.test" for i in range(10)])

    async def go() -> None:
        started = time.monotonic()
        await mgr.tick()  # returns at once: the round trip runs in the background
        assert link.jobs() == [] and mgr.shared is not None and mgr.shared._task is not None
        while mgr.shared._task is not None:
            assert time.monotonic() - started < 30, "the round trip was never bounded"
            await asyncio.sleep(0.01)  # poll interval
        assert not mgr.shared.up
        await mgr.tick()
        assert len(link.jobs()) == 5

    asyncio.run(go())
    acct.close()
    spool.close()
