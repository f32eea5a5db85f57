"""The queue manager: due scan -> routing -> dispatch to workers; applies outcomes.

Contract: never faces the network except its DNS resolver (to learn each destination's site).
It is the sole writer of recipient state after ingest (``sched.queue.QueueWriter``); all its LMDB
work runs on one spool-writer thread, one synced transaction per tick (group commit), so the
event loop keeps reading worker frames while the disk works. Jobs go out only after the
transaction that leased them committed; accounting lines are written only after the transaction
that produced them committed (exactly once, see ``obs.accounting``).

A tick: take the results that arrived -> scan the due index for up to the free worker capacity ->
resolve each destination's MX set (its *site*) -> one transaction: apply results, fail what DNS
or max age rules out, lease the rest -> send jobs (shard = crc32(site) mod N) -> write the log.
A worker that disconnects has its leases returned to the queue at once (no attempt counted).
"""

from __future__ import annotations

import asyncio
import os
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import lmdb
import structlog

from ..config import Config
from ..errors import DnsError, SpoolCorrupt
from ..obs.accounting import AccountingLog
from ..proc.ipc import FrameProtocol
from ..routing.mx import MxPlan
from ..spool import records
from ..spool.records import Recipient
from ..spool.store import Spool
from .backoff import is_expired
from .queue import QueueWriter, Result, TickStats

log = structlog.get_logger("manager")

RESOLVE_WAIT_S = 0.05
"""How long a scheduling round waits for MX lookups before dispatching what is resolved."""


@dataclass(slots=True)
class WorkerLink:
    shard: int
    pid: int
    proto: FrameProtocol
    inflight: int = 0
    jobs: dict[int, tuple[int, list[int], str]] = field(default_factory=dict)
    """job id -> (message id, recipient indexes, site)."""
    draining: bool = False

    def __repr__(self) -> str:
        return f"<WorkerLink shard={self.shard} pid={self.pid} jobs={len(self.jobs)} inflight={self.inflight}>"


@dataclass(slots=True)
class Due:
    dkey: bytes
    msg_id: int
    index: int
    rec: Recipient


