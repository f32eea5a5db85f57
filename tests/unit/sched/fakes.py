"""Stand-ins for the manager's collaborators in pure scheduler tests: a clock, a resolver, a worker link."""

from __future__ import annotations

from typing import Any

from mta_engine.routing.mx import MxHost, MxPlan

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
