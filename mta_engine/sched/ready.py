"""Ready queues: due recipients held in the manager, per site, until the site may take them.

Contract: pure bookkeeping (no I/O, no clock). The manager stages due recipients here as *jobs*
(one message, one destination domain, up to a batch size), then pops jobs per site when its
``SiteState`` allows. Within a site, ``FairQueue`` serves higher priority first and round robin
across (tenant, campaign) flows, so a huge campaign does not starve a small one. Staging is
bounded per flow (``flow_max``) and overall (``total_max``), so memory does not grow with the
queue: what is not staged stays in the spool's due index and is found again by a later scan.

Jobs of a suspended domain, campaign or tenant are *held* (staged but not dispatched) until
resumed; they keep aging and the manager's expiry sweep still finds them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from .fairness import FairQueue

Flow = tuple[int, Any, Any]
"""(priority, tenant, campaign)."""


@dataclass(slots=True)
class StagedJob:
    msg_id: int
    domain: str
    site: str
    flow: Flow
    per_recipient: bool
    items: list[Any] = field(default_factory=list)
    """Due entries (``dkey``, ``index``, ``rec``): a domain's in due order, domain after domain."""
    domains: tuple[str, ...] = ()
    """Every recipient domain of the job when it holds more than ``domain`` (domains that share
    the site's MX hosts travel in one transaction, as Postfix does per next hop)."""

    @property
    def all_domains(self) -> tuple[str, ...]:
        return self.domains or (self.domain,)

    @property
    def priority(self) -> int:
        return self.flow[0]

    @property
    def tenant(self) -> Any:
        return self.flow[1]

    @property
    def campaign(self) -> Any:
        return self.flow[2]

    def split(self, n: int) -> "StagedJob":
        """Keep the first ``n`` items; return a job with the rest."""
        rest = StagedJob(self.msg_id, self.domain, self.site, self.flow, self.per_recipient, self.items[n:],
                         self.domains)  # a superset of the rest's domains: harmless (held, policy checks)
        del self.items[n:]
        return rest


class ReadyQueues:
    def __init__(self, *, flow_max: int = 20000, total_max: int = 200000) -> None:
        self.flow_max = flow_max
        self.total_max = total_max
        self._queues: dict[str, FairQueue[StagedJob]] = {}
        self._flow_count: dict[tuple[str, Flow], int] = {}
        self._staged = 0  # recipients in the queues (held jobs included); which ones, the manager knows
        self.held: list[StagedJob] = []

    def __len__(self) -> int:
        return self._staged

    def __repr__(self) -> str:
        return (f"<ReadyQueues staged={self._staged} sites={len(self._queues)} flows={len(self._flow_count)} "
                f"held={sum(len(j.items) for j in self.held)}>")

    @property
    def full(self) -> bool:
        return self._staged >= self.total_max

    def room(self, site: str, flow: Flow) -> int:
        return max(0, min(self.flow_max - self._flow_count.get((site, flow), 0), self.total_max - self._staged))

    def stage(self, job: StagedJob, *, counted: bool = False) -> None:
        """Add a job (its recipients count against the flow and total bounds)."""
        q = self._queues.get(job.site)
        if q is None:
            q = self._queues[job.site] = FairQueue()
        q.push(job, job.priority, job.tenant, job.campaign)
        if not counted:
            key = (job.site, job.flow)
            self._flow_count[key] = self._flow_count.get(key, 0) + len(job.items)
            self._staged += len(job.items)

    def sites(self) -> list[str]:
        return [s for s, q in self._queues.items() if len(q)]

    def has_jobs(self, site: str) -> bool:
        q = self._queues.get(site)
        return q is not None and len(q) > 0

    def pop(self, site: str) -> StagedJob | None:
        q = self._queues.get(site)
        if q is None:
            return None
        job = q.pop()
        if not len(q):
            del self._queues[site]
        return job

    def push_back(self, job: StagedJob) -> None:
        """Return a popped (or split-off) job whose recipients are still counted as staged."""
        self.stage(job, counted=True)

    def release(self, job: StagedJob) -> None:
        """The job's recipients left the ready queues (dispatched or failed)."""
        key = (job.site, job.flow)
        left = self._flow_count.get(key, 0) - len(job.items)
        if left > 0:
            self._flow_count[key] = left
        else:
            self._flow_count.pop(key, None)
        self._staged -= len(job.items)

    def hold(self, job: StagedJob) -> None:
        self.held.append(job)

    def unhold(self, pred: Callable[[StagedJob], bool]) -> int:
        """Put held jobs matching ``pred`` back in their queues; returns how many."""
        keep, back = [], []
        for j in self.held:
            (back if pred(j) else keep).append(j)
        self.held = keep
        for j in back:
            self.push_back(j)
        return len(back)

    def remove_where(self, pred: Callable[[StagedJob], bool]) -> list[StagedJob]:
        """Take out every staged or held job matching ``pred`` (released; caller decides their fate)."""
        out: list[StagedJob] = []
        for site in list(self._queues):
            out.extend(self._queues[site].remove_where(pred))
            if not len(self._queues[site]):
                del self._queues[site]
        keep = []
        for j in self.held:
            (out if pred(j) else keep).append(j)
        self.held = keep
        for j in out:
            self.release(j)
        return out

    def counts_by_site(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for (site, _), n in self._flow_count.items():
            out[site] = out.get(site, 0) + n
        return out
