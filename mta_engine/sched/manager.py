"""The queue manager: due scan -> routing -> dispatch to workers; applies outcomes.

Contract: never faces the network except its DNS resolver (to learn each destination's site).
It is the sole writer of recipient state after ingest (``sched.queue.QueueWriter``); all its LMDB
work runs on one spool-writer thread, one synced transaction per tick (group commit), so the
event loop keeps reading worker frames while the disk works. Accounting lines are written only
after the transaction that produced them committed (exactly once, see ``obs.accounting``).

A tick: take the results that arrived -> scan the due index for up to the free worker capacity ->
resolve each destination's MX set (its *site*) -> send jobs (sticky least-loaded shard per site)
-> one transaction: apply results, fail what DNS or max age rules out -> write the log.
A lease is held in memory: a recipient in flight keeps its due entry, which the scan skips
(``_taken``: from staging until its outcome is committed); nothing is written when a job goes out,
and after a crash the recipient is simply due. A worker that disconnects, or leaves a job unanswered for
``[queue] lease_s``, has its jobs returned to the queue at once (no attempt counted).
"""

from __future__ import annotations

import asyncio
import bisect
import os
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import msgpack
import structlog

from ..config import LMTP_SITE_PREFIX, Config
from ..dsn.classify import Classifier
from ..errors import DnsError, SpoolCorrupt
from ..obs import webhooks
from ..obs.accounting import AccountingLog
from ..obs.rotation import last_written_seq
from ..proc.ipc import FrameProtocol
from ..routing.mx import MxHost, MxPlan
from ..spool import records
from ..spool.records import QueuedAddress, Recipient, last_seq
from ..spool.store import Spool
from .backoff import is_expired
from .lease import LeasedTokens
from .limits import LimitTable, SiteLimits
from .queue import Delivered, DsnPolicy, QueueWriter, Result, TickStats
from .ready import Flow, ReadyQueues, StagedJob
from .retry import RetryPolicy
from .shared_limits import RateStore, SharedLimits
from .signals import ThrottleRules
from .site import Mode, SiteLanes, SiteState

log = structlog.get_logger("manager")

SUSPENSIONS_KEY = b"suspensions"
"""meta key: the operator's suspensions (kind -> values), saved with the next round's commit."""
SWEEP_S = 10.0
"""How often ready and held recipients are checked against max age."""
FULL_SCAN_S = 30.0
"""How often the due scan starts again from the very beginning of the index."""
CURSOR_BACK_MS = 2000
"""After catching up, the next scan starts this far before now: entries committed by ingest a
moment ago (their due time is their commit time) sort just before the present."""
LOG_POSITION_S = 0.5
"""How often the manager reads the accounting log's position (for trimming the outbox)."""
_NEVER_MS = 1 << 62
"""A lease expiry that never comes (a job whose lease already ran out)."""
RESOLVE_WAIT_S = 0.05
"""How long a scheduling round waits for MX lookups before dispatching what is resolved."""
SINGLE_LANE_PREFIXES = (LMTP_SITE_PREFIX,)
"""Sites whose sessions never use [delivery] sources (LMTP, config.LMTP_SITE_PREFIX): one lane."""


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


def _job_rcpts(job: StagedJob) -> list[list[Any]]:
    """A job's recipients for the worker: ``[index, address, name, variables, notify, orcpt]``;
    for a shared body (nothing rendered) only ``[index, address]`` unless it has DSN parameters."""
    if job.per_recipient:
        return [[idx, rec.address, rec.name, rec.variables, rec.notify, rec.orcpt] for _, idx, rec in job.items]
    return [[idx, rec.address] if rec.notify is None and rec.orcpt is None
            else [idx, rec.address, None, None, rec.notify, rec.orcpt] for _, idx, rec in job.items]


def _dkey(rcpts: dict[int, tuple[str, int, bytes]], index: int) -> bytes | None:
    """The due entry of recipient ``index`` of a job in flight (None: not one of its recipients)."""
    entry = rcpts.get(index)
    return entry[2] if entry is not None else None


@dataclass(slots=True)
class _Merge:
    """One message's due recipients at one site, gathered across domains before they are staged."""

    flow: Flow
    per_recipient: bool
    step: int
    items: list[tuple[bytes, int, Recipient | QueuedAddress]] = field(default_factory=list)
    spans: list[tuple[str, int]] = field(default_factory=list)
    """(domain, index of its first item) in item order."""

    def domains_in(self, start: int, end: int) -> tuple[str, ...]:
        """The domains with items in ``items[start:end]``, in item order."""
        n = bisect.bisect_right(self.spans, start, key=lambda span: span[1]) - 1  # the span holding ``start``
        out = []
        while n < len(self.spans) and self.spans[n][1] < end:
            out.append(self.spans[n][0])
            n += 1
        return tuple(out)


@dataclass(slots=True)
class Due:
    dkey: bytes
    msg_id: int
    index: int
    rec: Recipient | QueuedAddress
    domain: str
    """The recipient's domain, lower case (taken once, by the scan)."""


