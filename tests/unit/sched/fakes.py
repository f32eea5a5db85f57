"""Stand-ins for the manager's collaborators in pure scheduler tests: a clock, a resolver, a worker
link; and the real parts they sit beside (a spool with a message in it, a manager with a log)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mta_engine.config import from_dict
from mta_engine.ingest.commit import write_submissions
from mta_engine.ingest.inject import parse_request
from mta_engine.obs.accounting import AccountingLog
from mta_engine.routing.mx import MxHost, MxPlan
from mta_engine.sched.manager import Manager
from mta_engine.spool.store import Spool

T0 = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class Resolver:
    """Every domain is its own site with one MX."""

    def cached_plan(self, domain: str) -> MxPlan:
        return MxPlan(domain, (MxHost(10, f"mx.{domain}"),), False, f"mx.{domain}", 300.0)

    async def resolve_mx(self, domain: str) -> MxPlan:
        return self.cached_plan(domain)


class Link:
    """Stands in for a worker's IPC connection: records the frames the manager sends."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.peer: dict[str, Any] = {}

    def send(self, frame: dict[str, Any]) -> bool:
        self.sent.append(frame)
        return True

    def close(self) -> None:
        pass

    def jobs(self) -> list[dict[str, Any]]:
        return [j for f in self.sent if f["t"] == "jobs" for j in f["items"]]


def inject(spool: Spool, n: int, now_ms: int, domain: str = "y.test") -> int:
    """One message to r0..r<n-1>@domain, committed as ingest does; returns its id."""
    sub = parse_request({"envelope_sender": "s@x.test", "content": "From: s@x.test\n\nx",
                         "recipients": [f"r{i}@{domain}" for i in range(n)]}, now_s=now_ms / 1000, boundary="b")
    (msg_id,) = write_submissions(spool, [sub], now_ms)
    return msg_id


def connected_manager(tmp: Path, **sections: dict[str, Any]) -> tuple[Manager, Spool, Clock, Link, AccountingLog]:
    """A manager on a real spool and accounting log under ``tmp`` (one worker, no DSNs unless
    ``sections`` say otherwise), with one fake worker connected as shard 0."""
    data: dict[str, Any] = {"spool": {"path": str(tmp / "spool"), "map_size_mb": 64},
                            "log": {"accounting": str(tmp / "acct.jsonl")}, "delivery": {"workers": 1},
                            "dsn": {"enabled": False}}
    for section, body in sections.items():
        data.setdefault(section, {}).update(body)
    cfg = from_dict(data)
    spool = Spool(cfg.spool.path, map_size_mb=64)
    clock = Clock()
    acct = AccountingLog(cfg.log.accounting)
    mgr = Manager(cfg, spool, Resolver(), acct, clock=clock)
    link = Link()
    mgr.on_frame(link, {"t": "hello", "shard": 0, "pid": 1})  # type: ignore[arg-type]
    return mgr, spool, clock, link, acct
