"""Connection reuse bookkeeping, keyed by ``Endpoint`` (Postfix scache, httpcore pool style).

Contract: pure bookkeeping of *idle* sessions; no I/O, no clock (``now`` is passed in, monotonic
seconds). It never closes anything itself: every method that retires sessions returns them,
and the caller closes them (``await session.close()``). It knows a session only through
``PooledSession`` (``usable`` and ``transactions``). Never fails on well-typed input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

__all__ = ["ConnectionPool", "Endpoint", "PooledSession"]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a session goes: source IP, MX IP, port and TLS mode (the reuse key, STYLE do #5)."""

    source_ip: str | None
    ip: str
    port: int
    tls: str = "none"

    def __str__(self) -> str:
        return f"{self.source_ip or '*'}->{self.ip}:{self.port}/{self.tls}"


class PooledSession(Protocol):
    """What the pool needs to know about a session."""

    @property
    def usable(self) -> bool: ...

    @property
    def transactions(self) -> int: ...


S = TypeVar("S", bound=PooledSession)  # e.g. ConnectionPool[SmtpSession]


class ConnectionPool(Generic[S]):
    """Idle sessions per endpoint, most recently used first out (LIFO keeps the warm ones warm)."""

    __slots__ = ("idle_timeout_s", "max_messages_per_connection", "max_idle_per_endpoint", "_idle")

    def __init__(
        self,
        idle_timeout_s: float = 10.0,
        max_messages_per_connection: int = 100,
        max_idle_per_endpoint: int = 32,
    ) -> None:
        self.idle_timeout_s = idle_timeout_s
        self.max_messages_per_connection = max_messages_per_connection
        self.max_idle_per_endpoint = max_idle_per_endpoint
        # endpoint -> [(session, idle_since)], oldest first
        self._idle: dict[Endpoint, list[tuple[S, float]]] = {}

    def __repr__(self) -> str:
        counts = ", ".join(f"{ep}={len(entries)}" for ep, entries in self._idle.items())
        return f"<ConnectionPool idle={self.idle_count} endpoints=[{counts}]>"

    @property
    def idle_count(self) -> int:
        """Number of idle sessions across all endpoints."""
        return sum(len(entries) for entries in self._idle.values())

    def take(self, endpoint: Endpoint, now: float) -> S | None:
        """Remove and return the freshest idle usable session for ``endpoint``, if any.

        Stale or dead sessions are left for ``expire`` to hand back for closing.
        """
        entries = self._idle.get(endpoint)
        if not entries:
            return None
        for i in range(len(entries) - 1, -1, -1):
            session, idle_since = entries[i]
            if session.usable and now - idle_since <= self.idle_timeout_s:
                del entries[i]
                if not entries:
                    del self._idle[endpoint]
                return session
        return None

    def put(self, session: S, endpoint: Endpoint, now: float) -> list[S]:
        """Park ``session`` as idle; return the sessions the caller must close."""
        if not session.usable or session.transactions >= self.max_messages_per_connection:
            return [session]
        entries = self._idle.setdefault(endpoint, [])
        entries.append((session, now))
        excess = len(entries) - self.max_idle_per_endpoint
        if excess <= 0:
            return []
        evicted = [s for s, _ in entries[:excess]]  # the oldest idle ones go first
        del entries[:excess]
        return evicted

    def expire(self, now: float) -> list[S]:
        """Remove and return sessions idle longer than ``idle_timeout_s`` or no longer usable."""
        closing: list[S] = []
        for endpoint in list(self._idle):
            keep: list[tuple[S, float]] = []
            for session, idle_since in self._idle[endpoint]:
                if session.usable and now - idle_since <= self.idle_timeout_s:
                    keep.append((session, idle_since))
                else:
                    closing.append(session)
            if keep:
                self._idle[endpoint] = keep
            else:
                del self._idle[endpoint]
        return closing

    def drain(self) -> list[S]:
        """Remove and return every idle session (shutdown)."""
        closing = [session for entries in self._idle.values() for session, _ in entries]
        self._idle.clear()
        return closing