class Manager:
    def __init__(self, cfg: Config, spool: Spool, resolver: Any, acct: AccountingLog | None,
                 clock: Callable[[], float] = time.time, rate_store: RateStore | None = None) -> None:
        self.cfg = cfg
        self.spool = spool
        self.resolver = resolver
        self.acct = acct
        self.clock = clock
        self.nshards = cfg.worker_count
        self._site_shard: dict[str, int] = {}  # sticky site -> worker shard (see shard_of)
        self._shard_load: tuple[float, dict[int, int]] | None = None  # (now, load per shard) this round
        self._ready_counts: dict[str, int] = {}
        q, sc = cfg.queue, cfg.sched
        self.classifier = Classifier.from_files(*cfg.bounce.rules, include_default=cfg.bounce.default_rules)
        dsn = DsnPolicy(cfg.dsn.reporting_mta or cfg.ehlo_name, cfg.dsn.delay_after_s,
                        cfg.dsn.delay_when_notify_absent) if cfg.dsn.enabled else None
        self.writer = QueueWriter(spool, retry=RetryPolicy.from_config(q), max_age_s=q.max_age_s, lease_s=q.lease_s,
                                  classifier=self.classifier, dsn=dsn,
                                  unknown_policy=cfg.delivery.unknown_outcome)
        self.limit_table = LimitTable.from_config({"defaults": sc.defaults, "site": sc.site},
                                                  SiteLimits.from_config(cfg.delivery, q))
        self.rules = ThrottleRules.from_files(*sc.throttle_rules, include_default=sc.default_throttle_rules)
        self.sites: dict[str, SiteLanes] = {}
        """Per site, one lane (``SiteState``) per egress source, or one lane without sources."""
        self.sources: list[str] = [str(src["ip"]) for src in cfg.delivery.sources]
        self._job_lane: dict[int, SiteState] = {}
        """job id -> the lane it was dispatched on (its outcome feeds that lane)."""
        self.shared: SharedLimits | None = None
        if rate_store is not None:
            rc = cfg.redis
            self.shared = SharedLimits(rate_store, timeout_s=rc.timeout_s, retry_s=rc.retry_s, clock=clock,
                                       on_change=self._shared_changed, wake=lambda: self._wake.set())
        self.site_info: dict[str, list[str]] = {}
        self.mx_of: dict[str, list[list[Any]]] = {}
        self.ready = ReadyQueues(flow_max=sc.flow_stage_max, total_max=sc.staged_max)
        self.suspensions: dict[str, set[str]] = {"site": set(), "domain": set(), "campaign": set(), "tenant": set()}
        self._cursor: bytes | None = None
        self._job_meta: dict[int, tuple[int, dict[int, tuple[str, int, bytes]]]] = {}
        """job id -> (lease expiry ms, recipient index -> (address, attempts so far, due entry))."""
        self._dns_wait: dict[str, list[Due]] = {}
        """Due recipients whose destination's MX lookup is still running."""
        self._mx_tasks: dict[str, asyncio.Future[Any]] = {}
        self._taken: set[bytes] = set()
        """Recipient keys the manager holds: waiting for their MX lookup (``_dns_wait``), staged in
        the ready queues, or handed to workers (or returned) with their outcome not committed yet.
        The scan skips them. One set for all, so staging and dispatch move nothing; a recipient
        leaves it after the commit that applies its outcome (``_unlease``), when its staged job is
        taken out of the queues (``_sweep_expired``), or when its lookup ends (``tick``; staging
        puts it back)."""
        self._rescan_from: bytes | None = None
        """The earliest due entry a scan passed without staging (lookup pending, flow full)."""
        self._rescan_dns = False
        self._rescan_flows: set[tuple[str, Any]] = set()
        self._full_scan_at = 0.0
        self._sweep_at = 0.0
        self._suspensions_dirty = False
        self._sites_tick_at = 0.0
        self.workers: dict[int, WorkerLink] = {}
        self._results: list[Result] = []
        self._delivered: list[Delivered] = []
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
        self._log_checked_at = float("-inf")  # with acct None: when the log file's position was last read

    @property
    def spool_executor(self) -> ThreadPoolExecutor:
        """The one thread that writes the spool; control handlers that touch the spool run here too."""
        return self._executor

    def __repr__(self) -> str:
        return (f"<Manager workers={sorted(self.workers)} results={len(self._results)} ticks={self.ticks} "
                f"draining={self.draining}>")

    # -- startup ------------------------------------------------------------------------------
    def recover(self) -> None:
        """Re-queue what a previous manager had in flight, and write outbox events not yet logged."""
        now_ms = int(self.clock() * 1000)
        with self.spool.write() as txn:
            n = self.writer.requeue_inflight(txn, now_ms)
            raw = txn.get(SUSPENSIONS_KEY, db=self.spool.dbs["meta"])
        if raw:  # operator suspensions survive a restart
            try:
                for kind, values in msgpack.unpackb(raw, raw=False).items():
                    if kind in self.suspensions:
                        self.suspensions[kind].update(values)
                log.info("suspensions_restored", **{k: sorted(v) for k, v in self.suspensions.items() if v})
            except (ValueError, TypeError, AttributeError, msgpack.UnpackException):
                log.warning("suspensions_unreadable")
        if n:
            log.info("inflight_requeued", count=n)
        self._flush_outbox()

    def _flush_outbox(self) -> None:
        if self.acct is None:  # the accounting process writes the log (proc/accounting.py)
            self._refresh_log_position(force=True)
            return
        with self.spool.read() as txn:
            events = self.spool.events_after(txn, self.acct.written_seq)
        if events:
            self.acct.write(events)
            self._outbox_written = max(self._outbox_written, events[-1].get("event_seq", 0))
        self._outbox_written = max(self._outbox_written, self.acct.written_seq)

    def _refresh_log_position(self, force: bool = False) -> None:
        """With the log written by the accounting process: how far the file got, read from the
        file itself at most every ``LOG_POSITION_S``; the outbox is trimmed only behind it."""
        now = time.monotonic()
        if force or now - self._log_checked_at >= LOG_POSITION_S:
            self._log_checked_at = now
            self._outbox_written = max(self._outbox_written, last_written_seq(self.cfg.log.accounting))

    # -- worker links ------------------------------------------------------------------------
    def on_frame(self, proto: FrameProtocol, frame: dict[str, Any]) -> None:
        t = frame.get("t")
        if t == "outcomes":
            link = proto.peer.get("link")
            freed: set[str] = set()
            for item in frame["items"]:
                site = self._on_outcome(link, item)
                if site is not None:
                    freed.add(site)
            self._dispatch_freed(freed)
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
        now = self.clock()
        for job_id, (msg_id, idxs, site) in link.jobs.items():
            meta = self._job_meta.pop(job_id, None)
            rcpts = meta[1] if meta is not None else {}
            lane = self._job_lane.pop(job_id, None)
            if lane is not None:
                lane.on_result(now, "returned")
            for i in idxs:
                self._returns.append(Result(msg_id, i, 0, site=site, dkey=_dkey(rcpts, i)))
                n += 1
        link.jobs.clear()
        link.inflight = 0
        log.warning("worker_lost", shard=link.shard, pid=link.pid, returned=n)

    def _on_outcome(self, link: WorkerLink | None, item: dict[str, Any]) -> str | None:
        """Take one job report; returns the job's site when the job ended (its slot is free)."""
        if link is None or item["id"] not in link.jobs:
            return None
        msg_id, idxs, site = link.jobs[item["id"]]
        meta = self._job_meta.get(item["id"], (0, {}))
        if item.get("partial"):
            # outcomes of the transactions finished so far in a longer job: applied at once, so a
            # crash later in the job cannot make these recipients go out twice
            done = self._collect(msg_id, site, item, meta)
            idxs[:] = [i for i in idxs if i not in done]
            link.inflight -= len(done)
            return None
        del link.jobs[item["id"]]
        self._job_meta.pop(item["id"], None)
        link.inflight -= len(idxs)
        self._site_feedback(self._job_lane.pop(item["id"], None), item, self.clock())
        seen = self._collect(msg_id, site, item, meta)
        for idx in idxs:  # a worker must answer for every recipient; if not, count nothing and retry
            if idx not in seen:
                self._results.append(Result(msg_id, idx, 0, site=site, dkey=_dkey(meta[1], idx)))
        return site

    def _dispatch_freed(self, sites: set[str]) -> None:
        """Reports just ended jobs at ``sites``: send those sites' next staged jobs now rather than
        in the next round, which first waits for its commit. A busy site's window (up to
        ``max_connections_per_site`` jobs) then refills as its jobs end, not once per round."""
        if not sites:
            return
        free = self.capacity()
        if not free:
            return
        now = self.clock()
        jobs_by_shard, sent = self._dispatch(free, now, sites)
        if sent:
            self._send_jobs(jobs_by_shard, int(now * 1000))
            for job in sent:
                self.ready.release(job)

    def _collect(self, msg_id: int, site: str, item: dict[str, Any],
                 meta: tuple[int, dict[int, tuple[str, int, bytes]]]) -> set[int]:
        """Queue a job report's outcomes for the next commit; returns the indexes it answered.
        A report's entries come grouped by reply (``outcome.grouped``: a list of indexes, or one
        index); consecutive deliveries with the same reply become one ``Delivered`` group."""
        rcpts = meta[1]
        tls, mx, ip = item.get("tls"), item.get("mx"), item.get("ip")
        seen: set[int] = set()
        group: Delivered | None = None
        for idxs, code, enhanced, text, phase, unknown in item["results"]:
            if type(idxs) is int:
                idxs = (idxs,)
            seen.update(idxs)
            if not (200 <= code < 300) or unknown:
                group = None
            elif group is None or group.code != code or group.text != text or group.enhanced != enhanced \
                    or group.phase != phase:
                group = Delivered(msg_id, [], code, enhanced, text, phase, site, mx, ip, tls)
                self._delivered.append(group)
            for idx in idxs:
                address, attempts, dkey = rcpts.get(idx) or (None, 0, None)
                if group is not None and dkey is not None:
                    group.members.append((idx, address, attempts, dkey))
                    continue
                self._results.append(Result(msg_id, idx, code, enhanced, text, phase, site, mx, ip, bool(unknown),
                                            tls=tls, address=address, attempts=attempts, dkey=dkey))
        return seen

    # -- the loop -------------------------------------------------------------------------------
    async def run(self) -> None:
        tick_s = self.cfg.queue.tick_s
        idle_s = 0.25
        while True:
            busy = await self.tick()
            if self.draining and not self.workers and not self._results and not self._returns \
                    and not self._delivered:
                break
            if not busy:
                try:
                    await asyncio.wait_for(self._wake.wait(), min(idle_s, self._next_ready_s()))
                except asyncio.TimeoutError:
                    pass
            else:
                await asyncio.sleep(tick_s)
            self._wake.clear()
        self._executor.shutdown(wait=True)
        if self.shared is not None:
            await self.shared.close()
        self.stopped.set()

    def _next_ready_s(self, limit_s: float = 0.25) -> float:
        """The soonest a site with ready jobs may dispatch again (rates, dead period)."""
        now = self.clock()
        best = limit_s
        for site in self.ready.sites():
            best = min(best, self.sites[site].next_ready_s(now))
        return max(0.005, best)

    def capacity(self) -> dict[int, int]:
        if self.draining:
            return {}
        cap = self.cfg.queue.max_inflight_per_worker
        return {s: cap - w.inflight for s, w in self.workers.items() if not w.draining and w.inflight < cap}

    async def tick(self) -> bool:
        """One scheduling round; returns whether there was anything to do."""
        loop = asyncio.get_running_loop()
        results, self._results = self._results, []
        delivered, self._delivered = self._delivered, []
        returns, self._returns = self._returns, []
        free = self.capacity()
        due: list[Due] = []
        now = self.clock()
        now_ms = int(now * 1000)
        t0 = time.perf_counter()
        if free and not self.ready.full and sum(map(len, self._dns_wait.values())) < self.ready.total_max:
            limit = min(self.cfg.queue.scan_batch, self.ready.total_max - len(self.ready))
            due = await loop.run_in_executor(self._executor, self._scan_due, now_ms, limit, now)
        fails: list[Any] = []
        if now >= self._sweep_at:
            self._sweep_at = now + SWEEP_S
            fails.extend(self._sweep_expired(now))
            self._expire_leases(now_ms)
            self._reconcile_in_flight()
        t1 = time.perf_counter()
        plans = await self._resolve({d.domain for d in due} | set(self._dns_wait))
        for domain in [d for d in self._dns_wait if d in plans]:
            held = self._dns_wait.pop(domain)
            self._taken.difference_update(d.dkey[8:] for d in held)  # staged again below, or failed
            due.extend(held)
        t2 = time.perf_counter()
        fails.extend(self._stage(due, plans, now))
        free = self.capacity()  # reports that came during the awaits above may have dispatched already
        jobs_by_shard, sent = self._dispatch(free, now) if free else ({}, [])
        # Nothing is written for a job that goes out: its recipients keep their due entries and are
        # in ``_taken`` (the scan skips them) until the commit that applies their outcomes.
        self._send_jobs(jobs_by_shard, now_ms)
        for job in sent:
            self.ready.release(job)
        site_events = self._log_site_changes(now)
        if not (results or delivered or returns or fails or site_events or self._suspensions_dirty
                or self._outbox_pending()):
            return bool(due or sent)
        stats = TickStats()
        t3 = time.perf_counter()
        if self.acct is None:
            self._refresh_log_position()
        events = await loop.run_in_executor(self._executor, self._commit, results + returns, delivered, fails,
                                            now_ms, stats, site_events)
        self._unlease(results, returns, delivered)
        t4 = time.perf_counter()
        self.last_tick = {"scan_ms": round((t1 - t0) * 1000, 2), "resolve_ms": round((t2 - t1) * 1000, 2),
                          "route_ms": round((t3 - t2) * 1000, 2), "commit_ms": round((t4 - t3) * 1000, 2),
                          "due": len(due), "results": len(results) + sum(len(g.members) for g in delivered),
                          "leased": sum(len(job.items) for job in sent)}
        log.debug("tick_done", **self.last_tick)
        self.commits += 1
        self.ticks += 1
        if events and self.acct is not None:
            self.acct.write(events)
            self._outbox_written = last_seq(events)
        self._count(stats)
        return True

    def _send_jobs(self, jobs_by_shard: dict[int, list[dict[str, Any]]], now_ms: int) -> None:
        """Hand the round's jobs to their workers and remember them (what each must answer for)."""
        expiry_ms = now_ms + self.writer.lease_ms
        for shard, jobs in jobs_by_shard.items():
            metas = [job.pop("_meta") for job in jobs]
            link = self.workers.get(shard)
            if link is None or not link.proto.send({"t": "jobs", "items": jobs}):
                # the worker went away between scan and send: its recipients come back now (still
                # skipped by the scan until the return is committed), and the site slots they
                # took are given back
                for job, meta in zip(jobs, metas):
                    lane = self._job_lane.pop(job["id"], None)
                    if lane is not None:
                        lane.on_result(self.clock(), "returned")
                    for idx, (_, _, dkey) in meta.items():
                        self._returns.append(Result(job["msg"], idx, 0, site=job["site"], dkey=dkey))
                continue
            for job, meta in zip(jobs, metas):
                link.jobs[job["id"]] = (job["msg"], list(meta), job["site"])
                self._job_meta[job["id"]] = (expiry_ms, meta)
                link.inflight += len(meta)

    def _unlease(self, results: list[Result], returns: list[Result], delivered: list[Delivered]) -> None:
        """After the commit that applied them: these recipients are no longer taken (in flight)."""
        taken = self._taken
        for r in (*results, *returns):
            taken.discard(r.dkey[8:] if r.dkey is not None else records.rcpt_key(r.msg_id, r.index))
        for g in delivered:
            for m in g.members:
                taken.discard(m[3][8:])

    def _expire_leases(self, now_ms: int) -> None:
        """A job its worker has not answered within ``[queue] lease_s``: its recipients are due
        again now (no attempt counted). The job keeps its site slot (its session may still be
        open), and a late report of it is still applied (a recipient already final is skipped)."""
        for link in self.workers.values():
            late = 0
            for jid, (msg_id, idxs, site) in link.jobs.items():
                meta = self._job_meta.get(jid)
                if meta is None or meta[0] > now_ms or not idxs:
                    continue
                late += 1
                self._job_meta[jid] = (_NEVER_MS, meta[1])
                link.inflight -= len(idxs)
                self._returns.extend(Result(msg_id, i, 0, site=site, dkey=_dkey(meta[1], i)) for i in idxs)
                idxs.clear()
            if late:
                log.warning("leases_expired", shard=link.shard, pid=link.pid, jobs=late)

    def _outbox_pending(self) -> bool:
        """Events committed by ingest (Reception) that the log has not seen yet (only when the
        manager writes the log itself)."""
        if self.acct is None:
            return False
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
    def _scan_due(self, now_ms: int, limit: int, now: float) -> list[Due]:
        """Due recipients not yet staged, continuing from where the last scan stopped."""
        out: list[Due] = []
        bad: list[bytes] = []
        dbs = self.spool.dbs
        taken = self._taken
        split, decode, message = records.split_due_key, Recipient.decode, self.writer.message
        rcpt_db = dbs["rcpt"]
        known, shared = -1, False  # the last message found (a scan meets one message's run at a time)
        with self.spool.read() as txn, txn.cursor(db=dbs["due"]) as cur:
            start = self._cursor
            if self._rescan_from is not None and (self._rescan_dns or any(
                    self.ready.room(*f) >= max(1, self.ready.flow_max // 10) for f in self._rescan_flows)):
                start = min(start, self._rescan_from) if start is not None else None
                self._rescan_from, self._rescan_dns, self._rescan_flows = None, False, set()
            if start is None or now >= self._full_scan_at:
                self._full_scan_at = now + FULL_SCAN_S
                start = None
            if not (cur.set_range(start) if start is not None else cur.first()):
                self._cursor = records.due_key(max(0, now_ms - CURSOR_BACK_MS), 0, 0)
                return out
            self._cursor = records.due_key(max(0, now_ms - CURSOR_BACK_MS), 0, 0)
            get = txn.get
            for dkey, value in cur.iternext(keys=True, values=True):
                due_ms, msg_id, index = split(dkey)
                if due_ms > now_ms:
                    break
                if len(out) >= limit:
                    self._cursor = dkey  # continue here next round
                    break
                rkey = dkey[8:]  # = records.rcpt_key(msg_id, index)
                if rkey in taken:
                    continue
                if msg_id != known:
                    msg = message(txn, msg_id)
                    if msg is None:
                        bad.append(dkey)  # its message record is missing or corrupt
                        continue
                    known, shared = msg_id, not msg.per_recipient
                rec: Recipient | QueuedAddress | None = None
                if value and shared:  # queued by ingest, never attempted: the address is the value
                    try:
                        rec = QueuedAddress(value.decode())
                    except UnicodeDecodeError:
                        pass  # read the record instead
                if rec is None:
                    raw = get(rkey, db=rcpt_db)
                    if raw is None:
                        bad.append(dkey)  # stale index entry: the recipient is gone
                        continue
                    try:
                        rec = decode(raw)
                    except SpoolCorrupt:
                        bad.append(dkey)
                        continue
                out.append(Due(dkey, msg_id, index, rec, rec.domain))
        if bad:
            with self.spool.write() as wtxn:
                for dkey in bad:
                    _, msg_id, index = records.split_due_key(dkey)
                    wtxn.delete(dkey, db=dbs["due"])
                    self.spool.move_aside(wtxn, "rcpt", records.rcpt_key(msg_id, index))
                log.warning("due_entries_dropped", count=len(bad), reason="recipient missing or corrupt")
        return out

    def _commit(self, results: list[Result], delivered: list[Delivered],
                fails: list[tuple[list[tuple[bytes, int, int]], dict[str, Any]]], now_ms: int,
                stats: TickStats, site_events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = list(site_events)
        with self.spool.write() as txn:
            if self._outbox_written:  # webhook endpoints may still need older events (up to retention)
                self.spool.events_trim(txn, min(self._outbox_written, webhooks.trim_floor(
                    txn, self.spool, self.cfg.webhooks, now_ms / 1000)))
            if delivered:
                self.writer.apply_delivered(txn, delivered, now_ms, stats, events)
            if results:
                self.writer.apply(txn, results, now_ms, stats, events)
            for items, why in fails:
                self.writer.expire_due(txn, items, now_ms, stats, events, **why)
            if self._suspensions_dirty:
                self._suspensions_dirty = False
                txn.put(SUSPENSIONS_KEY, msgpack.packb({k: sorted(v) for k, v in self.suspensions.items()}),
                        db=self.spool.dbs["meta"])
            self.spool.events_append(txn, events)
            # every event not yet in the accounting log: ours and ingest's (Reception), in order;
            # our own batch is in hand, only the others are read back
            if self.acct is None:
                return events  # the accounting process reads the whole outbox itself
            own = last_seq(events) if events else None
            others = self.spool.events_after(txn, self._outbox_written, skip_key=own)
            if not others:
                return events
            return sorted(others + events, key=lambda e: e["event_seq"])

    # -- routing ------------------------------------------------------------------------------
    async def _resolve(self, domains: set[str]) -> dict[str, MxPlan | DnsError]:
        out: dict[str, MxPlan | DnsError] = {}
        missing = []
        relay = self.cfg.relay
        lmtp = self.cfg.lmtp
        for d in domains:
            if lmtp.routes and (endpoint := lmtp.endpoint_for(d)) is not None:
                # LMTP (issue 3): no DNS; every domain of one endpoint shares the site lmtp:<endpoint>.
                # The worker connects to the endpoint named in the site (proc/worker.py:_connect_lmtp).
                out[d] = MxPlan(d, (MxHost(0, endpoint),), implicit=True, site=lmtp.site(endpoint), ttl_s=86400)
                continue
            if relay.routes(d):
                # Smarthost (issue 3): no DNS; every relayed domain shares one site (one window,
                # one set of limits). The worker connects to [relay] host:port for this site.
                out[d] = MxPlan(d, (MxHost(0, relay.host),), implicit=True, site=relay.site, ttl_s=86400)
                continue
            plan = self.resolver.cached_plan(d)
            if plan is not None:
                out[d] = plan
            else:
                missing.append(d)
        if missing:
            # Do not hold the whole round for the slowest lookup: what resolves within a short wait
            # is dispatched now; the rest stays due and goes out in a later round (a finished lookup
            # wakes the loop).
            tasks: dict[asyncio.Future[Any], str] = {}
            for d in missing:
                t = self._mx_tasks.get(d)
                if t is None:  # one lookup task per domain, however many rounds it takes
                    t = self._mx_tasks[d] = asyncio.ensure_future(self.resolver.resolve_mx(d))
                    t.add_done_callback(lambda _t: self._wake.set())
                tasks[t] = d
            await asyncio.wait(tasks, timeout=RESOLVE_WAIT_S)
            for t, d in tasks.items():
                if not t.done():
                    continue
                del self._mx_tasks[d]
                exc = t.exception()
                if isinstance(exc, DnsError):
                    out[d] = exc
                elif exc is not None:
                    out[d] = DnsError(f"lookup failed: {exc!r}", permanent=False)
                else:
                    out[d] = t.result()
        return out

    def shard_of(self, site: str, now: float) -> int:
        """The worker shard for ``site``: sticky while the site is busy, else the least loaded.

        A site stays on one worker while it has jobs in flight or warm (pooled) sessions, so its
        connections live in one pool and the window bounds them. When it is idle it is placed
        again on the shard with the least work (recipients in flight plus recipients ready for
        the sites placed there); so is a site whose worker went away. ``crc32(site) mod N`` put
        a site holding 37% of the W1 mix with half the others on one worker: 68% of the worker
        CPU on one core while the other idled (bench/results/OPTIMIZATIONS.md).
        """
        shard = self._site_shard.get(site)
        st = self.sites.get(site)
        if shard in self.workers and (st is None or st.in_flight or st.warm(now)):
            return shard  # busy on a live worker: stay (a site never spans two pools)
        load = self._loads(now)
        if shard in load:
            load[shard] -= self._ready_counts.get(site, 0)
        best = min(load, key=lambda s: (load[s], s)) if load else zlib.crc32(site.encode()) % self.nshards
        if load:
            load[best] += self._ready_counts.get(site, 0)
        self._site_shard[site] = best
        return best

    def _loads(self, now: float) -> dict[int, int]:
        """Work per live shard, computed once per dispatch round (``now``)."""
        if self._shard_load is not None and self._shard_load[0] == now:
            return self._shard_load[1]
        counts = self._ready_counts = self.ready.counts_by_site()
        load = {s: w.inflight for s, w in self.workers.items() if not w.draining}
        for site, n in counts.items():
            shard = self._site_shard.get(site)
            if shard in load:
                load[shard] += n
        self._shard_load = (now, load)
        return load

    def site_state(self, site: str, domain: str, hosts: list[str], now: float) -> SiteLanes:
        st = self.sites.get(site)
        if st is None:
            sc = self.cfg.sched
            sources: list[str | None] = [None]
            if self.sources and not site.startswith(SINGLE_LANE_PREFIXES):
                sources = list(self.sources)
            lanes = []
            for src in sources:  # one lane per egress source: each gets the site's limits
                lane = SiteState(site, self.limit_table.for_site(site, [domain], hosts, src), now,
                                 cohort=sc.dead_after_failures, dead_s=sc.dead_s, max_dead_s=sc.max_dead_s,
                                 idle_s=self.cfg.delivery.idle_timeout_s, source=src)
                self._attach_shared(lane, now)
                lanes.append(lane)
            st = self.sites[site] = SiteLanes(site, lanes, start=len(self.sites))
            self.site_info[site] = [h for h in hosts]
            if site in self.suspensions["site"]:
                st.suspend(now, "suspended by operator")
        return st

    def _attach_shared(self, lane: SiteState, now: float) -> None:
        """A lane whose limits say ``shared`` takes its message rate from the fleet-wide bucket."""
        rate = lane.limits.shared_rate_per_s
        if self.shared is None or not lane.limits.shared or rate <= 0:
            return
        key = f"rate:{lane.site}" + (f":{lane.source}" if lane.source is not None else "")
        lane.shared = LeasedTokens(key, rate, batch_s=self.cfg.redis.batch_s)
        if not self.shared.up:
            lane.set_shared_up(now, False, self.cfg.redis.fleet_size)

    def _shared_changed(self, up: bool) -> None:
        """The shared store went down (local fallback limits) or answers again (shared rates)."""
        now = self.clock()
        for grp in self.sites.values():
            for lane in grp.lanes:
                if lane.shared is not None:
                    lane.set_shared_up(now, up, self.cfg.redis.fleet_size)
        self._wake.set()

    def _stage(self, due: list[Due], plans: dict[str, MxPlan | DnsError], now: float) -> list[Any]:
        """Put due recipients in their site's ready queue; return what fails without a connection.

        One message's recipients at domains that share a site (the same MX hosts) go into the same
        jobs, so one transaction carries them (Postfix groups per next hop; W2 at 100,000: 7,486 ->
        5,333 transactions). A suspended domain, or one with its own ``[tls] per_domain`` policy,
        keeps jobs of its own; the worker splits a job whose domains have different MTA-STS policies.
        """
        groups: dict[tuple[int, str], list[Due]] = {}
        for d in due:
            groups.setdefault((d.msg_id, d.domain), []).append(d)
        fails: list[tuple[list[tuple[bytes, int, int]], dict[str, Any]]] = []
        merged: dict[tuple[int, str, str | None], _Merge] = {}
        flow_used: dict[tuple[str, Any], int] = {}  # recipients staged per (site, flow) in this call
        own_policy = self.cfg.tls.per_domain
        for (msg_id, domain), ds in groups.items():
            plan = plans.get(domain)
            msg = self.writer.cached(msg_id)
            if msg is None:
                continue
            if plan is None:  # lookup still running: hold them here (not re-read from the spool)
                self._dns_wait.setdefault(domain, []).extend(ds)
                self._taken.update(d.dkey[8:] for d in ds)
                continue
            if isinstance(plan, DnsError):
                code = 550 if plan.permanent else 451
                if plan.enhanced == "5.1.10":
                    code = 556  # RFC 7505 §4.1
                fails.append(([(d.dkey, d.msg_id, d.index) for d in ds],
                              dict(code=code, enhanced=plan.enhanced, text=f"DNS: {plan}", phase="dns",
                                   permanent=plan.permanent)))
                continue
            st = self.site_state(plan.site, domain, [h.name for h in plan.hosts], now)
            self.mx_of[plan.site] = [[h.preference, h.name] for h in plan.hosts]
            if is_expired(msg.created_ms / 1000, now, st.limits.max_age_s):
                fails.append(([(d.dkey, d.msg_id, d.index) for d in ds], self._expiry_failure(plan.site, st)))
                continue
            flow = (msg.priority, msg.tenant, msg.campaign)
            room = self.ready.room(plan.site, flow) - flow_used.get((plan.site, flow), 0)
            if len(ds) > room:  # the flow has enough ready: the rest waits in the due index
                self._note_rescan(ds[room].dkey, flow=(plan.site, flow))
                ds = ds[:room]
            if not ds:
                continue
            flow_used[(plan.site, flow)] = flow_used.get((plan.site, flow), 0) + len(ds)
            alone = domain if domain in own_policy or domain in self.suspensions["domain"] else None
            acc = merged.get((msg_id, plan.site, alone))
            if acc is None:
                step = self.cfg.sched.messages_per_job if msg.per_recipient \
                    else st.limits.max_recipients_per_transaction
                acc = merged[(msg_id, plan.site, alone)] = _Merge(flow, msg.per_recipient, step)
            acc.spans.append((domain, len(acc.items)))
            acc.items.extend((d.dkey, d.index, d.rec) for d in ds)
        taken = self._taken
        for (msg_id, site, _), acc in merged.items():
            taken.update(it[0][8:] for it in acc.items)
            for k in range(0, len(acc.items), acc.step):
                domains = acc.domains_in(k, k + acc.step)
                self.ready.stage(StagedJob(msg_id, domains[0], site, acc.flow, acc.per_recipient,
                                           acc.items[k:k + acc.step], domains if len(domains) > 1 else ()))
        return fails

    def _note_rescan(self, dkey: bytes, *, dns: bool = False, flow: tuple[str, Any] | None = None) -> None:
        if self._rescan_from is None or dkey < self._rescan_from:
            self._rescan_from = dkey
        self._rescan_dns |= dns
        if flow is not None:
            self._rescan_flows.add(flow)

    @staticmethod
    def _expiry_failure(site: str | None, st: SiteLanes | None) -> dict[str, Any]:
        return dict(code=451, enhanced="4.4.7", text="message expired in queue (max age reached)", phase="queue",
                    permanent=False, site=site, max_age_s=st.limits.max_age_s if st else None)

    def _held(self, job: StagedJob) -> bool:
        s = self.suspensions
        return job.campaign in s["campaign"] or job.tenant in s["tenant"] \
            or any(d in s["domain"] for d in job.all_domains)

    def _dispatch(self, free: dict[int, int], now: float, only: set[str] | None = None
                  ) -> tuple[dict[int, list[dict[str, Any]]], list[StagedJob]]:
        """Pop jobs from the ready queues (of ``only`` these sites, if given) as far as each site's
        window and rates allow."""
        jobs_by_shard: dict[int, list[dict[str, Any]]] = {}
        sent: list[StagedJob] = []
        for site in self.ready.sites() if only is None else [s for s in only if self.ready.has_jobs(s)]:
            grp = self.sites[site]
            rooms = grp.rooms(now)  # jobs each lane (egress source) may start now
            if not any(rooms):
                if self.shared is not None:
                    self._ask_shared(grp, now)
                continue
            shard = self.shard_of(site, now)
            while free.get(shard, 0) > 0 and any(rooms):
                job = self.ready.pop(site)
                if job is None:
                    break
                if self._held(job):
                    self.ready.hold(job)
                    continue
                st = grp.pick(rooms)  # round robin among the lanes with room
                assert st is not None
                cap = min(free[shard], st.message_room(now))
                if len(job.items) > cap:
                    self.ready.push_back(job.split(max(1, cap)))
                st.on_dispatch(now, 1)
                extra = len(job.items) - 1  # a job is one session slot but charges every message
                if extra and job.per_recipient:
                    st.charge(now, extra)
                free[shard] -= len(job.items)
                self._job_seq += 1
                self._job_lane[self._job_seq] = st
                msg = self.writer.cached(job.msg_id)
                assert msg is not None
                lim = st.limits
                item = {
                    "id": self._job_seq, "msg": job.msg_id, "sender": msg.sender, "domain": job.domain,
                    "site": site, "mx": self.mx_of[site], "per_rcpt": job.per_recipient,
                    "conns": lim.max_connections, "msgs_per_conn": lim.max_messages_per_connection,
                    "rcpts": _job_rcpts(job),
                    "dsn": [msg.ret, msg.envid],
                    "_meta": {idx: (rec.address, rec.attempts, dkey) for dkey, idx, rec in job.items},
                }
                if job.domains:
                    item["domains"] = list(job.domains)  # the worker checks their MTA-STS policies agree
                if st.source is not None:
                    item["source"] = st.source  # the worker connects from it (and its EHLO name)
                jobs_by_shard.setdefault(shard, []).append(item)
                sent.append(job)
            if self.shared is not None:
                self._ask_shared(grp, now)  # what this round spent
        if self.shared is not None:
            self.shared.flush()
        return jobs_by_shard, sent

    def _ask_shared(self, grp: SiteLanes, now: float) -> None:
        """Top up the fleet-wide leases of a site with ready work (lanes with window room only:
        tokens a lane cannot use before they lapse would be taken from the fleet for nothing)."""
        assert self.shared is not None
        for lane in grp.lanes:
            if lane.shared is not None and lane.in_flight < lane.window.value \
                    and lane.mode in (Mode.NORMAL, Mode.BACKOFF):
                self.shared.request(lane.shared, now)

    def _reconcile_in_flight(self) -> None:
        """Each lane's in-flight job count is what the workers really hold (a safety net: a count
        that drifted, e.g. through a lost worker, would otherwise block the site for good)."""
        held: dict[int, int] = {}
        live: dict[int, SiteState] = {}
        for link in self.workers.values():
            for job_id in link.jobs:
                lane = self._job_lane.get(job_id)
                if lane is not None:
                    live[job_id] = lane
                    held[id(lane)] = held.get(id(lane), 0) + 1
        self._job_lane = live  # drop any entry whose job no worker holds
        for site, grp in self.sites.items():
            for lane in grp.lanes:
                real = held.get(id(lane), 0)
                if lane.in_flight != real:
                    log.warning("site_in_flight_corrected", site=site, source=lane.source, counted=lane.in_flight,
                                real=real)
                    lane.in_flight = real

    def _sweep_expired(self, now: float) -> list[Any]:
        """Ready or held recipients past max age (a suspended queue keeps aging) fail as expired."""
        fails: list[Any] = []

        def old(job: StagedJob) -> bool:
            msg = self.writer.cached(job.msg_id)
            st = self.sites.get(job.site)
            max_age = st.limits.max_age_s if st else self.cfg.queue.max_age_s
            return msg is not None and is_expired(msg.created_ms / 1000, now, max_age)

        for job in self.ready.remove_where(old):
            self._taken.difference_update(dkey[8:] for dkey, _, _ in job.items)  # expired in this round's commit
            st = self.sites.get(job.site)
            fails.append(([(dkey, job.msg_id, idx) for dkey, idx, _ in job.items], self._expiry_failure(job.site, st)))
        return fails

    def _site_feedback(self, st: SiteState | None, item: dict[str, Any], now: float) -> None:
        """A job's outcome adjusts its lane (site and source): window, dead-site cohort, throttling."""
        if st is None:
            return
        kind = item.get("kind") or "delivered"
        rule = None
        results = item["results"]
        # A RCPT-time 4xx for some recipients is about those recipients (greylisting, a full mailbox);
        # it speaks for the site only when every recipient of the job got one. Session and message
        # replies (421, MAIL, DATA) always do, except LMTP's replies after the data, which are
        # per recipient too (RFC 2033 §4.2).
        per_rcpt = ("rcpt", "payload") if st.site.startswith(LMTP_SITE_PREFIX) else ("rcpt",)
        rcpt_wide = all(400 <= r[1] < 500 and r[4] in per_rcpt for r in results)
        for _, code, enhanced, text, phase, _ in results:
            if 400 <= code < 600 and (code == 421 or phase not in per_rcpt or rcpt_wide):
                rule = self.rules.match(code, enhanced, text)
                if rule is not None:
                    break
        if rule is not None:
            kind = "throttled"
        st.on_result(now, kind, rule)

    def _log_site_changes(self, now: float) -> list[dict[str, Any]]:
        events = []
        if now >= self._sites_tick_at:  # time alone ends backoffs and dead periods, also of idle sites
            self._sites_tick_at = now + 1.0
            for grp in self.sites.values():
                for st in grp.lanes:
                    if st.mode is not Mode.NORMAL:
                        st.tick(now)
        for grp in self.sites.values():
            for st in grp.lanes:
                for ch in st.drain_changes():
                    src = {"source": ch.source} if ch.source is not None else {}
                    log.info("site_mode_changed", site=ch.site, old=ch.old_mode.name, new=ch.new_mode.name,
                             cause=ch.cause, **src)
                    events.append({"type": "SiteModeChange", "timestamp": ch.now, "site": ch.site,
                                   "old_mode": ch.old_mode.name, "mode": ch.new_mode.name, "cause": ch.cause,
                                   "window": st.window.limit, **src})
        return events

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

    SELECTORS = ("site", "domain", "campaign", "tenant")

    def _site_brief(self, site: str) -> dict[str, Any]:
        grp = self.sites.get(site)
        if grp is None:
            return {}
        out: dict[str, Any] = {"mode": grp.mode.name, "window": sum(lane.window.value for lane in grp.lanes),
                               "window_limit": sum(lane.window.limit for lane in grp.lanes),
                               "in_flight_jobs": grp.in_flight}
        if grp.lanes[0].source is not None:
            out["sources"] = [{"source": lane.source, "mode": lane.mode.name, "window": lane.window.value,
                               "window_limit": lane.window.limit, "in_flight_jobs": lane.in_flight}
                              for lane in grp.lanes]
        return out

    def suspend(self, kind: str, value: str) -> str:
        """Stop dispatching a site, domain, campaign or tenant; its recipients keep aging and expire."""
        if kind not in self.SELECTORS:
            raise ValueError(f"suspend what? one of {', '.join(self.SELECTORS)}")
        now = self.clock()
        self.suspensions[kind].add(value)
        self._suspensions_dirty = True
        if kind == "site" and value in self.sites:
            self.sites[value].suspend(now, "suspended by operator")
        log.info("queue_suspended", kind=kind, value=value)
        self._wake.set()
        return f"{kind} {value} suspended: nothing is dispatched; queued recipients keep aging"

    def resume(self, kind: str, value: str) -> str:
        if kind not in self.SELECTORS:
            raise ValueError(f"resume what? one of {', '.join(self.SELECTORS)}")
        if value not in self.suspensions[kind]:
            return f"{kind} {value} was not suspended"
        now = self.clock()
        self.suspensions[kind].discard(value)
        self._suspensions_dirty = True
        if kind == "site" and value in self.sites:
            self.sites[value].resume(now, "resumed by operator")
        n = self.ready.unhold(lambda j: not self._held(j))
        log.info("queue_resumed", kind=kind, value=value, jobs=n)
        self._wake.set()
        return f"{kind} {value} resumed"

    def status(self) -> dict[str, Any]:
        stat = self.spool.stat()
        t = self.totals
        top = sorted(t.sites.items(), key=lambda kv: -sum(kv[1]))[:10]
        ready_by_site = self.ready.counts_by_site()
        inflight_by_site: dict[str, int] = {}
        for link in self.workers.values():
            for _, idxs, site in link.jobs.values():
                inflight_by_site[site] = inflight_by_site.get(site, 0) + len(idxs)
        in_flight = sum(inflight_by_site.values())
        return {
            "pid": os.getpid(),
            "uptime_s": round(self.clock() - self.started_at, 1),
            "draining": self.draining,
            "queue": {"messages": stat["msg"], "recipients": stat["rcpt"], "in_flight": in_flight,
                      "queued": stat["rcpt"] - in_flight, "outbox": stat["outbox"], "corrupt": stat["corrupt"]},
            "since_start": {"delivered": t.delivered, "bounced": t.bounced, "deferred": t.deferred,
                            "expired": t.expired, "returned": t.returned, "unknown": t.unknown},
            "sites_top10": [{"site": s, "delivered": c[0], "deferred": c[1], "bounced": c[2],
                             "in_flight": inflight_by_site.get(s, 0), "ready": ready_by_site.get(s, 0),
                             **self._site_brief(s)} for s, c in top],
            "sites_not_normal": [{"site": s, **self._site_brief(s)} for s, st in self.sites.items()
                                 if st.mode is not Mode.NORMAL][:50],
            "suspended": {k: sorted(v) for k, v in self.suspensions.items() if v},
            "ready": len(self.ready),
            "workers": [{"shard": w.shard, "pid": w.pid, "jobs": len(w.jobs), "in_flight": w.inflight,
                         "draining": w.draining} for w in sorted(self.workers.values(), key=lambda w: w.shard)],
            "workers_expected": self.nshards,
            "ticks": self.ticks,
            "last_tick": self.last_tick,
            **({"shared_limits": {"up": self.shared.up, "round_trips": self.shared.round_trips,
                                  "failures": self.shared.failures}} if self.shared is not None else {}),
        }