class Manager:
    def __init__(self, cfg: Config, spool: Spool, resolver: Any, acct: AccountingLog,
                 clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.spool = spool
        self.resolver = resolver
        self.acct = acct
        self.clock = clock
        self.nshards = cfg.worker_count
        q = cfg.queue
        self.writer = QueueWriter(spool, retry_intervals_s=q.retry_intervals_s, max_age_s=q.max_age_s,
                                  lease_s=q.lease_s)
        self.workers: dict[int, WorkerLink] = {}
        self._results: list[Result] = []
        self._returns: list[Result] = []
        self._job_seq = 0
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="manager-spool")
        self.draining = False
        self.stopped = asyncio.Event()
        self.totals = TickStats()
        self.started_at = clock()
        self.ticks = 0
        self.commits = 0
        self.last_tick: dict[str, Any] = {}
        self._outbox_written = 0
        self.on_shutdown_request: Callable[[], None] | None = None

    def __repr__(self) -> str:
        return (f"<Manager workers={sorted(self.workers)} results={len(self._results)} ticks={self.ticks} "
                f"draining={self.draining}>")

    # -- startup ------------------------------------------------------------------------------
    def recover(self) -> None:
        """Re-queue what a previous manager had in flight, and write outbox events not yet logged."""
        now_ms = int(self.clock() * 1000)
        with self.spool.write() as txn:
            n = self.writer.requeue_inflight(txn, now_ms)
        if n:
            log.info("inflight_requeued", count=n)
        self._flush_outbox()

    def _flush_outbox(self) -> None:
        with self.spool.read() as txn:
            events = self.spool.events_after(txn, 0)
        if events:
            self.acct.write(events)
            self._outbox_written = max(self._outbox_written, events[-1].get("event_seq", 0))
        self._outbox_written = max(self._outbox_written, self.acct.written_seq)

    # -- worker links ------------------------------------------------------------------------
    def on_frame(self, proto: FrameProtocol, frame: dict[str, Any]) -> None:
        t = frame.get("t")
        if t == "outcomes":
            link = proto.peer.get("link")
            for item in frame["items"]:
                self._on_outcome(link, item)
            self._wake.set()
        elif t == "hello":
            shard = int(frame["shard"])
            old = self.workers.get(shard)
            if old is not None and old.proto is not proto:
                old.proto.close()
                self._worker_gone(old)
            link = WorkerLink(shard=shard, pid=int(frame.get("pid", 0)), proto=proto)
            proto.peer["link"] = link
            self.workers[shard] = link
            log.info("worker_connected", shard=shard, pid=link.pid)
            if self.draining:
                proto.send({"t": "drain"})
            self._wake.set()
        elif t == "wake":  # ingest committed new work
            self._wake.set()
        elif t == "drained":
            link = proto.peer.get("link")
            if link is not None:
                link.draining = True

    def on_lost(self, proto: FrameProtocol, exc: Exception | None) -> None:
        link = proto.peer.get("link")
        if link is not None and self.workers.get(link.shard) is link:
            del self.workers[link.shard]
            if link.draining and not link.jobs:
                log.info("worker_drained", shard=link.shard, pid=link.pid)
            else:
                self._worker_gone(link)
            self._wake.set()

    def _worker_gone(self, link: WorkerLink) -> None:
        n = 0
        for msg_id, idxs, site in link.jobs.values():
            for i in idxs:
                self._returns.append(Result(msg_id, i, 0, site=site))
                n += 1
        link.jobs.clear()
        link.inflight = 0
        log.warning("worker_lost", shard=link.shard, pid=link.pid, returned=n)

    def _on_outcome(self, link: WorkerLink | None, item: dict[str, Any]) -> None:
        job = link.jobs.pop(item["id"], None) if link is not None else None
        if job is None:
            return
        msg_id, idxs, site = job
        link.inflight -= len(idxs)  # type: ignore[union-attr]
        seen = set()
        for idx, code, enhanced, text, phase, unknown in item["results"]:
            seen.add(idx)
            self._results.append(Result(msg_id, idx, code, enhanced, text, phase, site, item.get("mx"),
                                        item.get("ip"), bool(unknown)))
        for idx in idxs:  # a worker must answer for every recipient; if not, count nothing and retry
            if idx not in seen:
                self._results.append(Result(msg_id, idx, 0, site=site))

    # -- the loop -------------------------------------------------------------------------------
    async def run(self) -> None:
        tick_s = self.cfg.queue.tick_s
        idle_s = 0.25
        while True:
            busy = await self.tick()
            if self.draining and not self.workers and not self._results and not self._returns:
                break
            if not busy:
                try:
                    await asyncio.wait_for(self._wake.wait(), idle_s)
                except asyncio.TimeoutError:
                    pass
            else:
                await asyncio.sleep(tick_s)
            self._wake.clear()
        self._executor.shutdown(wait=True)
        self.stopped.set()

    def capacity(self) -> dict[int, int]:
        if self.draining:
            return {}
        cap = self.cfg.queue.max_inflight_per_worker
        return {s: cap - w.inflight for s, w in self.workers.items() if not w.draining and w.inflight < cap}

    async def tick(self) -> bool:
        """One scheduling round; returns whether there was anything to do."""
        loop = asyncio.get_running_loop()
        results, self._results = self._results, []
        returns, self._returns = self._returns, []
        free = self.capacity()
        due: list[Due] = []
        now = self.clock()
        now_ms = int(now * 1000)
        t0 = time.perf_counter()
        if free:
            limit = min(sum(free.values()), self.cfg.queue.scan_batch)
            due = await loop.run_in_executor(self._executor, self._scan_due, now_ms, limit)
        if not (results or returns or due or self._outbox_pending()):
            return False
        t1 = time.perf_counter()
        plans = await self._resolve({d.rec.domain for d in due})
        t2 = time.perf_counter()
        jobs_by_shard, leases, fails = self._route(due, plans, free, now)
        stats = TickStats()
        t3 = time.perf_counter()
        events = await loop.run_in_executor(self._executor, self._commit, results + returns, leases, fails,
                                            now_ms, stats)
        t4 = time.perf_counter()
        self.last_tick = {"scan_ms": round((t1 - t0) * 1000, 2), "resolve_ms": round((t2 - t1) * 1000, 2),
                          "route_ms": round((t3 - t2) * 1000, 2), "commit_ms": round((t4 - t3) * 1000, 2),
                          "due": len(due), "results": len(results), "leased": len(leases)}
        log.debug("tick_done", **self.last_tick)
        self.commits += 1
        self.ticks += 1
        for shard, jobs in jobs_by_shard.items():
            link = self.workers.get(shard)
            if link is None or not link.proto.send({"t": "jobs", "items": jobs}):
                # the worker went away between scan and send: its leases come back now
                for job in jobs:
                    for r in job["rcpts"]:
                        self._returns.append(Result(job["msg"], r[0], 0, site=job["site"]))
                continue
            for job in jobs:
                link.jobs[job["id"]] = (job["msg"], [r[0] for r in job["rcpts"]], job["site"])
                link.inflight += len(job["rcpts"])
        if events:
            self.acct.write(events)
            self._outbox_written = events[-1]["event_seq"]
        self._count(stats)
        return True

    def _outbox_pending(self) -> bool:
        """Events committed by ingest (Reception) that the log has not seen yet."""
        with self.spool.read() as txn:
            return self.spool.events_pending(txn, self._outbox_written)

    def _count(self, stats: TickStats) -> None:
        t = self.totals
        t.delivered += stats.delivered
        t.bounced += stats.bounced
        t.deferred += stats.deferred
        t.expired += stats.expired
        t.returned += stats.returned
        t.unknown += stats.unknown
        t.corrupt += stats.corrupt
        for site, counts in stats.sites.items():
            acc = t.sites.setdefault(site, [0, 0, 0])
            for i, v in enumerate(counts):
                acc[i] += v

    # -- spool thread ------------------------------------------------------------------------
    def _scan_due(self, now_ms: int, limit: int) -> list[Due]:
        out: list[Due] = []
        bad: list[bytes] = []
        dbs = self.spool.dbs
        with self.spool.read() as txn, txn.cursor(db=dbs["due"]) as cur:
            if not cur.first():
                return out
            for dkey in cur.iternext(keys=True, values=False):
                due_ms, msg_id, index = records.split_due_key(dkey)
                if due_ms > now_ms or len(out) >= limit:
                    break
                raw = txn.get(records.rcpt_key(msg_id, index), db=dbs["rcpt"])
                if raw is None:
                    bad.append(dkey)  # stale index entry: the recipient is gone
                    continue
                try:
                    rec = Recipient.decode(raw)
                except SpoolCorrupt:
                    bad.append(dkey)
                    continue
                if self.writer.message(txn, msg_id) is None:
                    bad.append(dkey)  # its message record is missing or corrupt
                    continue
                out.append(Due(dkey, msg_id, index, rec))
        if bad:
            with self.spool.write() as wtxn:
                for dkey in bad:
                    _, msg_id, index = records.split_due_key(dkey)
                    wtxn.delete(dkey, db=dbs["due"])
                    self.spool.move_aside(wtxn, "rcpt", records.rcpt_key(msg_id, index))
                log.warning("due_entries_dropped", count=len(bad), reason="recipient missing or corrupt")
        return out

    def _commit(self, results: list[Result], leases: list[tuple[bytes, int, int]],
                fails: list[tuple[list[tuple[bytes, int, int]], dict[str, Any]]], now_ms: int,
                stats: TickStats) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        with self.spool.write() as txn:
            if self._outbox_written:
                self.spool.events_trim(txn, self._outbox_written)
            if results:
                self.writer.apply(txn, results, now_ms, stats, events)
            for items, why in fails:
                self.writer.expire_due(txn, items, now_ms, stats, events, **why)
            if leases:
                self.writer.lease(txn, leases, now_ms)
            self.spool.events_append(txn, events)
            # every event not yet in the accounting log: ours and ingest's (Reception), in order
            return self.spool.events_after(txn, self._outbox_written)

    # -- routing ------------------------------------------------------------------------------
    async def _resolve(self, domains: set[str]) -> dict[str, MxPlan | DnsError]:
        out: dict[str, MxPlan | DnsError] = {}
        missing = []
        for d in domains:
            plan = self.resolver.cached_plan(d)
            if plan is not None:
                out[d] = plan
            else:
                missing.append(d)
        if missing:
            # Do not hold the whole round for the slowest lookup: what resolves within a short wait
            # is dispatched now; the rest stays due and goes out in a later round (a finished lookup
            # wakes the loop).
            tasks = {asyncio.ensure_future(self.resolver.resolve_mx(d)): d for d in missing}
            for t in tasks:
                t.add_done_callback(lambda _t: self._wake.set())
            await asyncio.wait(tasks, timeout=RESOLVE_WAIT_S)
            for t, d in tasks.items():
                if not t.done():
                    continue
                exc = t.exception()
                if isinstance(exc, DnsError):
                    out[d] = exc
                elif exc is not None:
                    out[d] = DnsError(f"lookup failed: {exc!r}", permanent=False)
                else:
                    out[d] = t.result()
        return out

    def shard_of(self, site: str) -> int:
        return zlib.crc32(site.encode()) % self.nshards

    def _route(self, due: list[Due], plans: dict[str, MxPlan | DnsError], free: dict[int, int], now: float):
        max_rcpt = self.cfg.delivery.max_recipients_per_transaction
        groups: dict[tuple[int, str], list[Due]] = {}
        fails: list[tuple[list[tuple[bytes, int, int]], dict[str, Any]]] = []
        expired: list[tuple[bytes, int, int]] = []
        for d in due:
            msg = self.writer.cached(d.msg_id)
            if msg is None:
                continue
            if is_expired(msg.created_ms / 1000, now, self.cfg.queue.max_age_s):
                expired.append((d.dkey, d.msg_id, d.index))
                continue
            groups.setdefault((d.msg_id, d.rec.domain), []).append(d)
        if expired:
            fails.append((expired, dict(code=451, enhanced="4.4.7", text="message expired in queue (max age)",
                                        phase="queue", permanent=False)))
        jobs_by_shard: dict[int, list[dict[str, Any]]] = {}
        leases: list[tuple[bytes, int, int]] = []
        for (msg_id, domain), ds in groups.items():
            plan = plans.get(domain)
            if plan is None:
                continue  # lookup still running: stays due for the next round
            if isinstance(plan, DnsError):
                err = plan
                code = 550 if err.permanent else 451
                if err.enhanced == "5.1.10":
                    code = 556  # RFC 7505 §4.1
                fails.append(([(d.dkey, d.msg_id, d.index) for d in ds],
                              dict(code=code, enhanced=err.enhanced, text=f"DNS: {err}", phase="dns",
                                   permanent=err.permanent)))
                continue
            shard = self.shard_of(plan.site)
            room = free.get(shard, 0)
            if room <= 0:
                continue
            msg = self.writer.cached(msg_id)
            assert msg is not None
            step = 1 if msg.per_recipient else max_rcpt
            ds = ds[:room]
            free[shard] = room - len(ds)
            mx = [[h.preference, h.name] for h in plan.hosts]
            for i in range(0, len(ds), step):
                chunk = ds[i:i + step]
                self._job_seq += 1
                jobs_by_shard.setdefault(shard, []).append({
                    "id": self._job_seq, "msg": msg_id, "sender": msg.sender, "domain": domain,
                    "site": plan.site, "mx": mx, "per_rcpt": msg.per_recipient,
                    "rcpts": [[d.index, d.rec.address, d.rec.name, d.rec.variables] for d in chunk],
                })
                leases.extend((d.dkey, d.msg_id, d.index) for d in chunk)
        return jobs_by_shard, leases, fails

    # -- operations ---------------------------------------------------------------------------
    def drain(self) -> None:
        """Stop dispatching; ask workers to finish or return their jobs; the loop ends when all left."""
        if self.draining:
            return
        self.draining = True
        log.info("drain_started", workers=len(self.workers))
        for link in self.workers.values():
            link.proto.send({"t": "drain"})
        self._wake.set()

    def status(self) -> dict[str, Any]:
        stat = self.spool.stat()
        t = self.totals
        top = sorted(t.sites.items(), key=lambda kv: -sum(kv[1]))[:10]
        inflight_by_site: dict[str, int] = {}
        for link in self.workers.values():
            for _, idxs, site in link.jobs.values():
                inflight_by_site[site] = inflight_by_site.get(site, 0) + len(idxs)
        return {
            "pid": os.getpid(),
            "uptime_s": round(self.clock() - self.started_at, 1),
            "draining": self.draining,
            "queue": {"messages": stat["msg"], "recipients": stat["rcpt"], "in_flight": stat["inflight"],
                      "queued": stat["rcpt"] - stat["inflight"], "outbox": stat["outbox"], "corrupt": stat["corrupt"]},
            "since_start": {"delivered": t.delivered, "bounced": t.bounced, "deferred": t.deferred,
                            "expired": t.expired, "returned": t.returned, "unknown": t.unknown},
            "sites_top10": [{"site": s, "delivered": c[0], "deferred": c[1], "bounced": c[2],
                             "in_flight": inflight_by_site.get(s, 0)} for s, c in top],
            "workers": [{"shard": w.shard, "pid": w.pid, "jobs": len(w.jobs), "in_flight": w.inflight,
                         "draining": w.draining} for w in sorted(self.workers.values(), key=lambda w: w.shard)],
            "workers_expected": self.nshards,
            "ticks": self.ticks,
            "last_tick": self.last_tick,
        }
