"""Fair ready queue for one site: priority first, then weighted round robin across flows.

Contract: pure in-memory bookkeeping, no clock, no I/O. A *flow* is one (tenant, campaign)
pair. ``pop`` always serves the highest priority that has jobs (a larger number is served
first); within one priority it runs deficit round robin (Shreedhar & Varghese, 1995) across
flows, each job costing one unit and each flow earning its ``weight`` per turn, so a
10,000-job campaign and a 10-job campaign alternate instead of the small one waiting behind the
large one. Jobs within a flow keep FIFO order. Jobs are opaque values.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["FairQueue"]

J = TypeVar("J")
FlowKey = tuple[Hashable, Hashable]


@dataclass(slots=True)
class _Flow(Generic[J]):
    weight: float
    jobs: deque[J] = field(default_factory=deque)
    deficit: float = 0.0


@dataclass(slots=True)
class _Level(Generic[J]):
    flows: dict[FlowKey, _Flow[J]] = field(default_factory=dict)
    active: deque[FlowKey] = field(default_factory=deque)
    """Round-robin order of the flows that have jobs; the head is being served."""
    size: int = 0


class FairQueue(Generic[J]):
    """Ready jobs of one site, keyed by (priority, tenant, campaign)."""

    __slots__ = ("_levels", "_size")

    def __init__(self) -> None:
        self._levels: dict[int, _Level[J]] = {}
        self._size = 0

    def push(self, job: J, priority: int = 0, tenant: Hashable = None, campaign: Hashable = None,
             weight: float = 1.0) -> None:
        """Queue ``job``; ``weight`` (> 0) is the flow's share per round (the latest push sets it)."""
        if not weight > 0:
            raise ValueError(f"weight must be positive, got {weight!r}")
        level = self._levels.get(priority)
        if level is None:
            level = self._levels[priority] = _Level()
        key = (tenant, campaign)
        flow = level.flows.get(key)
        if flow is None:
            flow = level.flows[key] = _Flow(weight)
            level.active.append(key)
        flow.weight = weight
        flow.jobs.append(job)
        level.size += 1
        self._size += 1

    def pop(self) -> J | None:
        """The next job: highest priority first, weighted round robin within it; None when empty."""
        if not self._size:
            return None
        priority = max(self._levels)
        level = self._levels[priority]
        while True:
            key = level.active[0]
            flow = level.flows[key]
            if flow.deficit < 1.0:
                flow.deficit += flow.weight
                if flow.deficit < 1.0:  # a fractional weight saves up over several turns
                    level.active.rotate(-1)
                    continue
            flow.deficit -= 1.0
            job = flow.jobs.popleft()
            level.size -= 1
            self._size -= 1
            if not flow.jobs:
                level.active.popleft()
                del level.flows[key]
                if not level.size:
                    del self._levels[priority]
            elif flow.deficit < 1.0:
                level.active.rotate(-1)
            return job

    def remove_where(self, pred: Callable[[J], bool]) -> list[J]:
        """Take out every job for which ``pred(job)`` is true (suspend, cancel); returns them in queue order."""
        removed: list[J] = []
        for priority in sorted(self._levels, reverse=True):
            level = self._levels[priority]
            for key in list(level.active):
                flow = level.flows[key]
                keep: deque[J] = deque()
                for job in flow.jobs:
                    (removed if pred(job) else keep).append(job)
                gone = len(flow.jobs) - len(keep)
                if not gone:
                    continue
                flow.jobs = keep
                level.size -= gone
                self._size -= gone
                if not keep:
                    level.active.remove(key)
                    del level.flows[key]
            if not level.size:
                del self._levels[priority]
        return removed

    def flows(self) -> dict[int, dict[FlowKey, int]]:
        """priority -> {(tenant, campaign): queued jobs}, for status output."""
        return {p: {k: len(f.jobs) for k, f in lv.flows.items()} for p, lv in sorted(self._levels.items(), reverse=True)}

    def __len__(self) -> int:
        return self._size

    def __repr__(self) -> str:
        parts = ", ".join(f"{p}: flows={len(lv.flows)} jobs={lv.size}"
                          for p, lv in sorted(self._levels.items(), reverse=True))
        return f"<FairQueue jobs={self._size} priorities={{{parts}}}>"
